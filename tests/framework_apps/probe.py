"""What a job saw: it asks the sidecar for /state and keeps the answer in Redis.

Jobs of the probe apps call `record()` while they run; the tests read the records back
with `records()`. Plain requests and a Redis client per call: nothing is shared with
the worker's own client, whose lease the record is meant to observe.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
import requests

KEY = "probe:records"


def record(redis_url: str, job: str, event: str) -> None:
    state = requests.get(os.environ["TASK_PROTECTION_URL"] + "/state", timeout=10).json()
    entry = {
        "job": job,
        "event": event,
        "pid": os.getpid(),
        "time": time.time(),
        "busy": state["busy"],
        "protection": state["protection"]["state"],
        "draining": state["draining"],
        "leases": [lease["lease"] for lease in state["leases"]],
    }
    with redis.Redis.from_url(redis_url) as client:
        client.rpush(KEY, json.dumps(entry))


def job(redis_url: str, job_id: str, seconds: float, ticks: int) -> str:
    """What every probe job does: record at its start, `ticks` times while it runs, at its end."""
    record(redis_url, job_id, "start")
    for _ in range(ticks):
        time.sleep(seconds / (ticks + 1))
        record(redis_url, job_id, "tick")
    if seconds:
        time.sleep(seconds / (ticks + 1))
        record(redis_url, job_id, "end")
    return job_id


def records(redis_url: str) -> list[dict[str, Any]]:
    with redis.Redis.from_url(redis_url) as client:
        return [json.loads(raw) for raw in client.lrange(KEY, 0, -1)]
