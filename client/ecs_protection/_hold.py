"""Hold and AsyncHold: one lease, taken now, held until release(), with heartbeats.

busy() is built on these; they are public for code that cannot put the job in one
block (a framework's before-task and after-task signals). The rules they keep:

- a lease that the sidecar may have created is released on every way out, also when
  taking it fails half-way (an interruption, a cancellation, an answer that is not
  the API's);
- release() is idempotent and thread-safe, stops the heartbeat before the release
  (so no heartbeat re-creates the lease), and never raises on a sidecar problem;
- in a forked child a hold taken by the parent is the parent's: release() there
  does nothing;
- after a stop signal handled by GracefulShutdown, no new hold is taken.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from ecs_protection._protocol import (
    DEFAULT_TTL_SECONDS,
    check_ttl,
    check_wait,
    may_hold_lease,
    new_lease_id,
)
from ecs_protection._shutdown import jobs, refuse_new_job

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine
    from types import TracebackType

    from ecs_protection._async import AsyncClient
    from ecs_protection._protocol import Lease
    from ecs_protection._sync import Client

log = logging.getLogger("ecs_protection")


def check_options(ttl: float | None, wait_seconds: float | None) -> None:
    """Refuse what the sidecar would refuse, or could not keep, before any request."""
    check_ttl(ttl)
    check_wait(wait_seconds)


def heartbeat_interval(ttl: float) -> float:
    """A third of the TTL: two heartbeats may fail before the lease expires."""
    return ttl / 3


class Hold:
    """A lease on the sidecar, held from construction until release().

    `hold.lease` is the sidecar's answer (`Lease`: `.lease`, `.protected`, ...). The
    lease has a TTL (60 s unless `ttl` says otherwise; `ttl=None`: none), refreshed by
    a heartbeat thread every ttl/3 seconds. Use
    `Client.hold()` or `ecs_protection.hold()`; `with client.hold(): ...` works too.
    """

    lease: Lease

    def __init__(
        self,
        client: Client,
        *,
        ttl: float | None = DEFAULT_TTL_SECONDS,
        lease_prefix: str = "job",
        wait_seconds: float | None = None,
        require_protection: bool = False,
    ) -> None:
        check_options(ttl, wait_seconds)
        refuse_new_job()
        self._client = client
        self._id = new_lease_id(lease_prefix)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._released = False
        self._heartbeat: _ThreadHeartbeat | None = None
        jobs.enter()  # counted from here, so a SIGTERM during the request waits for it
        try:
            self.lease = client.acquire(
                self._id, ttl, wait_seconds, require_protection=require_protection
            )
            log_unprotected(self.lease)
            if ttl is not None:
                self._heartbeat = _ThreadHeartbeat(client, self._id, ttl)
        except BaseException as exc:
            try:
                if may_hold_lease(exc):
                    _discard_quietly(client, self._id)
            finally:
                jobs.exit()
            raise

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Give the lease back (POST /idle). Idempotent; never raises on a sidecar problem."""
        if os.getpid() != self._pid:
            # A forked child's copy: the lease and its count are the parent's. Checked
            # before the lock, which a parent thread may have held at the fork.
            self._released = True
            return
        with self._lock:
            if self._released:
                return
            self._released = True
        try:
            if self._heartbeat is not None:
                self._heartbeat.stop()
            _release_quietly(self._client, self._id)
        finally:
            jobs.exit()

    def __enter__(self) -> Hold:  # noqa: PYI034  (typing.Self is 3.11+; the client supports 3.9)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<Hold {self._id} {state}>"


