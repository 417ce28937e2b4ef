"""GracefulShutdown in real processes with real SIGTERM: idle exits now, busy after the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "scripts" / "worker.py"
ROOT = Path(__file__).parent.parent


class Worker:
    def __init__(self, mode: str) -> None:
        env = {**os.environ, "TASK_PROTECTION_URL": "http://127.0.0.1:9", "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.expect("ready")

    def expect(self, word: str, timeout: float = 30) -> None:
        assert self.proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()))
        reader.start()
        reader.join(timeout)
        assert result == [word + "\n"], (result, self.proc.stderr and self.proc.stderr.read())

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def term(self) -> None:
        self.proc.send_signal(signal.SIGTERM)


@pytest.fixture
def worker():
    started: list[Worker] = []

    def make(mode: str) -> Worker:
        started.append(Worker(mode))
        return started[-1]

    yield make
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait(10)


@pytest.mark.parametrize("mode", ["sync", "threads", "asyncio"])
def test_sigterm_while_idle_exits_at_once(worker, mode):
    w = worker(mode)
    w.term()
    assert w.proc.wait(timeout=30) == 0


@pytest.mark.parametrize("mode", ["sync", "threads", "asyncio"])
def test_sigterm_while_busy_exits_when_the_job_ends(worker, mode):
    w = worker(mode)
    w.send("job")
    w.expect("started")
    w.term()
    with pytest.raises(subprocess.TimeoutExpired):
        w.proc.wait(timeout=0.5)  # still running: the job is not interrupted
    w.send("finish")
    w.expect("finished")
    assert w.proc.wait(timeout=30) == 0
