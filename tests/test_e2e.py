"""Client, real sidecar process and fake ECS agent together, as on a task."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import pytest

from ecs_protection import Client, busy
from tests.processes import SidecarProcess

if TYPE_CHECKING:
    from tests.fakes.agent import FakeAgent


@pytest.fixture
def sidecar(agent_in_thread):
    process = SidecarProcess(
        {
            "ECS_AGENT_URI": agent_in_thread.uri("task-1"),
            "TASK_PROTECTION_IDLE_GRACE_SECONDS": "0",
        }
    ).start()
    yield process
    process.stop()


@pytest.fixture
def client(sidecar):
    with Client(sidecar.url, strict=True) as c:
        yield c


def enables(agent: FakeAgent) -> int:
    return sum(1 for p in agent.puts() if p["ProtectionEnabled"])


def test_with_busy_protects_the_task_and_releases(agent_in_thread, sidecar, client):
    with busy(client=client) as lease:
        assert lease.protected
        assert agent_in_thread.tasks["task-1"].enabled
        state = client.state()
        assert state is not None
        assert (state.protected, state.leases, state.raw["protection"]["backend"]) == (
            True,
            1,
            "agent",
        )
    state = client.state()
    assert state is not None
    assert state.leases == 0
    # With a zero grace the sidecar disables protection once idle: wait for that event.
    sidecar.wait_for_log("protection disabled")
    assert not agent_in_thread.tasks["task-1"].enabled


def test_concurrent_jobs_share_one_enable(agent_in_thread, sidecar, client):
    barrier = threading.Barrier(4)

    @busy(client=client)
    def job() -> None:
        barrier.wait(timeout=30)

    threads = [threading.Thread(target=job) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert enables(agent_in_thread) == 1


def test_a_crash_inside_the_block_still_releases(sidecar, client):
    with pytest.raises(RuntimeError), busy(client=client):
        raise RuntimeError("job failed")
    state = client.state()
    assert state is not None
    assert state.leases == 0


def test_the_cli_protects_a_shell_command(agent_in_thread, sidecar):
    result = subprocess.run(
        [sys.executable, "-m", "ecs_protection", "busy", "--", "true"],
        env={**os.environ, "TASK_PROTECTION_URL": sidecar.url},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert enables(agent_in_thread) == 1
