"""Run the real sidecar in a subprocess and talk to it: for signal and end-to-end tests.

Importable on every Python the client supports (3.9+): the sidecar itself needs 3.11+,
so SIDECAR_PYTHON names its interpreter when the tests run on an older one.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    from collections.abc import Callable

START_TIMEOUT = 30.0
ROOT = Path(__file__).parent.parent


def sidecar_python() -> str:
    """The interpreter that runs the sidecar: SIDECAR_PYTHON, or this one."""
    return os.environ.get("SIDECAR_PYTHON") or sys.executable


class SidecarProcess:
    """`python -m sidecar` on a free loopback port, its JSON log lines collected."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        *,
        stdout: bool | int = False,  # True: collected (next_stdout); a descriptor: to it
        preexec_fn: Callable[[], None] | None = None,
        command: list[str] | None = None,  # instead of `python -m sidecar`
    ) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TASK_PROTECTION_")}
        full_env.pop("ECS_AGENT_URI", None)
        full_env.update({"TASK_PROTECTION_PORT": "0", "TASK_PROTECTION_LOG_FORMAT": "json"})
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [*(command or [sidecar_python(), "-m", "sidecar"]), *args],
            env=full_env,
            cwd=str(ROOT),
            stdout=(
                subprocess.PIPE
                if stdout is True
                else subprocess.DEVNULL
                if stdout is False
                else stdout
            ),
            stderr=subprocess.PIPE,
            text=True,
            # Tests pass a setrlimit: a system call that takes no lock another thread holds.
            preexec_fn=preexec_fn,  # noqa: PLW1509
        )
        self.stdout: queue.Queue[str | None] = queue.Queue()  # lines, with stdout=True
        if stdout is True:
            threading.Thread(target=self._pump_stdout, daemon=True).start()
        self.logs: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.port = 0
        self.session = requests.Session()
        self.session.trust_env = False  # a loopback server: never through a proxy

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.put(line)
        self.stdout.put(None)

    def next_stdout(self, timeout: float = START_TIMEOUT) -> str:
        """The next line the process wrote to stdout."""
        line = self.stdout.get(timeout=timeout)
        assert line is not None, "stdout closed"
        return line

    def _drain_lines(self, timeout: float) -> bool:
        """Move available log lines into self.logs; False once the stream has ended."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return True
        while True:
            if line is None:
                return False
            self.raw.append(line)
            try:
                self.logs.append(json.loads(line))
            except ValueError:
                self.logs.append({"message": line.strip()})
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return True

    def wait_for_log(self, needle: str, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for entry in self.logs[seen:]:
                if needle in entry.get("message", ""):
                    return entry
            seen = len(self.logs)
            if not self._drain_lines(0.1) and seen == len(self.logs):
                break
        raise AssertionError(f"no log line with {needle!r}; got: {''.join(self.raw)}")

    def start(self) -> SidecarProcess:
        self.port = int(self.wait_for_log("listening on")["port"])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        return self.session.post(self.url + path, json=body, timeout=30)

    def get(self, path: str) -> requests.Response:
        return self.session.get(self.url + path, timeout=30)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout=timeout)
        while self._drain_lines(0.5):
            pass
        return code

    def state(self) -> dict[str, Any]:
        return dict(self.get("/state").json())

    def __enter__(self) -> SidecarProcess:  # noqa: PYI034  (typing.Self is 3.11+)
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.session.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
