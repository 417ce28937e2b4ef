"""The sync client in a prefork pool, against a real sidecar process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.processes import SidecarProcess

SCRIPT = Path(__file__).parent / "scripts" / "fork_jobs.py"


def test_children_forked_after_the_parent_used_the_client_share_nothing():
    """4 children x 2 threads after the parent used both clients: no error, no leak."""
    with SidecarProcess({"TASK_PROTECTION_IDLE_GRACE_SECONDS": "0"}) as sidecar:
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "4", "25"],
            env={**os.environ, "TASK_PROTECTION_URL": sidecar.url, "TASK_PROTECTION_STRICT": "1"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        outcome = json.loads(result.stdout)
        assert outcome["codes"] == [0, 0, 0, 0], result.stderr
        # The children's releases of the parent's hold did nothing; its own did.
        assert outcome["held_after_children"] == 1
        state = sidecar.state()
        assert state["leases"] == []


ASYNC_FORK = """
import asyncio, gc, os
from ecs_protection import AsyncClient
client = AsyncClient("http://127.0.0.1:9")
asyncio.run(client.state())  # its session now exists, in this (the parent's) process
pid = os.fork()
if pid == 0:
    gc.collect()
    os._exit(0)
os.waitpid(pid, 0)
os._exit(0)
"""


def test_a_child_does_not_complain_about_the_parents_async_session():
    """The parent's aiohttp session is the parent's to close: no 'Unclosed' in the child."""
    result = subprocess.run(
        [sys.executable, "-c", ASYNC_FORK], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Unclosed" not in result.stderr
