"""GracefulShutdown's rule, decided in-process with a fake clock (no signal is sent).

The handler is called directly, as the signal would call it; nothing here installs
handlers or starts the fallback's watcher thread. tests/test_shutdown.py checks the
same rule end to end with real SIGTERM.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING

import pytest

from ecs_protection import Client, GracefulShutdown
from ecs_protection._shutdown import jobs
from tests.client_support import FakeSidecar

if TYPE_CHECKING:
    from collections.abc import Callable


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
    saved = jobs.shutdown, jobs.last_ended, jobs.unchecked
    made = GracefulShutdown(grace_seconds=5, clock=clock)
    jobs.shutdown, jobs.last_ended, jobs.unchecked = made, None, set()
    yield made
    jobs.shutdown, jobs.last_ended, jobs.unchecked = saved


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
    saved = jobs.shutdown, jobs.last_ended, jobs.unchecked
    made = GracefulShutdown(grace_seconds=None, clock=clock)
    jobs.shutdown, jobs.last_ended, jobs.unchecked = made, None, set()
    yield made
    jobs.shutdown, jobs.last_ended, jobs.unchecked = saved


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


# ---- which thread's check counts -------------------------------------------------------


def in_thread(work: Callable[[], object]) -> None:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001  (handed to the test)
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert not failures, failures


def test_another_thread_reading_requested_does_not_end_the_ack(shutdown, client):
    """A health or metrics thread polling `requested` says nothing of this thread's ack."""
    client.hold().release()  # the block ended; the ack runs in this thread
    in_thread(lambda: shutdown.requested)
    term(shutdown)  # no SystemExit: this thread has not come back to its check
    assert shutdown.deadline is not None


def test_a_job_and_a_check_in_another_thread_do_not_end_this_threads_ack(shutdown, client):
    client.hold().release()  # this thread's ack runs

    def other_worker() -> None:
        client.hold().release()
        assert not shutdown.requested  # that worker is back at its own check

    in_thread(other_worker)
    term(shutdown)  # no SystemExit: this thread's ack still runs
    assert shutdown.deadline is not None


def test_once_every_thread_that_ended_a_job_checked_it_is_idle(shutdown, client):
    client.hold().release()

    def other_worker() -> None:
        client.hold().release()
        assert not shutdown.requested

    in_thread(other_worker)
    assert not shutdown.requested  # this thread is back at its check too
    with pytest.raises(SystemExit):
        term(shutdown)


# ---- the handler only sets flags: logging is the watcher's ---------------------------------


def test_the_signal_handler_itself_logs_nothing(shutdown, client, caplog):
    """The signal may interrupt a log call that holds a lock (a QueueHandler's queue):
    logging from the handler would then wait on that lock for ever."""
    caplog.set_level(logging.INFO, logger="ecs_protection")
    hold = client.hold()
    caplog.clear()
    term(shutdown)
    assert caplog.records == []
    shutdown.flush_notes()  # what the watcher thread does once woken
    assert "SIGTERM while 1 job(s) run: stopping after them" in caplog.text
    hold.release()


def test_the_exit_while_idle_is_logged_after_the_handler(shutdown, caplog):
    caplog.set_level(logging.INFO, logger="ecs_protection")
    with pytest.raises(SystemExit):
        term(shutdown)
    assert caplog.records == []
    shutdown.flush_notes()  # the watcher, or at the latest the exit (atexit)
    assert "SIGTERM while idle: exiting" in caplog.text
