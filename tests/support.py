"""Small helpers every kind of test uses: free ports and waiting for a condition.

Waiting polls a condition on real objects (a process, a socket, a server's state) with a
deadline; it never stands in for a timer, which tests drive with a fake clock instead.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Block until `predicate()` is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not met within {timeout:g}s: {what or predicate}"
        time.sleep(0.01)


async def eventually(predicate: Callable[[], object], within: float = 10.0) -> None:
    """Wait in asyncio code, polling every few milliseconds, until `predicate()` is true."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110  (state of objects, not an event)
            await asyncio.sleep(0.002)
