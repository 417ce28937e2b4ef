"""Fixtures of the framework tests: one real Redis per session, the real sidecar, workers.

The test modules load this as a plugin (`pytest_plugins`), so the session's one Redis
server is shared by all of them; each test gets a database of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import redis

from tests.framework_support import ROOT, RedisDb, WorkerProcess
from tests.processes import SidecarProcess
from tests.redis_server import RedisServer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_db(redis_server: RedisServer) -> Iterator[RedisDb]:
    url = redis_server.url(redis_server.new_db())
    client = redis.Redis.from_url(url)
    yield RedisDb(url, client)
    client.close()


@pytest.fixture
def redis_db_factory(redis_server: RedisServer) -> Iterator[Callable[[], RedisDb]]:
    """Fresh databases, for a test that repeats a scenario."""
    clients: list[redis.Redis] = []

    def new() -> RedisDb:
        url = redis_server.url(redis_server.new_db())
        clients.append(redis.Redis.from_url(url))
        return RedisDb(url, clients[-1])

    yield new
    for client in clients:
        client.close()


@pytest.fixture
def sidecar() -> Iterator[SidecarProcess]:
    """The real sidecar, local backend: protection is confirmed at once."""
    process = SidecarProcess().start()
    yield process
    process.stop()


@pytest.fixture
def workers() -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes; every one of them (and its children) is killed at the end."""
    started: list[WorkerProcess] = []

    def start(argv: Sequence[str], env: dict[str, str], cwd: Path = ROOT) -> WorkerProcess:
        worker = WorkerProcess(argv, env, cwd)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
