"""The asyncio client on aiohttp (the `async` extra): the same protocol, sent asynchronously."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Self

from ecs_protection import _protocol as p

if TYPE_CHECKING:
    from types import ModuleType

    import aiohttp


def _aiohttp() -> ModuleType:
    try:
        import aiohttp  # noqa: PLC0415  (optional dependency)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "async support needs aiohttp: pip install 'ecs-protection[async]'"
        ) from exc
    return aiohttp


class AsyncClient(p.BaseClient):
    """Talks to the sidecar from asyncio code; one aiohttp session, kept alive."""

    def __init__(
        self, url: str | None = None, *, token: str | None = None, strict: bool | None = None
    ) -> None:
        super().__init__(url, token=token, strict=strict)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(self, request: p.Request) -> tuple[int, bytes] | None:
        aiohttp = _aiohttp()
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.request(
                request.method,
                self.settings.url + request.path,
                json=request.body,
                headers=p.headers(self.settings),
                timeout=aiohttp.ClientTimeout(total=request.timeout),
            ) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._unreachable.handle(exc)
            return None
        self._unreachable.reset()
        return status, payload

    async def acquire(
        self,
        lease: str,
        ttl: float | None = None,
        wait_seconds: float | None = None,
        *,
        require_protection: bool = False,
    ) -> p.Lease:
        answer = await self._send(self._busy_request(lease, ttl, wait_seconds))
        return p.lease_answer(lease, answer, require_protection=require_protection)

    async def release(self, lease: str) -> bool:
        answer = await self._send(p.idle_request(lease))
        return False if answer is None else p.parse_idle(*answer)

    async def state(self) -> p.State | None:
        answer = await self._send(p.state_request())
        return None if answer is None else p.parse_state(*answer)

    async def draining(self) -> bool:
        state = await self.state()
        return bool(state and state.draining)

    async def wait_for_drain(
        self,
        timeout: float | None = None,  # noqa: ASYNC109  (the same signature as Client's)
        poll_seconds: float = 1.0,
    ) -> bool:
        """Wait until the task is draining (True) or `timeout` passes (False)."""
        try:
            async with asyncio.timeout(timeout):
                while not await self.draining():  # noqa: ASYNC110  (the state is polled over HTTP)
                    await asyncio.sleep(poll_seconds)
        except TimeoutError:
            return False
        return True
