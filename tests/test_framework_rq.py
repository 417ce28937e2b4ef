"""`rq worker -w ecs_protection.rq.Worker` with real RQ workers, a real Redis and the sidecar."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING

import pytest
from rq import Queue
from rq.job import Job, JobStatus

from tests.client_support import FakeSidecar
from tests.fakes.agent import delay
from tests.framework_support import (
    BIN,
    ROOT,
    assert_saw_its_own_lease,
    lease_names,
    run_example,
    wait_for_record,
)
from tests.processes import SidecarProcess
from tests.support import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fakes.agent import FakeAgent
    from tests.framework_support import RedisDb, WorkerProcess

pytest_plugins = ["tests.framework_fixtures"]

JOB = "tests.framework_apps.rq_probe.work"


def enqueue(queue: Queue, seconds: float = 0, ticks: int = 0) -> str:
    return queue.enqueue(JOB, seconds, ticks).id


def start_worker(workers, redis_db, sidecar, worker_class: str) -> WorkerProcess:
    argv = [str(BIN / "rq"), "worker", "-w", worker_class, "--url", redis_db.url]
    return workers(argv, {"TASK_PROTECTION_URL": sidecar.url, "PROBE_REDIS_URL": redis_db.url})


@pytest.fixture
def queue(redis_db: RedisDb) -> Queue:
    return Queue(connection=redis_db.client)


@pytest.mark.parametrize("worker_class", ["Worker", "SimpleWorker"])
def test_every_job_runs_inside_its_lease_and_sigterm_lets_the_running_one_finish(
    worker_class, redis_db, sidecar, workers, queue
):
    """Each job saw its own lease, busy and protected; SIGTERM mid-job: it ends, exit 0."""
    short = [enqueue(queue) for _ in range(3)]
    last = enqueue(queue, seconds=1.5)
    worker = start_worker(workers, redis_db, sidecar, f"ecs_protection.rq.{worker_class}")
    wait_for_record(redis_db, last, "start", worker=worker)

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output

    assert wait_for_record(redis_db, last, "end")  # RQ's warm shutdown let it finish
    starts = [r for r in redis_db.records() if r["event"] == "start"]
    assert [r["job"] for r in starts] == [*short, last]
    for record in starts:
        assert_saw_its_own_lease(record, "rq")
    forked = worker_class == "Worker"  # a work horse per job, or the worker itself
    assert all((r["pid"] != worker.proc.pid) == forked for r in starts)
    statuses = [Job.fetch(job, connection=redis_db.client).get_status() for job in [*short, last]]
    assert statuses == [JobStatus.FINISHED] * 4
    assert lease_names(sidecar) == []


def test_draining_puts_the_job_back_at_the_front_unrun_and_not_failed_and_the_worker_stops(
    redis_db, sidecar, workers, queue
):
    """After POST /drain the dequeued job goes back to the front of its queue as it was: not in
    RQ's intermediate queue (whose clean-up would fail it), not failed; the worker exits 0."""
    assert sidecar.post("/drain").status_code == 200
    first, second = enqueue(queue), enqueue(queue)
    worker = start_worker(workers, redis_db, sidecar, "ecs_protection.rq.Worker")

    assert worker.wait() == 0, worker.output  # stopped by itself
    assert f"job {first} not started: the ECS task is draining" in worker.output

    assert queue.get_job_ids() == [first, second]
    assert redis_db.client.lrange(queue.intermediate_queue_key, 0, -1) == []
    assert Job.fetch(first, connection=redis_db.client).get_status() == JobStatus.QUEUED
    assert queue.failed_job_registry.get_job_ids() == []
    assert queue.started_job_registry.get_job_ids() == []
    assert redis_db.records() == []
    assert lease_names(sidecar) == []


@pytest.fixture
def slow_sidecar(agent_in_thread: FakeAgent) -> Iterator[SidecarProcess]:
    """The sidecar before a fake ECS agent that takes 3 s to enable protection, once."""
    agent_in_thread.fail(delay(3, methods=("PUT",)))
    process = SidecarProcess({"ECS_AGENT_URI": agent_in_thread.uri("task-1")}).start()
    yield process
    process.stop()


