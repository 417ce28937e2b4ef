"""ecs_protection.celery.protect(app) with real Celery workers, a real Redis and the sidecar."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest
from celery import Celery

from tests.celery_scenarios import drain_among_short_tasks, shutdown_race, unacked
from tests.framework_support import (
    BIN,
    ROOT,
    assert_saw_its_own_lease,
    error_lines,
    lease_names,
    run_example,
    wait_for_record,
)
from tests.support import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.framework_support import RedisDb, WorkerProcess

pytest_plugins = ["tests.framework_fixtures"]

TASK = "tests.framework_apps.celery_probe.work"
APP = "tests.framework_apps.celery_probe"


@pytest.fixture
def producer(redis_db: RedisDb) -> Iterator[Celery]:
    """A plain Celery app that only sends the probe's tasks."""
    app = Celery("producer", broker=redis_db.url)
    yield app
    app.close()


def state(redis_db: RedisDb, task_id: str) -> str:
    """The task's state in the result backend (the probe app's, on the same Redis database)."""
    stored = redis_db.client.get(f"celery-task-meta-{task_id}")
    return "PENDING" if stored is None else str(json.loads(stored)["status"])


def send(app: Celery, seconds: float = 0, ticks: int = 0) -> str:
    return str(app.send_task(TASK, args=(seconds, ticks)).id)


def start_worker(workers, redis_db, sidecar, pool, *args: str, **env: str) -> WorkerProcess:
    argv = [str(BIN / "celery"), "-A", APP, "worker", "-P", pool, "--loglevel", "INFO"]
    # Faster start, nothing to wait for: no other workers to sync with.
    argv += ["--without-gossip", "--without-mingle", "--without-heartbeat", *args]
    return workers(
        argv, {"TASK_PROTECTION_URL": sidecar.url, "PROBE_REDIS_URL": redis_db.url, **env}
    )


def queued(redis_db: RedisDb) -> list[str]:
    """Task ids of the messages on the broker's `celery` queue."""
    messages = redis_db.client.lrange("celery", 0, -1)
    return [json.loads(message)["headers"]["id"] for message in messages]


def test_a_retry_waiting_for_its_countdown_stays_on_the_broker_through_a_warm_shutdown(
    redis_db, sidecar, workers, producer
):
    """The retry is a new message with the task's id, held by the worker (delivered, not
    acknowledged) until its countdown ends. The shutdown's end must not take it for the
    delivery that ran, and acknowledge it: the task would never run again."""
    task_id = str(producer.send_task(f"{APP}.retried").id)
    worker = start_worker(workers, redis_db, sidecar, "prefork", "-c", "1")
    wait_for_record(redis_db, task_id, "start", worker=worker)
    wait_until(lambda: task_id in unacked(redis_db), timeout=60, what="the retry held, unacked")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output
    assert "ran during the shutdown" not in worker.output
    assert Counter(queued(redis_db)) + Counter(unacked(redis_db)) == {task_id: 1}


def test_an_acks_late_task_cut_by_a_cold_shutdown_stays_on_the_broker(
    redis_db, sidecar, workers, producer
):
    """acks_late: the message is acknowledged when the task ends. A cold shutdown (SIGQUIT
    after the SIGTERM) cuts it off, so its message must stay to run again."""
    job = send(producer, seconds=60, ticks=1)
    worker = start_worker(workers, redis_db, sidecar, "prefork", "-c", "1", PROBE_ACKS_LATE="1")
    wait_for_record(redis_db, job, "start", worker=worker)
    worker.signal(signal.SIGTERM)
    worker.wait_for_output("Warm shutdown")
    worker.signal(signal.SIGQUIT)
    worker.wait()  # a cold shutdown's exit code is Celery's to choose
    assert "ran during the shutdown" not in worker.output
    assert Counter(queued(redis_db)) + Counter(unacked(redis_db)) == {job: 1}


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_every_task_runs_inside_its_lease_and_sigterm_lets_the_running_one_finish(
    pool, redis_db, sidecar, workers, producer
):
    """Each task saw its own lease, busy and protected; SIGTERM mid-task: it ends, exit 0."""
    short = [send(producer) for _ in range(4)]
    last = send(producer, seconds=1.5)
    worker = start_worker(workers, redis_db, sidecar, pool, "-c", "1" if pool == "solo" else "2")
    wait_for_record(redis_db, last, "start", worker=worker)

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output

    assert wait_for_record(redis_db, last, "end")  # Celery's warm shutdown let it finish
    starts = [r for r in redis_db.records() if r["event"] == "start"]
    assert sorted(r["job"] for r in starts) == sorted([*short, last])
    for record in starts:
        assert_saw_its_own_lease(record, "celery")
    assert [state(redis_db, job) for job in [*short, last]] == ["SUCCESS"] * 5
    assert lease_names(sidecar) == []


@pytest.mark.parametrize("acks_late", [False, True], ids=["acks-early", "acks-late"])
def test_draining_sends_tasks_back_to_the_broker_unrun_and_not_failed(
    acks_late, redis_db, sidecar, workers, producer
):
    """After POST /drain: the prefetched task goes back when its turn comes (a requeue with
    acks_late, the same task sent again otherwise), the worker stops consuming, so a task
    sent afterwards is not even fetched; neither runs nor fails, both are on the broker."""
    running = send(producer, seconds=2.5)
    prefetched = send(producer)
    worker = start_worker(
        workers, redis_db, sidecar, "prefork", "-c", "1", PROBE_ACKS_LATE="1" if acks_late else "0"
    )
    wait_for_record(redis_db, running, "start", worker=worker)
    worker.wait_for_output(f"[{prefetched}] received")  # in the pool's queue, behind `running`

    assert sidecar.post("/drain").status_code == 200
    worker.wait_for_output("the ECS task is draining: not taking tasks from celery")
    offered_after = send(producer)
    handed_back = f"[{prefetched}] not started: the ECS task is draining"
    wait_until(
        lambda: (
            handed_back in worker.output or prefetched in {r["job"] for r in redis_db.records()}
        ),
        timeout=30,
        what="the prefetched task handed back (or run)",
    )

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output

    assert {r["job"] for r in redis_db.records()} == {running}
    assert Counter(queued(redis_db)) == Counter([prefetched, offered_after])  # once each
    assert redis_db.client.hlen("unacked") == 0
    states = [state(redis_db, job) for job in (running, prefetched, offered_after)]
    assert states == ["SUCCESS", "PENDING", "PENDING"]  # nothing marked failed
    assert lease_names(sidecar) == []


