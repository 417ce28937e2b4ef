"""Helpers of the framework tests (Celery, RQ, Dramatiq): real worker processes and what
their jobs saw. Their fixtures are in tests/framework_fixtures.py."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.framework_apps.probe import records
from tests.support import wait_until

if TYPE_CHECKING:
    from collections.abc import Sequence

    import redis

    from tests.processes import SidecarProcess

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
WORKER_MARK = "ECS_PROTECTION_FRAMEWORK_WORKER"


@dataclass
class RedisDb:
    url: str
    client: redis.Redis

    def records(self) -> list[dict[str, Any]]:
        """What the probe jobs saw, in the order they saw it."""
        return records(self.url)


def lease_names(sidecar: SidecarProcess) -> list[str]:
    return [lease["lease"] for lease in sidecar.get("/state").json()["leases"]]


class WorkerProcess:
    """A worker command (`celery ... worker`, `rq worker`, `dramatiq ...`) and its output.

    `signal()` reaches the main process only, as ECS's SIGTERM reaches a container's
    PID 1; `stop()` kills every process the worker started (found by a variable only
    they inherit), including those that left its process group, such as RQ's horses.
    """

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        self.mark = uuid.uuid4().hex
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TASK_PROTECTION_")}
        full_env.update({"PYTHONPATH": str(ROOT), WORKER_MARK: self.mark, **env})
        self.proc = subprocess.Popen(
            list(argv),
            env=full_env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._new.put(line)

    @property
    def output(self) -> str:
        with contextlib.suppress(queue.Empty):
            while True:
                self.lines.append(self._new.get_nowait())
        return "".join(self.lines)

    def wait_for_output(self, needle: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            stopped = self.proc.poll() is not None or time.monotonic() > deadline
            assert not stopped, f"no {needle!r} in the worker's output:\n{self.output}"
            time.sleep(0.02)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def kill_all(self) -> None:
        """SIGKILL to every process of the worker at once, as ECS does after stopTimeout."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def pids(self) -> list[int]:
        needle = f"{WORKER_MARK}={self.mark}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
        return found

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running after {timeout}s:\n{self.output}") from None

    def stop(self) -> None:
        self.kill_all()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        wait_until(lambda: not self.pids(), 10, "every process of the worker gone")


def wait_for_record(
    db: RedisDb, job: str, event: str, timeout: float = 60, worker: WorkerProcess | None = None
) -> dict[str, Any]:
    """The first record of `event` by `job`, once the job has made it."""

    def find() -> dict[str, Any] | None:
        return next((r for r in db.records() if r["job"] == job and r["event"] == event), None)

    deadline = time.monotonic() + timeout
    while (found := find()) is None:
        if worker is not None and worker.proc.poll() is not None:
            raise AssertionError(f"worker exited before {job} {event}:\n{worker.output}")
        assert time.monotonic() < deadline, f"no {event} record of {job} within {timeout}s"
        time.sleep(0.02)
    return found


def run_example(script: str, redis_db: RedisDb, *args: str) -> None:
    """`python examples/<script> ...`, as the README shows it (it sends the jobs)."""
    subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT / "examples",
        env={**os.environ, "REDIS_URL": redis_db.url},
        check=True,
        timeout=60,
    )


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "ERROR" in line or "CRITICAL" in line]


def assert_saw_its_own_lease(record: dict[str, Any], framework: str) -> None:
    """The job ran while the sidecar was busy, protected, and held this job's lease."""
    assert record["busy"] is True, record
    assert record["protection"] == "on", record
    own = [name for name in record["leases"] if name.startswith(f"{framework}-{record['job']}-")]
    assert len(own) == 1, record
