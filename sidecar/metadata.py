"""Task metadata endpoint v4: who this task is, and whether ECS is stopping it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from sidecar.backends.base import BackendError
from sidecar.bodies import json_object, read_capped

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sidecar.service import ProtectionService

log = logging.getLogger("sidecar.metadata")

METADATA_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class TaskIdentity:
    cluster: str
    task_arn: str

    @property
    def region(self) -> str | None:
        parts = self.task_arn.split(":")
        return parts[3] if len(parts) > 3 and parts[0] == "arn" else None


async def fetch_task(
    metadata_uri: str, session: aiohttp.ClientSession | None = None
) -> dict[str, Any]:
    """GET $ECS_CONTAINER_METADATA_URI_V4/task; errors are retryable BackendErrors."""
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        async with session.get(
            metadata_uri.rstrip("/") + "/task",
            timeout=aiohttp.ClientTimeout(total=METADATA_TIMEOUT_SECONDS),
        ) as response:
            if response.status != 200:
                raise BackendError(
                    "MetadataError",
                    f"task metadata answered HTTP {response.status}",
                    retryable=True,
                    status=response.status,
                )
            doc = json_object(await read_capped(response))
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise BackendError(
            "MetadataError",
            f"cannot read task metadata: {type(exc).__name__}: {exc}",
            retryable=True,
        ) from exc
    finally:
        if own:
            await session.close()
    if doc is None:
        raise BackendError("MetadataError", "task metadata is not a JSON object", retryable=True)
    return doc


async def task_identity(metadata_uri: str) -> TaskIdentity:
    doc = await fetch_task(metadata_uri)
    cluster, task_arn = doc.get("Cluster"), doc.get("TaskARN")
    if not isinstance(cluster, str) or not isinstance(task_arn, str):
        raise BackendError(
            "MetadataError", "task metadata lacks Cluster or TaskARN", retryable=True
        )
    return TaskIdentity(cluster, task_arn)


class StopWatcher:
    """Polls the task's DesiredStatus; at STOPPED the sidecar drains (without exiting).

    ECS stops the app before the sidecar (reverse dependsOn order), so the app may be
    told to stop before the sidecar is: this lets clients learn it from `draining`.
    """

    def __init__(
        self,
        metadata_uri: str,
        service: ProtectionService,
        interval: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._uri = metadata_uri
        self._service = service
        self._interval = interval
        self._sleep = sleep
        self._failing = False

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    if await self.check(session):
                        return
                except Exception:
                    # Stop detection must outlive any surprise: log it, poll again.
                    log.exception(
                        "stop detection: unexpected error", extra={"event": "metadata_unreadable"}
                    )
                await self._sleep(self._interval)

    async def check(self, session: aiohttp.ClientSession) -> bool:
        """One poll; True once the task is stopping (the watcher is then done)."""
        try:
            doc = await fetch_task(self._uri, session)
        except BackendError as exc:
            if not self._failing:  # one line per outage, not one per poll
                log.warning(
                    "stop detection: %s", exc.message, extra={"event": "metadata_unreadable"}
                )
            self._failing = True
            return False
        if self._failing:
            log.info(
                "stop detection: task metadata readable again",
                extra={"event": "metadata_readable"},
            )
        self._failing = False
        if doc.get("DesiredStatus") != "STOPPED":
            return False
        held = self._service.drain(exit_when_idle=False)
        log.warning(
            "the task is stopping (DesiredStatus STOPPED): draining, new leases are refused",
            extra={
                "event": "drain_started",
                "source": "stop_detection",
                "leases": held,
                "known_status": doc.get("KnownStatus"),
            },
        )
        return True
