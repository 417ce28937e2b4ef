"""A drain exit with no lease held switches protection off (one bounded call), unless the
task is stopping: otherwise ECS keeps an idle task protected until the expiry, blocking
scale-in and deployments, when the sidecar alone stops. Real processes, real signals,
the fake agent (slow, as the real one is) and a fake task metadata endpoint."""

from __future__ import annotations

import logging
import signal

import pytest

from sidecar.backends.base import BackendError, Protection
from sidecar.exit_protection import switch_off_before_exit
from sidecar.machine import Policy
from sidecar.service import ProtectionService
from tests.fakes.agent import hang
from tests.fakes.clock import FakeClock
from tests.fakes.metadata import FakeMetadata
from tests.fakes.threaded import ThreadedServer
from tests.processes import SidecarProcess


@pytest.fixture
def metadata():
    fake = FakeMetadata()
    with ThreadedServer(fake.start, fake.close):
        yield fake


@pytest.fixture
def protected_then_idle(agent_in_thread, metadata):
    """A sidecar that protected the task for a job that has ended since; the idle grace is
    long, so only the exit can switch protection off."""
    agent_in_thread.ecs_latency = 1.0  # each call takes a second, as the real agent's may
    sidecar = SidecarProcess(
        {
            "ECS_AGENT_URI": agent_in_thread.uri("task-1"),
            "ECS_CONTAINER_METADATA_URI_V4": metadata.url,
            "TASK_PROTECTION_IDLE_GRACE_SECONDS": "600",
            "TASK_PROTECTION_METADATA_POLL_SECONDS": "1",
        }
    ).start()
    try:
        busy = sidecar.post("/busy", {"lease": "job", "wait_seconds": 60})
        assert (busy.status_code, busy.json()["protected"]) == (200, True)
        assert agent_in_thread.tasks["task-1"].enabled
        assert sidecar.post("/idle", {"lease": "job"}).json()["leases"] == 0
        yield sidecar
    finally:
        sidecar.stop()


def disables(agent) -> list[dict]:
    return [put for put in agent.puts("task-1") if put["ProtectionEnabled"] is False]


def test_a_drain_exit_switches_protection_off(protected_then_idle, agent_in_thread):
    sidecar = protected_then_idle
    assert disables(agent_in_thread) == []
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(timeout=60) == 0
    assert not agent_in_thread.tasks["task-1"].enabled
    assert len(disables(agent_in_thread)) == 1
    line = sidecar.wait_for_log("switched off before exiting")
    assert line["event"] == "exit_switched_off"
    assert sidecar.wait_for_log("exiting with code 0")


def test_no_call_when_the_task_metadata_says_stopped(
    protected_then_idle, agent_in_thread, metadata
):
    sidecar = protected_then_idle
    metadata.stop_task()
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(timeout=60) == 0
    assert agent_in_thread.tasks["task-1"].enabled
    assert disables(agent_in_thread) == []
    assert sidecar.wait_for_log("the task is stopping")["event"] == "exit_switch_off_skipped"


def test_a_hung_agent_cannot_hold_the_exit(protected_then_idle, agent_in_thread):
    sidecar = protected_then_idle
    agent_in_thread.fail_always(hang())
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(timeout=60) == 0
    line = sidecar.wait_for_log("could not switch protection off")
    assert line["event"] == "exit_switch_off_failed"
    assert "no answer within 5s" in line["message"]
    assert agent_in_thread.tasks["task-1"].enabled  # left on until it expires, as before


def test_a_second_signal_during_the_switch_off_exits_at_once(protected_then_idle, agent_in_thread):
    sidecar = protected_then_idle
    agent_in_thread.fail_always(hang())
    sidecar.signal(signal.SIGTERM)
    # The switch-off has begun and waits for the hung agent for up to 5 s (the bound);
    # whether this second signal lands before or during it, it ends the process at once.
    sidecar.wait_for_log("switching protection off before exiting")
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(timeout=60) == 128 + signal.SIGTERM
    assert not [e for e in sidecar.logs if "could not switch" in e.get("message", "")]


def test_leases_held_at_the_drain_timeout_keep_protection_on(agent_in_thread, metadata):
    sidecar = SidecarProcess(
        {
            "ECS_AGENT_URI": agent_in_thread.uri("task-1"),
            "TASK_PROTECTION_DRAIN_TIMEOUT_SECONDS": "1",
        }
    ).start()
    try:
        assert sidecar.post("/busy", {"lease": "stuck", "wait_seconds": 60}).json()["protected"]
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait(timeout=60) == 3
        assert agent_in_thread.tasks["task-1"].enabled
        assert disables(agent_in_thread) == []
    finally:
        sidecar.stop()


class BrokenBackend:
    """A backend with a bug: its disable raises what no backend should (not BackendError)."""

    name = "agent"

    def __init__(self) -> None:
        self.sets: list[bool] = []

    async def get(self) -> Protection:
        raise BackendError("Unreachable", "not read yet", retryable=True)

    async def set(self, enabled: bool, expires_minutes: int) -> Protection:  # noqa: ARG002
        self.sets.append(enabled)
        raise RuntimeError("a bug in the backend")

    async def close(self) -> None:
        pass


async def test_a_backend_bug_during_the_switch_off_is_logged_not_raised(caplog):
    """Never read (so possibly on): the exit tries one disable, which raises a bug's
    error; the exit goes on, with exit_switch_off_failed in the log."""
    caplog.set_level(logging.INFO)
    backend = BrokenBackend()
    service = ProtectionService(Policy(), backend, FakeClock(), max_leases=10)
    assert service.protection_left_on()
    await switch_off_before_exit(service, None)
    assert backend.sets == [False]
    [failed] = [r for r in caplog.records if getattr(r, "event", "") == "exit_switch_off_failed"]
    assert "RuntimeError: a bug in the backend" in failed.getMessage()
