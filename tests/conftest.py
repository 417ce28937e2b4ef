from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.fakes.agent import FakeAgent
from tests.fakes.clock import FakeClock
from tests.fakes.threaded import ThreadedServer

# The client's fixtures (`fake`, `client`), shared with its nox run.
pytest_plugins = ["tests.client_fixtures", "tests.container_fixtures"]

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def agent() -> AsyncIterator[FakeAgent]:
    """A fake ECS agent on a loopback port 0 with one task, `task-1`."""
    fake = FakeAgent()
    await fake.start()
    fake.add_task("task-1")
    yield fake
    await fake.close()


@pytest.fixture
def agent_in_thread() -> Iterator[FakeAgent]:
    """The fake agent with `task-1`, served from its own thread, for blocking tests."""
    fake = FakeAgent()

    async def start() -> str:
        url = await fake.start()
        fake.add_task("task-1")
        return url

    with ThreadedServer(start, fake.close):
        yield fake


# Every process a test starts inherits this variable (tests pass os.environ on): at the end
# of the session, any process still carrying it was left behind by a test.
SESSION_MARK = "ECS_PROTECTION_TEST_SESSION"


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ[SESSION_MARK] = uuid.uuid4().hex


def leftover_processes() -> list[tuple[int, str]]:
    mark = f"{SESSION_MARK}={os.environ.get(SESSION_MARK, '')}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                args = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
                found.append((int(entry.name), args.strip()))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No test may leave a process behind: fail the session (and clean up) if one did."""
    if not Path("/proc").is_dir():
        return
    deadline = time.monotonic() + 5  # processes being stopped right now may take a moment
    left = leftover_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = leftover_processes()
    if not left:
        return
    for pid, _ in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = "\n".join(f"  pid {pid}: {args[:200]}" for pid, args in left)
    message = f"processes left behind by the tests (killed now):\n{lines}"
    if reporter is not None:
        reporter.write_line(message, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
