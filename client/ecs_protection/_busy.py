"""busy(): one object that is a context manager (sync and async) and a decorator."""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ecs_protection import _fork
from ecs_protection._hold import AsyncHold, Hold, check_options
from ecs_protection._protocol import DEFAULT_TTL_SECONDS
from ecs_protection._sync import Client

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Generator
    from types import TracebackType

    from ecs_protection._async import AsyncClient
    from ecs_protection._protocol import Lease

F = TypeVar("F", bound="Callable[..., Any]")

_default_client: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The process-wide sync client, configured from the environment on first use."""
    global _default_client  # noqa: PLW0603  (one keep-alive session per process)
    with _default_lock:
        if _default_client is None:
            _default_client = Client()
        return _default_client


def _reset_default_client() -> None:
    # The parent may have held the lock at the fork; its client is reset with the others.
    global _default_client, _default_lock  # noqa: PLW0603
    _default_lock = threading.Lock()
    _default_client = None


_fork.on_fork(_reset_default_client)


def hold(
    *,
    ttl: float | None = DEFAULT_TTL_SECONDS,
    lease_prefix: str = "job",
    wait_seconds: float | None = None,
    require_protection: bool = False,
) -> Hold:
    """Take a lease on the default client and hold it until `release()`; see Hold."""
    return default_client().hold(
        ttl=ttl,
        lease_prefix=lease_prefix,
        wait_seconds=wait_seconds,
        require_protection=require_protection,
    )


# The `with` uses in progress in this thread or task, innermost last: one Busy object
# can be entered concurrently by many threads and tasks, each with its own lease.
_uses: contextvars.ContextVar[tuple[tuple[Busy, Hold | AsyncHold], ...]] = contextvars.ContextVar(
    "busy_uses", default=()
)


class Busy:
    """Hold a lease on the sidecar (the task stays protected) while a block or function runs.

    `with busy():`, `async with busy():`, `@busy()` on a def, an async def, a generator
    or an async generator (the lease is held until the generator is exhausted or
    closed). The value bound by `as` is the sidecar's answer (`Lease`: `.lease`,
    `.protected`, ...).

    Each use takes a new unique lease (a Hold) and releases it on exit, even when the
    body raises. The lease expires unless refreshed within `ttl` (60 s by default, so
    that a killed worker cannot keep the task protected; `ttl=None`: no TTL), and a
    heartbeat (a thread, or a task in async code) refreshes it every ttl/3 seconds
    while it is held. With `require_protection=True` the body runs only once the
    sidecar confirmed protection; anything else (no answer included) raises.
    """

    def __init__(  # noqa: PLR0913  (all keyword options)
        self,
        *,
        ttl: float | None = DEFAULT_TTL_SECONDS,
        lease_prefix: str = "job",
        wait_seconds: float | None = None,
        require_protection: bool = False,
        client: Client | None = None,
        async_client: AsyncClient | None = None,
    ) -> None:
        check_options(ttl, wait_seconds)
        self.ttl = ttl
        self.lease_prefix = lease_prefix
        self.wait_seconds = wait_seconds
        self.require_protection = require_protection
        self._client = client
        self._async_client = async_client

    def hold(self) -> Hold:
        """A new lease with these options, on the sync client."""
        return (self._client or default_client()).hold(
            ttl=self.ttl,
            lease_prefix=self.lease_prefix,
            wait_seconds=self.wait_seconds,
            require_protection=self.require_protection,
        )

    async def ahold(self) -> AsyncHold:
        """A new lease with these options, on the async client."""
        client, own = self._async_client, False
        if client is None:
            # A session per use: aiohttp sessions belong to one event loop, and a
            # per-use session can be closed on release instead of leaking at shutdown.
            # Imported here: it imports asyncio, most of the package's import time.
            from ecs_protection._async import AsyncClient  # noqa: PLC0415

            client, own = AsyncClient(), True
        return await AsyncHold.take(
            client,
            ttl=self.ttl,
            lease_prefix=self.lease_prefix,
            wait_seconds=self.wait_seconds,
            require_protection=self.require_protection,
            owns_client=own,
        )

    # ---- with / async with ------------------------------------------------------------

    def __enter__(self) -> Lease:
        held = self.hold()
        try:
            _uses.set((*_uses.get(), (self, held)))
        except BaseException:
            held.release()
            raise
        return held.lease

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held = self._pop()
        assert isinstance(held, Hold)  # noqa: S101  (entered by __enter__)
        held.release()

    async def __aenter__(self) -> Lease:
        held = await self.ahold()
        try:
            _uses.set((*_uses.get(), (self, held)))
        except BaseException:
            await held.release()
            raise
        return held.lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        held = self._pop()
        assert isinstance(held, AsyncHold)  # noqa: S101  (entered by __aenter__)
        await held.release()

    def _pop(self) -> Hold | AsyncHold:
        uses = _uses.get()
        for index in range(len(uses) - 1, -1, -1):
            if uses[index][0] is self:
                _uses.set(uses[:index] + uses[index + 1 :])
                return uses[index][1]
        raise RuntimeError("busy() exited without being entered in this thread or task")

    # ---- decorator ----------------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        # Each call holds its own lease directly (not through the `with` stack), so
        # generators that interleave in one thread never release each other's lease.
        if inspect.isasyncgenfunction(fn):
            wrapper: Callable[..., Any] = self._async_generator(fn)
        elif inspect.isgeneratorfunction(fn):
            wrapper = self._generator(fn)
        elif inspect.iscoroutinefunction(fn):
            wrapper = self._coroutine(fn)
        else:
            wrapper = self._function(fn)
        return cast("F", functools.wraps(fn)(wrapper))

    def _function(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
            with self.hold():
                return fn(*args, **kwargs)

        return run

    def _coroutine(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def run(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
            async with await self.ahold():
                return await fn(*args, **kwargs)

        return run

    def _generator(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:  # noqa: ANN401
            # The lease is taken at the first next() and held until the generator
            # ends or is closed; `yield from` passes send() and throw() through.
            with self.hold():
                return (yield from fn(*args, **kwargs))

        return run

    def _async_generator(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def run(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:  # noqa: ANN401
            async with await self.ahold():
                inner = fn(*args, **kwargs)
                try:
                    value = await inner.__anext__()
                    while True:
                        try:
                            sent = yield value
                        except GeneratorExit:  # noqa: PERF203  (each step may be thrown into)
                            raise
                        except BaseException as exc:  # noqa: BLE001  (passed on to the generator)
                            value = await inner.athrow(exc)
                        else:
                            value = await inner.asend(sent)
                except StopAsyncIteration:
                    return
                finally:
                    await inner.aclose()

        return run


# `busy(...)` reads as what it does; it is the class itself, so that a use is one object.
busy = Busy