class AsyncHold:
    """The asyncio twin of Hold: `hold = await aclient.hold()`, `await hold.release()`.

    The heartbeat is a task on the running loop.
    """

    def __init__(
        self, client: AsyncClient, lease_id: str, lease: Lease, *, owns_client: bool
    ) -> None:
        self.lease = lease
        self._client = client
        self._id = lease_id
        self._owns_client = owns_client
        self._pid = os.getpid()
        self._released = False
        self._heartbeat: Callable[[], Awaitable[None]] | None = None

    @classmethod
    async def take(  # noqa: PLR0913  (all keyword options)
        cls,
        client: AsyncClient,
        *,
        ttl: float | None = DEFAULT_TTL_SECONDS,
        lease_prefix: str = "job",
        wait_seconds: float | None = None,
        require_protection: bool = False,
        owns_client: bool = False,
    ) -> AsyncHold:
        """Take a new lease; `owns_client`: close `client` when the hold ends."""
        check_options(ttl, wait_seconds)
        refuse_new_job()
        lease_id = new_lease_id(lease_prefix)
        jobs.enter()
        try:
            lease = await client.acquire(
                lease_id, ttl, wait_seconds, require_protection=require_protection
            )
            log_unprotected(lease)
            hold = cls(client, lease_id, lease, owns_client=owns_client)
            if ttl is not None:
                hold._heartbeat = _task_heartbeat(client, lease_id, ttl)
        except BaseException as exc:
            # Cancelled while waiting (asyncio.wait_for around a handler): the sidecar
            # may hold the lease already. The release is shielded from a second
            # cancellation, and the finally still counts the job as ended.
            try:
                await _shielded(
                    _end(client, lease_id, discard=may_hold_lease(exc), close=owns_client)
                )
            finally:
                jobs.exit()
            raise
        return hold

    @property
    def released(self) -> bool:
        return self._released

    async def release(self) -> None:
        """Give the lease back; idempotent; never raises on a sidecar problem."""
        if self._released:
            return
        self._released = True
        if os.getpid() != self._pid:
            return
        try:
            # One shielded step: a cancellation while the heartbeat stops must not skip
            # the release.
            await _shielded(self._stop_and_end())
        finally:
            jobs.exit()

    async def _stop_and_end(self) -> None:
        if self._heartbeat is not None:
            await self._heartbeat()
        await _end(self._client, self._id, release=True, close=self._owns_client)

    async def __aenter__(self) -> AsyncHold:  # noqa: PYI034  (typing.Self is 3.11+; the client supports 3.9)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<AsyncHold {self._id} {state}>"


def log_unprotected(lease: Lease) -> None:
    if not lease.protected and lease.reason != "sidecar unreachable":
        log.warning("job %s runs without confirmed task protection: %s", lease.lease, lease.reason)


def _release_quietly(client: Client, lease: str) -> None:
    # A failed release must not hide the job's own outcome; the lease's TTL (or the
    # operator's POST /release) is the backstop.
    try:
        client.release(lease)
    except Exception as exc:  # noqa: BLE001  (never raise from a release)
        log.warning("could not release lease %s: %s", lease, exc)


def _discard_quietly(client: Client, lease: str) -> None:
    # After a busy request that failed, which is what the caller hears about: a sidecar
    # that does not answer the release either is no news ("carrying on" would be wrong).
    try:
        client._discard(lease)  # noqa: SLF001  (the clients' own cleanup call)
    except Exception as exc:  # noqa: BLE001  (never raise from a release)
        log.warning("could not release lease %s: %s", lease, exc)


async def _end(
    client: AsyncClient, lease: str, *, release: bool = False, discard: bool = False, close: bool
) -> None:
    """Release (after the job) or discard (after a failed take) `lease`; close `client`."""
    try:
        if release:
            await client.release(lease)
        elif discard:
            await client._discard(lease)  # noqa: SLF001  (the clients' own cleanup call)
    except Exception as exc:  # noqa: BLE001  (never raise from a release)
        log.warning("could not release lease %s: %s", lease, exc)
    finally:
        if close:
            await client.close()


async def _shielded(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` to the end even if the awaiting task is cancelled (again) meanwhile."""
    import asyncio  # noqa: PLC0415  (async use only: most of the import time)

    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        # The task carries on; let it finish if the loop lets us, then re-raise.
        await asyncio.wait([task])
        raise


class _ThreadHeartbeat:
    """Refreshes a lease every ttl/3 seconds until stopped; survives any error."""

    def __init__(self, client: Client, lease: str, ttl: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat,
            args=(client, lease, ttl),
            name=f"ecs-protection-heartbeat-{lease}",
            daemon=True,
        )
        self._thread.start()

    def _beat(self, client: Client, lease: str, ttl: float) -> None:
        while not self._stop.wait(heartbeat_interval(ttl)):
            try:
                client.acquire(lease, ttl, 0)
            except Exception as exc:  # noqa: BLE001, PERF203  (one bad answer must not end it)
                log.warning("heartbeat for lease %s failed: %s", lease, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)


def _task_heartbeat(client: AsyncClient, lease: str, ttl: float) -> Callable[[], Awaitable[None]]:
    import asyncio  # noqa: PLC0415  (async use only: most of the import time)

    async def beat() -> None:
        while True:
            await asyncio.sleep(heartbeat_interval(ttl))
            try:
                await client.acquire(lease, ttl, 0)
            except Exception as exc:  # noqa: BLE001  (one bad answer must not end the heartbeat)
                log.warning("heartbeat for lease %s failed: %s", lease, exc)

    task = asyncio.get_running_loop().create_task(beat(), name=f"heartbeat-{lease}")

    async def halt() -> None:
        # Wait for the cancellation, so no heartbeat can re-create the lease after /idle.
        # asyncio.wait, unlike awaiting the task, does not swallow our own cancellation.
        task.cancel()
        await asyncio.wait([task])

    return halt
