"""An in-process sidecar (real aiohttp server, real reconciler) for HTTP-level tests."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sidecar.backends.agent import AgentBackend
from sidecar.clock import Clock, SystemClock
from sidecar.machine import Exit, Policy
from sidecar.service import ProtectionService, View
from sidecar.web import Api, build_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiohttp.test_utils import TestClient

    from tests.fakes.agent import FakeAgent


@dataclass
class Running:
    client: TestClient[Any, Any]
    service: ProtectionService
    task: asyncio.Task[Exit]

    def view(self) -> View:
        """The state as /state and /metrics see it, every lease counted."""
        return self.service.snapshot(lease_limit=0)

    async def settle(self) -> None:
        """Wait until the sidecar has acted on everything that happened so far."""
        await asyncio.sleep(0)
        await asyncio.wait_for(self.service.wait_settled(), 10)

    async def time_moved(self) -> None:
        """After a test moved the fake clock: let the sidecar act on its timers, settled."""
        self.service.recheck()
        await self.settle()

    async def holds(self, lease: str, within: float = 10.0) -> None:
        """Wait until the sidecar holds `lease` (a request in flight has reached it)."""
        async with asyncio.timeout(within):
            while not self.service.holds(lease):  # noqa: ASYNC110  (state, not an event)
                await asyncio.sleep(0)

    async def post(self, path: str, json: Any = None, **kwargs: Any) -> tuple[int, Any]:
        response = await self.client.post(path, json=json, **kwargs)
        return response.status, await response.json()

    async def get(self, path: str) -> tuple[int, Any]:
        response = await self.client.get(path)
        return response.status, await response.json()


@contextlib.asynccontextmanager
async def running_sidecar(
    aiohttp_client: Any,
    agent: FakeAgent,
    *,
    clock: Clock | None = None,
    policy: Policy | None = None,
    token: str | None = None,
    max_leases: int = 100,
    agent_uri: str | None = None,
    backend_timeout: float = 5.0,
) -> AsyncIterator[Running]:
    clock = clock or SystemClock()
    backend = AgentBackend(agent_uri or agent.uri("task-1"), timeout=backend_timeout)
    service = ProtectionService(policy or Policy(), backend, clock, max_leases=max_leases)
    client = await aiohttp_client(build_app(Api(service, token)))
    task = asyncio.create_task(service.run())
    running = Running(client, service, task)
    try:
        await running.settle()
        yield running
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await backend.close()
