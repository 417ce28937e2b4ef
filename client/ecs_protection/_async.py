"""The asyncio client on aiohttp (the `async` extra): the same protocol, sent asynchronously."""

from __future__ import annotations

import asyncio
import errno
import sys
from typing import TYPE_CHECKING

from ecs_protection import _protocol as p
from ecs_protection._errors import InvalidAnswerError
from ecs_protection._hold import AsyncHold

if TYPE_CHECKING:
    from types import ModuleType, TracebackType

    import aiohttp


def _aiohttp() -> ModuleType:
    try:
        import aiohttp  # noqa: PLC0415  (optional dependency)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "async support needs aiohttp: pip install 'ecs-protection[async]'"
        ) from exc
    return aiohttp


def _unanswered(aiohttp: ModuleType, exc: BaseException) -> bool:
    """The connection closed (FIN or RST) before an answer came: not a refused
    connection, a timeout, or an answer that is not HTTP."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    # "Can not write request body": closed before the request was sent whole; aiohttp
    # keeps the errno of the reset, or none ("Cannot write to closing transport").
    return (
        isinstance(exc, aiohttp.ClientOSError)
        and not isinstance(exc, aiohttp.ClientConnectorError)
        and (
            exc.errno in (errno.ECONNRESET, errno.EPIPE)
            or isinstance(exc.__cause__, (ConnectionResetError, BrokenPipeError))
        )
    )


# Sessions inherited from the parent by a forked child: never used, never collected.
_parents_sessions: list[object] = []


class AsyncClient(p.BaseClient):
    """Talks to the sidecar from asyncio code; one aiohttp session, kept alive.

    The session is made on first use, on the running loop, and never consults proxy
    settings. A forked child makes its own.
    """

    def __init__(
        self, url: str | None = None, *, token: str | None = None, strict: bool | None = None
    ) -> None:
        super().__init__(url, token=token, strict=strict)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncClient:  # noqa: PYI034  (typing.Self is 3.11+; the client supports 3.9)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _after_fork(self) -> None:
        # The parent's session and its sockets belong to the parent's event loop. Kept
        # out of reach of the garbage collector: collecting it here would log "Unclosed
        # client session" for a session that is the parent's to close.
        if self._session is not None:
            _parents_sessions.append(self._session)
        self._session = None

    async def _send(
        self, request: p.Request, unreachable: p.OnUnreachable = "settings"
    ) -> tuple[int, bytes] | None:
        """(status, body), or None when no answer came in time (see p.Unreachable)."""
        aiohttp = _aiohttp()
        if self._session is None:
            # trust_env=False (aiohttp's default, stated): no HTTP_PROXY for localhost.
            self._session = aiohttp.ClientSession(trust_env=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + request.timeout
        retries_left = p.UNANSWERED_RETRIES
        while True:
            try:
                answer = await self._exchange(aiohttp, request, deadline - loop.time())
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
                # asyncio.TimeoutError is not the builtin TimeoutError before Python 3.11.
                if retries_left and _unanswered(aiohttp, exc) and deadline > loop.time():
                    retries_left -= 1  # sent again: see p.UNANSWERED_RETRIES
                    continue
                self._unreachable.handle(exc, unreachable)
                return None
            self._unreachable.reset()
            return answer

    async def _exchange(
        self, aiohttp: ModuleType, request: p.Request, timeout: float
    ) -> tuple[int, bytes]:
        """One attempt: (status, body); InvalidAnswerError for a wrong answer, aiohttp's
        (or asyncio's, OSError, ValueError) when none came."""
        assert self._session is not None  # noqa: S101  (made by _send)
        status = 0
        try:
            # `total` bounds the call as a whole, however slowly the answer comes.
            async with self._session.request(
                request.method,
                self.settings.url + request.path,
                json=request.body,
                headers=p.headers(self.settings),
                timeout=aiohttp.ClientTimeout(total=max(timeout, 0.001)),
                allow_redirects=False,
            ) as response:
                status = response.status
                body = p.AnswerBody(status, response.headers.get("Content-Length"))
                async for chunk in response.content.iter_chunked(1 << 16):
                    body.add(chunk)
        # Something answered, wrongly: not "unreachable" (see InvalidAnswerError).
        except aiohttp.ClientPayloadError as exc:
            raise InvalidAnswerError(status, f"the answer was cut short: {exc}") from None
        except aiohttp.ClientResponseError as exc:  # the parser's: a bad status line, ...
            raise InvalidAnswerError(0, f"not an HTTP answer: {exc.message}") from None
        return status, body.payload()

    async def acquire(
        self,
        lease: str,
        ttl: float | None = None,
        wait_seconds: float | None = None,
        *,
        require_protection: bool = False,
    ) -> p.Lease:
        answer = await self._send(
            self._busy_request(lease, ttl, wait_seconds),
            p.unreachable_policy(require_protection=require_protection),
        )
        return p.lease_answer(lease, answer, require_protection=require_protection)

    async def release(self, lease: str) -> bool:
        answer = await self._send(p.idle_request(lease))
        return False if answer is None else p.parse_idle(*answer)

    async def _discard(self, lease: str) -> None:
        """POST /idle after a busy request that failed: silent when unreachable too."""
        answer = await self._send(p.idle_request(lease), "quiet")
        if answer is not None:
            p.parse_idle(*answer)

    async def hold(
        self,
        *,
        ttl: float | None = p.DEFAULT_TTL_SECONDS,
        lease_prefix: str = "job",
        wait_seconds: float | None = None,
        require_protection: bool = False,
    ) -> AsyncHold:
        """Take a new lease now; `await hold.release()` gives it back. See AsyncHold."""
        return await AsyncHold.take(
            self,
            ttl=ttl,
            lease_prefix=lease_prefix,
            wait_seconds=wait_seconds,
            require_protection=require_protection,
        )

    async def drain(self) -> int | None:
        """POST /drain; the number of leases still held, None when unreachable."""
        answer = await self._send(p.drain_request())
        return None if answer is None else p.parse_drain(*answer)

    async def state(self) -> p.State | None:
        answer = await self._send(p.state_request())
        return None if answer is None else p.parse_state(*answer)

    async def draining(self) -> bool:
        state = await self.state()
        return bool(state and state.draining)

    async def wait_for_drain(
        self,
        timeout: float | None = None,
        poll_seconds: float = 1.0,
    ) -> bool:
        """Wait until the task is draining (True) or `timeout` passes (False).

        Polled in the caller's own task, under a timeout scope: asyncio.wait_for (before
        Python 3.12) polls in a task of its own and can lose a cancellation that comes
        in the step its answer does.
        """
        p.check_seconds("timeout", timeout)
        p.check_seconds("poll_seconds", poll_seconds, positive=True)
        if sys.version_info >= (3, 11):
            from asyncio import timeout as timeout_scope  # noqa: PLC0415
        else:  # the same, from the package asyncio's came from (the `async` extra has it)
            from async_timeout import timeout as timeout_scope  # noqa: PLC0415
        try:
            async with timeout_scope(timeout):
                while not await self.draining():  # noqa: ASYNC110  (the state is polled over HTTP)
                    await asyncio.sleep(poll_seconds)
        except asyncio.TimeoutError:  # the builtin TimeoutError from 3.11 on
            return False
        return True
