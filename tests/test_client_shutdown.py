"""GracefulShutdown's rule, decided in-process with a fake clock (no signal is sent).

The handler is called directly, as the signal would call it; nothing here installs
handlers or starts the fallback's watcher thread. tests/test_shutdown.py checks the
same rule end to end with real SIGTERM.
"""

from __future__ import annotations

import signal

import pytest

from ecs_protection import Client, GracefulShutdown
from ecs_protection._shutdown import jobs
from tests.client_support import FakeSidecar


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def shutdown(clock):
    """A GracefulShutdown the job counter reports to, without real signal handlers."""
    assert jobs.active == 0
    saved = jobs.shutdown, jobs.last_ended, jobs.checked
    made = GracefulShutdown(grace_seconds=5, clock=clock)
    jobs.shutdown, jobs.last_ended, jobs.checked = made, None, True
    yield made
    jobs.shutdown, jobs.last_ended, jobs.checked = saved


@pytest.fixture
def client():
    with FakeSidecar() as fake, Client(fake.url) as c:
        c.fake = fake  # type: ignore[attr-defined]
        yield c


def term(shutdown: GracefulShutdown) -> None:
    shutdown._handle(signal.SIGTERM, None)


def test_idle_exits_at_once(shutdown):
    with pytest.raises(SystemExit) as exit_:
        term(shutdown)
    assert exit_.value.code == 0
    assert shutdown.requested


def test_during_a_job_nothing_is_raised_and_the_block_ends_normally(shutdown, client, clock):
    hold = client.hold()
    term(shutdown)
    assert shutdown.requested
    assert shutdown.deadline is None  # no fallback while the job runs
    clock.now += 100  # however long the job takes
    hold.release()  # the end of the block: no SystemExit from here
    assert shutdown.deadline == clock.now + 5  # the fallback: grace after the last job
    assert client.fake.leases == set()


def test_the_next_hold_is_refused_before_any_request(shutdown, client):
    with client.hold():
        term(shutdown)
    seen = len(client.fake.seen)
    with pytest.raises(SystemExit):
        client.hold()
    assert len(client.fake.seen) == seen
    assert jobs.active == 0


def test_just_after_a_job_the_ack_gets_the_rest_of_the_grace(shutdown, client, clock):
    client.hold().release()
    clock.now += 2
    term(shutdown)  # no SystemExit: the code after the block may still be running
    assert shutdown.deadline == clock.now + 3
    assert shutdown.requested  # (reading it is the loop's check: the fallback is off then)


def test_once_the_loop_checked_requested_after_a_job_it_is_idle(shutdown, client):
    """Back at `while not shutdown.requested`: the ack is done, receive() is idle."""
    client.hold().release()
    assert not shutdown.requested
    with pytest.raises(SystemExit):
        term(shutdown)


def test_once_the_grace_after_a_job_passed_it_is_idle(shutdown, client, clock):
    client.hold().release()
    clock.now += 5
    with pytest.raises(SystemExit):
        term(shutdown)


def test_the_last_of_several_jobs_arms_the_fallback(shutdown, client, clock):
    first, second = client.hold(), client.hold()
    term(shutdown)
    first.release()
    assert shutdown.deadline is None
    clock.now += 1
    second.release()
    assert shutdown.deadline == clock.now + 5


@pytest.fixture
def no_grace(clock):
    """A GracefulShutdown without the fallback (grace_seconds=None)."""
    assert jobs.active == 0
    saved = jobs.shutdown, jobs.last_ended, jobs.checked
    made = GracefulShutdown(grace_seconds=None, clock=clock)
    jobs.shutdown, jobs.last_ended, jobs.checked = made, None, True
    yield made
    jobs.shutdown, jobs.last_ended, jobs.checked = saved


def test_without_grace_there_is_no_fallback(no_grace, client):
    hold = client.hold()
    term(no_grace)
    hold.release()
    assert no_grace.deadline is None


def test_without_grace_a_sigterm_during_the_ack_does_not_cut_it(no_grace, client, clock):
    """grace_seconds=None turns the fallback off; it does not make the ack idle time."""
    client.hold().release()
    clock.now += 3600  # however long the ack takes
    term(no_grace)  # no SystemExit: the loop has not read `requested` since the job
    assert no_grace.requested


def test_once_the_main_thread_saw_requested_the_fallback_is_off(shutdown, client, clock):
    """The loop ended by itself; its cleanup after the loop may take longer than the grace."""
    hold = client.hold()
    term(shutdown)
    hold.release()
    assert shutdown.deadline is not None
    assert shutdown.requested  # the loop's check, in the main thread
    assert shutdown.deadline is None


def test_a_job_that_starts_after_the_fallback_was_armed_disarms_it(shutdown, client):
    client.hold().release()
    term(shutdown)  # just after a job: armed
    assert shutdown.deadline is not None
    jobs.enter()  # a thread that passed its check before the signal starts a job
    try:
        assert shutdown.deadline is None
    finally:
        jobs.exit()
    assert shutdown.deadline is not None  # re-armed when that job ended


@pytest.mark.parametrize("grace", [float("inf"), float("nan"), -1])
def test_the_grace_must_be_a_finite_number(grace):
    with pytest.raises(ValueError, match="grace_seconds"):
        GracefulShutdown(grace_seconds=grace)


def test_a_redelivered_signal_exits(shutdown, client):
    hold = client.hold()
    term(shutdown)
    hold.release()
    shutdown._forced = True  # what the fallback sets before re-delivering
    with pytest.raises(SystemExit):
        term(shutdown)


def test_bad_grace_is_refused():
    with pytest.raises(ValueError, match="grace_seconds"):
        GracefulShutdown(grace_seconds=float("nan"))
