"""A queue worker on Redis, in the reliable-queue pattern, safe to stop at any moment.

    REDIS_URL=redis://localhost:6379/0 python examples/redis_worker.py

A job (JSON: {"id": "...", "seconds": 1.5}) moves atomically from the list `jobs` to
this worker's own list `processing:<host name>` (BLMOVE), runs under busy(), and is
acked by removing it from that list. A worker killed before the ack leaves the job
there, for whoever watches (like SQS's visibility timeout) to put back: never lost.

A job taken just as the task began to stop is given back unstarted: the sidecar then
refuses new leases (TaskDrainingError), and after SIGTERM the next busy() exits. After a
TaskDrainingError the worker waits for its SIGTERM rather than exit first: a Python
process that is already exiting when the signal comes dies of it (exit code 143).
"""

import json
import os
import socket
import time

import redis

from ecs_protection import GracefulShutdown, TaskDrainingError, busy

shutdown = GracefulShutdown().install()  # SIGTERM: idle exits now; a job and its ack finish
queue = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
processing = f"processing:{socket.gethostname()}"


def give_back(raw: bytes) -> None:
    """Put an unstarted job back at the head of the queue, in one step."""
    with queue.pipeline() as moves:  # MULTI/EXEC: both or neither
        moves.lrem(processing, 1, raw)
        moves.lpush("jobs", raw)
        moves.execute()


print(f"ready: taking jobs into {processing}", flush=True)
while not shutdown.requested:
    raw = queue.blmove("jobs", processing, 1, "LEFT", "RIGHT")
    if raw is None:
        continue
    job = json.loads(raw)
    try:
        with busy(ttl=60):  # protected from scale-in while the job runs
            print(f"started {job['id']}", flush=True)
            time.sleep(job["seconds"])
            print(f"done {job['id']}", flush=True)
    except TaskDrainingError:  # the task is stopping: the job was not started
        give_back(raw)
        print(f"stopping: gave back {job['id']}", flush=True)
        while not shutdown.requested:  # SIGTERM is coming; while idle it exits at once
            time.sleep(1)
        break
    except SystemExit:  # SIGTERM came before the lease: the job was not started
        give_back(raw)
        raise
    queue.lrem(processing, 1, raw)  # the ack: runs even when SIGTERM came during the job
    print(f"acked {job['id']}", flush=True)
