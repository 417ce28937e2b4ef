"""ecs_protection.dramatiq.EcsProtection() with real Dramatiq workers, real Redis, the sidecar."""

from __future__ import annotations

import signal
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from tests.framework_support import (
    BIN,
    ROOT,
    assert_saw_its_own_lease,
    lease_names,
    run_example,
    wait_for_record,
)
from tests.support import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.framework_support import RedisDb, WorkerProcess

pytest_plugins = ["tests.framework_fixtures"]

MODULE = "tests.framework_apps.dramatiq_probe"


@pytest.fixture
def broker(redis_db: RedisDb) -> Iterator[RedisBroker]:
    """Only to send the probe's messages (by actor name) and look at its queue."""
    broker = RedisBroker(url=redis_db.url)
    yield broker
    broker.close()


def send(broker: RedisBroker, seconds: float = 0, ticks: int = 0) -> str:
    message = Message(
        queue_name="default", actor_name="work", args=(seconds, ticks), kwargs={}, options={}
    )
    return broker.enqueue(message).message_id


def queued(redis_db: RedisDb) -> list[str]:
    """Message ids on the queue, each with its body (a queued id without one is lost)."""
    ids = redis_db.client.lrange("dramatiq:default", 0, -1)
    bodies = redis_db.client.hmget("dramatiq:default.msgs", ids) if ids else []
    assert all(bodies)
    return [Message.decode(body).message_id for body in bodies]


def start_worker(workers, redis_db, sidecar, **env: str) -> WorkerProcess:
    argv = [str(BIN / "dramatiq"), MODULE, "--processes", "1", "--threads", "2"]
    return workers(
        argv, {"TASK_PROTECTION_URL": sidecar.url, "PROBE_REDIS_URL": redis_db.url, **env}
    )


def test_every_message_runs_inside_its_lease_and_sigterm_lets_the_running_one_finish(
    redis_db, sidecar, workers, broker
):
    """Each message saw its own lease, busy and protected, across 2 threads; SIGTERM mid-message:
    it ends, exit 0, no lease."""
    short = [send(broker) for _ in range(4)]
    last = send(broker, seconds=1.5)
    worker = start_worker(workers, redis_db, sidecar)
    wait_for_record(redis_db, last, "start", worker=worker)

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output

    assert wait_for_record(redis_db, last, "end")  # Dramatiq's shutdown let it finish
    starts = [r for r in redis_db.records() if r["event"] == "start"]
    assert sorted(r["job"] for r in starts) == sorted([*short, last])
    for record in starts:
        assert_saw_its_own_lease(record, "dramatiq")
    assert queued(redis_db) == []
    assert lease_names(sidecar) == []


def test_draining_leaves_messages_on_the_broker_unrun_and_not_failed(
    redis_db, sidecar, workers, broker
):
    """After POST /drain: the messages the threads took are enqueued again and skipped without
    a result; the worker takes no more, those it fetched go back when it stops; none ran,
    none dead-lettered; every one is on the queue once."""
    assert sidecar.post("/drain").status_code == 200
    sent = [send(broker) for _ in range(5)]
    worker = start_worker(workers, redis_db, sidecar)
    worker.wait_for_output("the ECS task is draining: this worker takes no more messages")

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output

    assert worker.output.count("not started: the ECS task is draining") <= 2  # one per thread
    assert redis_db.records() == []
    assert Counter(queued(redis_db)) == Counter(sent)
    assert redis_db.client.zcard("dramatiq:default.XQ") == 0  # nothing dead-lettered
    assert redis_db.client.keys("dramatiq:__acks__*") == []
    # No result stored for a skipped message (the Results backend's keys are bare hashes).
    assert [key for key in redis_db.client.scan_iter() if not key.startswith(b"dramatiq:")] == []
    assert lease_names(sidecar) == []


def test_heartbeats_keep_a_long_message_protected_and_a_killed_workers_lease_ends_by_its_ttl(
    redis_db, sidecar, workers, broker
):
    """TTL 2 s: still held 5 s in (heartbeats); SIGKILL to every process: gone within the TTL."""
    ttl = 2.0
    long = send(broker, seconds=30, ticks=30)
    worker = start_worker(workers, redis_db, sidecar, PROBE_TTL=str(ttl))
    start = wait_for_record(redis_db, long, "start", worker=worker)

    def late_tick() -> bool:
        ticks = [r for r in redis_db.records() if r["event"] == "tick"]
        return bool(ticks) and ticks[-1]["time"] - start["time"] >= 2.5 * ttl

    wait_until(late_tick, timeout=30, what="a tick 2.5 TTLs into the message")
    for record in redis_db.records():
        assert_saw_its_own_lease(record, "dramatiq")

    worker.kill_all()
    assert [name for name in lease_names(sidecar) if name.startswith(f"dramatiq-{long}-")]
    wait_until(lambda: not lease_names(sidecar), timeout=60, what="the lease expired")
    # The TTL ended it, not a release from the killed worker: the sidecar says which.
    expired = sidecar.wait_for_log("expired without a heartbeat")["message"]
    assert f"dramatiq-{long}-" in expired


def test_the_readme_example_runs_its_job_inside_a_lease(redis_db, sidecar, workers):
    """examples/dramatiq_actors.py, started as the README shows: its job holds a lease while it
    runs; SIGTERM: exit 0, no lease left."""
    argv = [str(BIN / "dramatiq"), "dramatiq_actors", "--processes", "1", "--threads", "2"]
    env = {"TASK_PROTECTION_URL": sidecar.url, "REDIS_URL": redis_db.url}
    worker = workers(argv, env, cwd=ROOT / "examples")
    run_example("dramatiq_actors.py", redis_db, "1")
    worker.wait_for_output("processing for")
    assert [name for name in lease_names(sidecar) if name.startswith("dramatiq-")]
    worker.wait_for_output("processed")

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output
    assert lease_names(sidecar) == []