def test_sigterm_as_tasks_start_runs_each_task_once_or_leaves_it_on_the_broker(
    redis_db_factory, sidecar
):
    """The race itself, a few times (benchmarks/celery_shutdown_race.py repeats it): SIGTERM
    to a prefork worker (acks_late off) while short tasks start one after another. Every
    task ran or is on the broker to run later, exactly once; none is lost."""
    for _ in range(3):
        jobs, outcome = shutdown_race(redis_db_factory(), sidecar)
        runs = {job: outcome.runs(job) for job in jobs}
        assert [job for job, n in runs.items() if n != 1] == [], (runs, outcome.output)


def test_the_first_task_refused_by_a_drain_stops_the_worker_taking_tasks(redis_db, sidecar):
    """POST /drain while 2 prefork children run short tasks, the sidecar polled only every
    second: the first refused lease stops the consumers at once, so only what the worker
    had fetched ahead (2 messages, and the 2 in its children) is handed back, not every
    task it could fetch before a poll saw the drain (20 with the former 1 s poll plus 1 s
    timer). A count, not a duration: a slow machine refuses fewer per second."""
    handed_back, _, output = drain_among_short_tasks(redis_db, sidecar, poll_seconds=1.0)
    assert 1 <= handed_back <= 10, output


def test_prefork_children_of_a_parent_that_used_the_client_make_no_error_in_300_tasks(
    redis_db, sidecar, workers, producer
):
    """The worker's main process uses the client before its pool forks and all along (its
    drain watch); children forked again every 25 tasks, strict mode: 300 tasks, 0 errors."""
    jobs = [send(producer) for _ in range(300)]
    started = time.monotonic()
    worker = start_worker(
        workers,
        redis_db,
        sidecar,
        "prefork",
        "-c",
        "2",
        "--max-tasks-per-child",
        "25",
        TASK_PROTECTION_STRICT="1",  # any sidecar problem raises in the task
    )
    wait_until(
        lambda: len(redis_db.client.keys("celery-task-meta-*")) == len(jobs),
        timeout=120,
        what="300 task results",
    )
    elapsed = time.monotonic() - started
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output

    states = Counter(state(redis_db, job) for job in jobs)
    assert states == {"SUCCESS": 300}, error_lines(worker.output)
    starts = [r for r in redis_db.records() if r["event"] == "start"]
    assert sorted(r["job"] for r in starts) == sorted(jobs)
    for record in starts:
        assert_saw_its_own_lease(record, "celery")
    children = {r["pid"] for r in starts}
    assert len(children) >= 300 // 25  # the pool really forked again and again
    assert error_lines(worker.output) == []
    assert lease_names(sidecar) == []
    print(f"300 tasks in {elapsed:.1f}s across {len(children)} children, 0 errors")  # noqa: T201


def test_heartbeats_keep_a_long_task_protected_and_a_killed_workers_lease_ends_by_its_ttl(
    redis_db, sidecar, workers, producer
):
    """TTL 2 s: still held 5 s in (heartbeats); SIGKILL to every process: gone within the TTL."""
    ttl = 2.0
    long = send(producer, seconds=30, ticks=30)
    worker = start_worker(workers, redis_db, sidecar, "prefork", "-c", "1", PROBE_TTL=str(ttl))
    start = wait_for_record(redis_db, long, "start", worker=worker)

    def late_tick() -> bool:
        ticks = [r for r in redis_db.records() if r["event"] == "tick"]
        return bool(ticks) and ticks[-1]["time"] - start["time"] >= 2.5 * ttl

    wait_until(late_tick, timeout=30, what="a tick 2.5 TTLs into the task")
    for record in redis_db.records():
        assert_saw_its_own_lease(record, "celery")

    worker.kill_all()
    assert [name for name in lease_names(sidecar) if name.startswith(f"celery-{long}-")]
    wait_until(lambda: not lease_names(sidecar), timeout=60, what="the lease expired")
    # The TTL ended it, not a release from the killed worker: the sidecar says which.
    expired = sidecar.wait_for_log("expired without a heartbeat")["message"]
    assert f"celery-{long}-" in expired


def test_the_readme_example_runs_its_job_inside_a_lease(redis_db, sidecar, workers):
    """examples/celery_app.py, started as the README shows: its job holds a lease while it
    runs; SIGTERM: exit 0, no lease left."""
    argv = [str(BIN / "celery"), "-A", "celery_app", "worker", "-P", "prefork", "-c", "2"]
    env = {"TASK_PROTECTION_URL": sidecar.url, "REDIS_URL": redis_db.url}
    worker = workers(argv, env, cwd=ROOT / "examples")
    run_example("celery_app.py", redis_db, "1")
    worker.wait_for_output("processing for")
    assert [name for name in lease_names(sidecar) if name.startswith("celery-")]
    worker.wait_for_output("processed")

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output
    assert lease_names(sidecar) == []
