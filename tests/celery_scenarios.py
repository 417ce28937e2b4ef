"""Celery scenarios shared by the framework tests and benchmarks/celery_*.py: real worker
processes on a real Redis, with the real sidecar."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celery import Celery

from tests.framework_support import BIN, RedisDb, WorkerProcess
from tests.support import wait_until

if TYPE_CHECKING:
    from tests.processes import SidecarProcess

TASK = "tests.framework_apps.celery_probe.work"
APP = "tests.framework_apps.celery_probe"


def celery_worker(
    redis_db: RedisDb, sidecar: SidecarProcess, pool: str, *args: str, **env: str
) -> WorkerProcess:
    """`celery -A <the probe app> worker -P <pool> ...`, talking to `sidecar`."""
    argv = [str(BIN / "celery"), "-A", APP, "worker", "-P", pool, "--loglevel", "INFO"]
    # Faster start, nothing to wait for: no other workers to sync with.
    argv += ["--without-gossip", "--without-mingle", "--without-heartbeat", *args]
    return WorkerProcess(
        argv, {"TASK_PROTECTION_URL": sidecar.url, "PROBE_REDIS_URL": redis_db.url, **env}
    )


def queued(redis_db: RedisDb, queue: str = "celery") -> list[str]:
    """Task ids of the messages on the broker's queue."""
    messages = redis_db.client.lrange(queue, 0, -1)
    return [json.loads(message)["headers"]["id"] for message in messages]


def unacked(redis_db: RedisDb) -> list[str]:
    """Task ids of the messages Redis still keeps as delivered and not acknowledged."""
    found = []
    for raw in redis_db.client.hvals("unacked"):
        message, _exchange, _routing_key = json.loads(raw)
        found.append(message["headers"]["id"])
    return found


@dataclass(frozen=True)
class ShutdownOutcome:
    """What became of each task sent before one warm shutdown."""

    started: Counter[str]  # times the task's body began
    on_broker: Counter[str]  # copies of its message left to run later (queued or unacked)
    output: str  # the worker's

    @property
    def put_back(self) -> int:
        """Tasks the shutdown found not started, sent back instead of run."""
        return self.output.count("not started: the worker is shutting down")

    @property
    def acknowledged_at_the_end(self) -> int:
        """Tasks a child started whose message the main process acknowledged only at the end."""
        return self.output.count("ran during the shutdown: its message is acknowledged")

    def runs(self, job: str) -> int:
        """Times the task ran or will run: its starts plus the copies still to deliver."""
        return self.started[job] + self.on_broker[job]


def shutdown_race(
    redis_db: RedisDb,
    sidecar: SidecarProcess,
    *,
    tasks: int = 60,
    seconds: float = 0.05,
    rng: random.Random | None = None,
) -> tuple[list[str], ShutdownOutcome]:
    """SIGTERM to a prefork worker (acks_late off) while short tasks start one after another.

    With many short tasks, the warm shutdown begins close to a task's start. Afterwards
    each task should have run, or be on the broker to run later: exactly once in all.
    """
    rng = rng or random.Random()  # noqa: S311  (timing jitter, not a secret)
    producer = Celery("producer", broker=redis_db.url)
    try:
        jobs = [str(producer.send_task(TASK, args=(seconds, 0)).id) for _ in range(tasks)]
    finally:
        producer.close()
    worker = celery_worker(redis_db, sidecar, "prefork", "-c", "2", PROBE_ACKS_LATE="0")
    try:
        wait_until(
            lambda: sum(r["event"] == "start" for r in redis_db.records()) >= 3,
            timeout=60,
            what="three tasks started",
        )
        time.sleep(rng.uniform(0, 2 * seconds + 0.02))  # anywhere between two starts
        worker.signal(signal.SIGTERM)
        code = worker.wait()
        assert code == 0, worker.output
    finally:
        worker.stop()
    started = Counter(r["job"] for r in redis_db.records() if r["event"] == "start")
    on_broker = Counter(queued(redis_db)) + Counter(unacked(redis_db))
    return jobs, ShutdownOutcome(started, on_broker, worker.output)


HANDED_BACK = "not started: the ECS task is draining; sent again"


def drain_among_short_tasks(
    redis_db: RedisDb, sidecar: SidecarProcess, *, tasks: int = 400, poll_seconds: float = 1.0
) -> tuple[int, int, str]:
    """POST /drain while a prefork worker (2 children, acks_late off) runs short tasks.

    Returns how many tasks were handed back (published again) after the drain, how many
    recorded a draining sidecar at their start (their lease taken just before the drain),
    and the worker's output. The drain is seen by a GET /state every
    `poll_seconds` (the default) or by the first task refused its lease.
    """
    producer = Celery("producer", broker=redis_db.url)
    try:
        for _ in range(tasks):
            producer.send_task(TASK, args=(0, 0))
    finally:
        producer.close()
    worker = celery_worker(
        redis_db,
        sidecar,
        "prefork",
        "-c",
        "2",
        "--prefetch-multiplier",
        "1",  # at most 2 messages fetched ahead: what a prompt stop still hands back
        PROBE_DRAIN_POLL=str(poll_seconds),
    )
    try:
        wait_until(lambda: len(redis_db.records()) >= 20, timeout=60, what="20 tasks ran")
        assert sidecar.post("/drain").status_code == 200
        worker.wait_for_output("the ECS task is draining: not taking tasks from celery")
        # Every message the worker had fetched is handed back when its turn comes.
        wait_until(lambda: redis_db.client.hlen("unacked") == 0, timeout=60, what="no unacked")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.output
    finally:
        worker.stop()
    started_after = sum(r["draining"] for r in redis_db.records())
    return worker.output.count(HANDED_BACK), started_after, worker.output
