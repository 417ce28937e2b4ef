"""Lines out never block: a stdout or stderr that nobody reads (a stalled log driver)
costs lines, counted and reported, never the event loop. Real pipes, real threads."""

from __future__ import annotations

import os
import threading

from sidecar.output import LineWriter


class Calls:
    def __init__(self) -> None:
        self.dropped: list[str] = []
        self.recovered: list[int] = []
        self.told = threading.Event()

    def on_dropped(self, why: str) -> None:
        self.dropped.append(why)
        self.told.set()

    def on_recovered(self, count: int) -> None:
        self.recovered.append(count)


def fill(fd: int) -> bytes:
    """Write lines into the pipe until it is full; what was written."""
    written = bytearray()
    os.set_blocking(fd, False)
    try:
        while True:
            try:
                written += b"f" * os.write(fd, b"f" * 4096)
            except BlockingIOError:
                return bytes(written)
    finally:
        os.set_blocking(fd, True)


def test_a_pipe_nobody_reads_drops_lines_beyond_the_bound_and_never_blocks():
    reader, writer_fd = os.pipe()
    prefill = fill(writer_fd)  # the pipe is full from the start: the log driver stalled
    calls = Calls()
    writer = LineWriter(
        writer_fd, limit=4096, on_dropped=calls.on_dropped, on_recovered=calls.on_recovered
    )
    try:
        # Far more than the queue (4 KiB) holds: every call returns all the same.
        results = [writer.write(f"line {n:06d} " + "x" * 80) for n in range(5000)]
        assert results[0] is True
        assert results.count(False) > 0
        assert calls.told.wait(30)
        assert len(calls.dropped) == 1  # once per outage, not per line
        assert "nobody reads" in calls.dropped[0]

        received = bytearray()
        done = threading.Event()

        def read_all() -> None:
            while chunk := os.read(reader, 65536):
                received.extend(chunk)
            done.set()

        threading.Thread(target=read_all, daemon=True).start()
        assert writer.flush(30)
        assert writer.write("after the reader came back") is True
        assert writer.flush(30)
        assert calls.recovered == [results.count(False)]
    finally:
        os.close(writer_fd)
    assert done.wait(30)
    assert bytes(received[: len(prefill)]) == prefill
    lines = bytes(received[len(prefill) :]).decode().splitlines()
    # Whole lines only, in order: what was kept is a prefix of what was written, then
    # the line that came after.
    kept = [f"line {n:06d} " + "x" * 80 for n, ok in enumerate(results) if ok]
    assert lines == [*kept, "after the reader came back"]
    os.close(reader)


def test_a_closed_reader_costs_lines_not_an_exception():
    reader, writer_fd = os.pipe()
    os.close(reader)  # EPIPE from now on (Python ignores SIGPIPE)
    calls = Calls()
    writer = LineWriter(writer_fd, on_dropped=calls.on_dropped)
    try:
        for n in range(100):
            writer.write(f"line {n}")
        assert writer.flush(30)
        assert calls.told.wait(30)
        assert len(calls.dropped) == 1
        assert "pipe" in calls.dropped[0].lower()
    finally:
        os.close(writer_fd)