def test_sigterm_while_the_lease_is_taken_puts_the_job_back_and_stops(
    redis_db, slow_sidecar, workers, queue
):
    """SIGTERM while /busy waits for protection: RQ's warm shutdown, not an exception inside
    the request: the job, not started, goes back to the front; the worker exits 0."""
    job = enqueue(queue)
    worker = start_worker(workers, redis_db, slow_sidecar, "ecs_protection.rq.Worker")
    wait_until(lambda: lease_names(slow_sidecar), timeout=30, what="the lease asked for")

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output

    assert redis_db.records() == []
    assert queue.get_job_ids() == [job]
    assert redis_db.client.lrange(queue.intermediate_queue_key, 0, -1) == []
    assert queue.failed_job_registry.get_job_ids() == []
    assert lease_names(slow_sidecar) == []


def test_sigterm_while_the_lease_is_given_back_lets_the_release_end_then_stops(
    redis_db, workers, queue
):
    """SIGTERM just after a job, while /idle is under way: the release is not cut (RQ would
    raise StopRequested inside it, which the release would swallow, leaving the lease and a
    worker that never stops); it ends, then RQ's warm shutdown stops the worker."""
    arrived, answer = threading.Event(), threading.Event()

    def hold_back(body: dict) -> None:  # then answered as usual
        arrived.set()
        answer.wait(30)

    with FakeSidecar() as fake:
        fake.script("/idle", hold_back)
        queue.enqueue("time.sleep", 0)
        argv = [str(BIN / "rq"), "worker", "-w", "ecs_protection.rq.Worker", "--url", redis_db.url]
        worker = workers(argv, {"TASK_PROTECTION_URL": fake.url})
        assert arrived.wait(30), worker.output
        worker.signal(signal.SIGTERM)
        worker.wait_for_output("warm shut down requested")
        answer.set()

        assert worker.wait(timeout=20) == 0, worker.output
        assert "could not release" not in worker.output
        assert fake.leases == set()


def test_heartbeats_keep_a_long_job_protected_and_a_killed_workers_lease_ends_by_its_ttl(
    redis_db, sidecar, workers, queue
):
    """TTL 2 s (a subclass): still held 5 s in; SIGKILL to the worker only: its lease ends
    within the TTL although the job goes on in the horse, because the worker held it."""
    ttl = 2.0
    long = enqueue(queue, seconds=30, ticks=30)
    worker = start_worker(
        workers, redis_db, sidecar, "tests.framework_apps.rq_probe.ShortTtlWorker"
    )
    start = wait_for_record(redis_db, long, "start", worker=worker)

    def ticks() -> list[dict]:
        return [r for r in redis_db.records() if r["event"] == "tick"]

    wait_until(
        lambda: ticks() and ticks()[-1]["time"] - start["time"] >= 2.5 * ttl,
        timeout=30,
        what="a tick 2.5 TTLs into the job",
    )
    for record in redis_db.records():
        assert_saw_its_own_lease(record, "rq")

    worker.signal(signal.SIGKILL)
    assert [name for name in lease_names(sidecar) if name.startswith(f"rq-{long}-")]
    wait_until(lambda: not lease_names(sidecar), timeout=60, what="the lease expired")
    # The TTL ended it, not a release from the killed worker: the sidecar says which.
    expired = sidecar.wait_for_log("expired without a heartbeat")["message"]
    assert f"rq-{long}-" in expired
    count = len(ticks())
    wait_until(lambda: len(ticks()) > count, timeout=10, what="the horse still working")


def test_the_readme_example_runs_its_job_inside_a_lease(redis_db, sidecar, workers):
    """examples/rq_jobs.py, started as the README shows: its job holds a lease while it
    runs; SIGTERM: exit 0, no lease left."""
    argv = [str(BIN / "rq"), "worker", "-w", "ecs_protection.rq.Worker", "--url", redis_db.url]
    env = {"TASK_PROTECTION_URL": sidecar.url, "REDIS_URL": redis_db.url}
    worker = workers(argv, env, cwd=ROOT / "examples")
    run_example("rq_jobs.py", redis_db, "1")
    worker.wait_for_output("processing for")
    assert [name for name in lease_names(sidecar) if name.startswith("rq-")]
    worker.wait_for_output("processed")

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output
    assert lease_names(sidecar) == []
