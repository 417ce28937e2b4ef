"""busy(): one object that is a context manager (sync and async) and a decorator."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from ecs_protection._async import AsyncClient
from ecs_protection._errors import ProtectionError, ProtectionUnavailableError
from ecs_protection._protocol import Lease, new_lease_id
from ecs_protection._shutdown import jobs
from ecs_protection._sync import Client

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger("ecs_protection")

P = ParamSpec("P")
R = TypeVar("R")

_default_client: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The process-wide sync client, configured from the environment on first use."""
    global _default_client  # noqa: PLW0603  (one keep-alive session per process)
    with _default_lock:
        if _default_client is None:
            _default_client = Client()
        return _default_client


@dataclass
class _Use:
    owner: Busy
    lease: str
    stop: Callable[[], None] | None = None
    astop: Callable[[], Awaitable[None]] | None = None
    client: Client | None = None
    async_client: AsyncClient | None = None
    own_async_client: bool = False


# The uses in progress in this thread or task, innermost last: one Busy object can be
# entered concurrently by many threads and tasks, each with its own lease.
_uses: contextvars.ContextVar[tuple[_Use, ...]] = contextvars.ContextVar("busy_uses", default=())


class Busy:
    """Hold a lease on the sidecar (the task stays protected) while a block or function runs.

    `with busy():`, `async with busy():`, `@busy()` on a def or an async def. The value
    bound by `as` is the sidecar's answer (`Lease`: `.lease`, `.protected`, ...).

    Each use takes a new unique lease and releases it on exit, even when the body raises.
    With `ttl`, the lease expires unless refreshed, and a heartbeat (a thread, or a task
    in async code) refreshes it every ttl/3 seconds while the block runs.
    """

    def __init__(  # noqa: PLR0913  (all keyword options)
        self,
        *,
        ttl: float | None = None,
        lease_prefix: str = "job",
        wait_seconds: float | None = None,
        require_protection: bool = False,
        client: Client | None = None,
        async_client: AsyncClient | None = None,
    ) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be positive")
        self.ttl = ttl
        self.lease_prefix = lease_prefix
        self.wait_seconds = wait_seconds
        self.require_protection = require_protection
        self._client = client
        self._async_client = async_client

    # ---- sync -----------------------------------------------------------------

    def __enter__(self) -> Lease:
        client = self._client or default_client()
        lease_id = new_lease_id(self.lease_prefix)
        jobs.enter()  # counted from here, so a SIGTERM during the request waits for the job
        try:
            lease = client.acquire(
                lease_id, self.ttl, self.wait_seconds, require_protection=self.require_protection
            )
        except ProtectionUnavailableError:
            _quietly(client.release, lease_id)
            jobs.exit()
            raise
        except BaseException:
            jobs.exit()
            raise
        _log_unprotected(lease)
        use = _Use(self, lease_id, client=client)
        if self.ttl is not None:
            use.stop = _thread_heartbeat(client, lease_id, self.ttl)
        _uses.set((*_uses.get(), use))
        return lease

    def __exit__(self, *_exc: object) -> None:
        use = self._pop()
        try:
            if use.stop is not None:
                use.stop()
            if use.client is not None:
                _quietly(use.client.release, use.lease)
        finally:
            jobs.exit()

    # ---- async ------------------------------------------------------------------

    async def __aenter__(self) -> Lease:
        client, own = self._async_client, False
        if client is None:
            # A session per use: aiohttp sessions belong to one event loop, and a
            # per-use session can be closed on exit instead of leaking at shutdown.
            client, own = AsyncClient(), True
        lease_id = new_lease_id(self.lease_prefix)
        jobs.enter()
        try:
            lease = await client.acquire(
                lease_id, self.ttl, self.wait_seconds, require_protection=self.require_protection
            )
        except BaseException as exc:
            if isinstance(exc, ProtectionUnavailableError):
                await _aquietly(client.release, lease_id)
            if own:
                await client.close()
            jobs.exit()
            raise
        _log_unprotected(lease)
        use = _Use(self, lease_id, async_client=client, own_async_client=own)
        if self.ttl is not None:
            use.astop = _task_heartbeat(client, lease_id, self.ttl)
        _uses.set((*_uses.get(), use))
        return lease

    async def __aexit__(self, *_exc: object) -> None:
        use = self._pop()
        try:
            if use.astop is not None:
                await use.astop()
            if use.async_client is not None:
                await _aquietly(use.async_client.release, use.lease)
                if use.own_async_client:
                    await use.async_client.close()
        finally:
            jobs.exit()

    # ---- decorator --------------------------------------------------------------

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:  # noqa: ANN401
                async with self:
                    return await fn(*args, **kwargs)

            return cast("Callable[P, R]", run_async)

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with self:
                return fn(*args, **kwargs)

        return run

    def _pop(self) -> _Use:
        uses = _uses.get()
        for index in range(len(uses) - 1, -1, -1):
            if uses[index].owner is self:
                _uses.set(uses[:index] + uses[index + 1 :])
                return uses[index]
        raise RuntimeError("busy() exited without being entered in this thread or task")


# `busy(...)` reads as what it does; it is the class itself, so that a use is one object.
busy = Busy


def _log_unprotected(lease: Lease) -> None:
    if not lease.protected and lease.reason != "sidecar unreachable":
        log.warning("job %s runs without confirmed task protection: %s", lease.lease, lease.reason)


def _quietly(release: Callable[[str], object], lease: str) -> None:
    # A failed release must not hide the job's own outcome; the lease's TTL (or the
    # operator's POST /release) is the backstop.
    try:
        release(lease)
    except ProtectionError as exc:
        log.warning("could not release lease %s: %s", lease, exc)


async def _aquietly(release: Callable[[str], Any], lease: str) -> None:
    try:
        await release(lease)
    except ProtectionError as exc:
        log.warning("could not release lease %s: %s", lease, exc)


def _heartbeat_interval(ttl: float) -> float:
    return ttl / 3


def _thread_heartbeat(client: Client, lease: str, ttl: float) -> Callable[[], None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(_heartbeat_interval(ttl)):
            try:
                client.acquire(lease, ttl, 0)
            except ProtectionError as exc:
                log.warning("heartbeat for lease %s failed: %s", lease, exc)

    thread = threading.Thread(target=beat, name=f"ecs-protection-heartbeat-{lease}", daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        if thread is not threading.current_thread():
            thread.join(timeout=30)

    return halt


def _task_heartbeat(client: AsyncClient, lease: str, ttl: float) -> Callable[[], Awaitable[None]]:
    async def beat() -> None:
        while True:
            await asyncio.sleep(_heartbeat_interval(ttl))
            try:
                await client.acquire(lease, ttl, 0)
            except ProtectionError as exc:
                log.warning("heartbeat for lease %s failed: %s", lease, exc)

    task = asyncio.get_running_loop().create_task(beat(), name=f"heartbeat-{lease}")

    async def halt() -> None:
        # Wait for the cancellation, so no heartbeat can re-create the lease after /idle.
        # asyncio.wait, unlike awaiting the task, does not swallow our own cancellation.
        task.cancel()
        await asyncio.wait([task])

    return halt
