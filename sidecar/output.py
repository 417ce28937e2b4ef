"""Lines out (the log on stderr, EMF records on stdout) that never block the event loop.

A container's stdout and stderr are pipes that the log driver reads. When it stops
reading (a stalled driver in blocking mode, CloudWatch Logs throttled), a write blocks
once the pipe is full, and a write blocked on the event loop stops everything: /busy,
/healthz, renewals, even the drain on SIGTERM. So lines go through a bounded queue to a
thread of their own, which alone may block. While nobody reads, new lines beyond the
bound are dropped and counted; `on_dropped` is told once per outage, when the first is
dropped, and `on_recovered` with the count once lines flow again.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

# Lines waiting in all, in bytes: minutes of the sidecar's output, yet a bounded cost.
QUEUE_LIMIT_BYTES = 1 << 20


class LineWriter:
    """Writes whole lines to a file descriptor from a daemon thread; never blocks a caller."""

    def __init__(
        self,
        fd: int,
        *,
        limit: int = QUEUE_LIMIT_BYTES,
        on_dropped: Callable[[str], None] | None = None,
        on_recovered: Callable[[int], None] | None = None,
    ) -> None:
        self._fd = fd
        self._limit = limit
        self._on_dropped = on_dropped
        self._on_recovered = on_recovered
        # (sequence number, line): an outage ends with a line queued after it began.
        self._lines: collections.deque[tuple[int, bytes]] = collections.deque()
        self._queued = 0  # bytes in _lines
        self._sequence = 0  # of the next line queued
        self._dropped = 0  # lines lost in the current outage
        self._outage_from = 0  # the first sequence number queued after the outage began
        self._writing = False  # the thread holds a line taken off the queue
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"output-fd{fd}", daemon=True)
        self._thread.start()

    def write(self, line: str) -> bool:
        """Queue `line` (a newline is added if missing); False if it was dropped."""
        data = line.encode("utf-8", errors="replace")
        if not data.endswith(b"\n"):
            data += b"\n"
        with self._ready:
            if self._queued + len(data) > self._limit:
                self._drop("nobody reads it: the queue is full")
                return False
            self._lines.append((self._sequence, data))
            self._sequence += 1
            self._queued += len(data)
            self._ready.notify()
        return True

    def flush(self, timeout: float) -> bool:
        """Wait until every queued line is written, for at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while self._lines or self._writing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._ready.wait(remaining)
        return True

    def _drop(self, why: str) -> None:
        """With the lock held: one more line lost in this outage."""
        self._dropped += 1
        if self._dropped == 1:
            self._outage_from = self._sequence
        if self._dropped == 1 and self._on_dropped is not None:
            # Outside the lock's callers' way: the callback may write lines itself.
            threading.Thread(target=self._on_dropped, args=(why,), daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._lines:
                    self._ready.wait()
                sequence, data = self._lines.popleft()
                self._queued -= len(data)
                self._writing = True
            error = self._write_all(data)
            with self._ready:
                self._writing = False
                recovered = 0
                if error is not None:
                    self._drop(error)
                elif self._dropped and sequence >= self._outage_from:
                    recovered, self._dropped = self._dropped, 0
                self._ready.notify_all()
            if recovered and self._on_recovered is not None:
                with contextlib.suppress(Exception):
                    self._on_recovered(recovered)

    def _write_all(self, data: bytes) -> str | None:
        """Write `data` whole (blocking this thread only); the error's text if it failed."""
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except InterruptedError:
                continue
            except OSError as exc:
                return exc.strerror or type(exc).__name__
            view = view[written:]
        return None


def stream_fd(stream: object) -> int | None:
    """The descriptor under sys.stdout or sys.stderr; None when the process has none."""
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None
    return fd if isinstance(fd, int) else None
