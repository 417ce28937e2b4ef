"""Small helpers every kind of test uses: free ports, waiting for a condition, reading a
subprocess's output with a deadline.

Waiting polls a condition on real objects (a process, a socket, a server's state) with a
deadline; it never stands in for a timer, which tests drive with a fake clock instead.
Importable on every Python the client supports (3.9+): the client's tests use it too.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import IO, TYPE_CHECKING

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
        time.sleep(0.005)


def read_line(stream: IO[str] | None, timeout: float = 30.0) -> str:
    """The next line of a subprocess's pipe, stripped; fail after `timeout` seconds."""
    assert stream is not None
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert got, "no line in time"
    return got[0].strip()


def wait_for_line(stream: IO[str] | None, needle: str, timeout: float = 30.0) -> str:
    """Read lines until one contains `needle`; return it. Fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{needle!r} not seen in time"
        line = read_line(stream, remaining)
        if needle in line:
            return line


async def eventually(predicate: Callable[[], object], within: float = 10.0) -> None:
    """Wait in asyncio code, polling every few milliseconds, until `predicate()` is true."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110  (state of objects, not an event)
            await asyncio.sleep(0.002)
