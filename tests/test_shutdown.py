"""GracefulShutdown in real processes with real SIGTERM, on the ack-after-the-block loop.

The rule: idle exits at once; a job in progress ends normally and the code after its
block (the ack) runs; the process stops at the next safe point (the loop's check, or
the next busy(), which refuses the job), or, for a main thread that never gets there,
grace_seconds after the last job ended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.client_support import NOWHERE

WORKER = Path(__file__).parent / "scripts" / "worker.py"
ROOT = Path(__file__).parent.parent


class Worker:
    def __init__(self, mode: str, grace: float) -> None:
        path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))
        env = {**os.environ, "TASK_PROTECTION_URL": NOWHERE, "PYTHONPATH": path}
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), mode, str(grace)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.expect("ready")

    def expect(self, line: str, timeout: float = 30) -> None:
        assert self.proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()))
        reader.daemon = True
        reader.start()
        reader.join(timeout)
        assert result == [line + "\n"], (result, self.stderr())

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def term(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def still_running(self) -> bool:
        try:
            self.proc.wait(timeout=0.3)
        except subprocess.TimeoutExpired:
            return True
        return False

    def exits(self, timeout: float = 30) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        assert self.proc.stdout is not None
        return code, self.proc.stdout.read()

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()


@pytest.fixture
def worker():
    started: list[Worker] = []

    def make(mode: str, grace: float = 5.0) -> Worker:
        started.append(Worker(mode, grace))
        return started[-1]

    yield make
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
        w.proc.wait(10)
        for stream in (w.proc.stdin, w.proc.stdout, w.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("mode", ["loop", "no-check", "pool", "asyncio"])
def test_sigterm_while_idle_exits_at_once(worker, mode):
    w = worker(mode, grace=60)
    w.term()
    assert w.exits()[0] == 0


@pytest.mark.parametrize("mode", ["loop", "asyncio"])
def test_sigterm_during_a_job_lets_the_ack_run_and_the_loop_end(worker, mode):
    """The loop from the README: the job ends, the message is acked, the loop ends."""
    w = worker(mode, grace=60)  # a long grace: the loop's own check must end it
    w.send("job 1")
    w.expect("started 1")
    w.term()
    assert w.still_running()  # the job is not interrupted
    w.send("finish")
    w.expect("finished 1")
    assert w.still_running()  # nor is the ack, after the block
    w.send("ack")
    w.expect("acked 1")
    w.expect("loop ended")
    code, _ = w.exits()
    assert code == 0
    assert "Traceback" not in w.stderr()


def test_cleanup_after_the_loop_is_not_cut_by_the_fallback(worker):
    """The loop ended by its own check: the code after it may take longer than the grace."""
    w = worker("loop-cleanup", grace=0.3)
    w.send("job 1")
    w.expect("started 1")
    w.term()
    w.send("finish")
    w.expect("finished 1")
    w.send("ack")
    w.expect("acked 1")
    w.expect("loop ended")
    assert w.still_running()  # well past the 0.3 s grace: no SystemExit in the cleanup
    assert w.still_running()
    w.send("cleanup")
    w.expect("cleaned up")
    assert w.exits()[0] == 0


def test_sigterm_between_the_block_and_the_ack_waits_for_the_ack(worker):
    """A job ended moments ago: its ack is still running, so this is not idle."""
    w = worker("loop", grace=60)
    w.send("job 1")
    w.expect("started 1")
    w.send("finish")
    w.expect("finished 1")
    w.term()  # now in delete(): no block runs, one ended just now
    assert w.still_running()
    w.send("ack")
    w.expect("acked 1")
    w.expect("loop ended")
    assert w.exits()[0] == 0


def test_without_the_check_the_next_busy_refuses_the_job(worker):
    w = worker("no-check", grace=60)
    w.send("job 1")
    w.expect("started 1")
    w.term()
    w.send("finish")
    w.expect("finished 1")
    w.send("ack")
    w.expect("acked 1")
    w.send("job 2")  # received, but busy() refuses it: it stays on the queue
    code, rest = w.exits()
    assert code == 0
    assert "started 2" not in rest


def test_a_main_thread_that_never_checks_is_stopped_after_the_grace(worker):
    """A thread-pool server: the job and its ack finish, then the fallback stops it."""
    w = worker("pool", grace=2)
    w.send("job 1")
    w.expect("started 1")
    w.term()
    assert w.still_running()
    w.send("finish")
    w.expect("finished 1")
    w.send("ack")
    w.expect("acked 1")
    assert w.exits()[0] == 0
