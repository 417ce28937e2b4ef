"""Wiring: configuration in, a serving sidecar out, an exit code when it is done."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import resource
from typing import TYPE_CHECKING

from aiohttp import web

from sidecar.backends import create_backend
from sidecar.clock import Clock, SystemClock
from sidecar.drain import SignalDrain
from sidecar.emf import EmfReporter
from sidecar.machine import Policy
from sidecar.metadata import StopWatcher
from sidecar.server import make_runner
from sidecar.service import ProtectionService
from sidecar.web import Api, build_app

if TYPE_CHECKING:
    from sidecar.config import Config

log = logging.getLogger("sidecar")

EXIT_ERROR = 1


def build_service(config: Config, clock: Clock) -> ProtectionService:
    policy = Policy(
        expires_minutes=config.expires_minutes,
        idle_grace=config.idle_grace_seconds,
        max_protected=config.max_protected_seconds,
    )
    return ProtectionService(
        policy, create_backend(config, clock), clock, max_leases=config.max_leases
    )


async def serve(config: Config, clock: Clock | None = None) -> int:
    """Serve until drained or forced to stop; return the process exit code."""
    clock = clock or SystemClock()
    _more_file_descriptors()
    asyncio.get_running_loop().set_exception_handler(_LoopErrors().handle)
    service = build_service(config, clock)
    # A short shutdown timeout (make_runner's): requests still waiting for confirmation
    # when the process exits are cut off rather than holding the exit back.
    runner = make_runner(build_app(Api(service, config.token)))
    await runner.setup()
    drain = SignalDrain(service, config.drain_timeout_seconds)
    drain.install()  # before listening: a SIGTERM from now on drains, never kills
    try:
        site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            log.error(  # noqa: TRY400  (the message is the whole story)
                "cannot listen on %s:%d: %s",
                config.host,
                config.port,
                exc,
                extra={"event": "listen_failed"},
            )
            return EXIT_ERROR
        port = _bound_port(runner) or config.port
        watcher = _start_stop_detection(config, service)
        emf = _start_emf(config, service, clock)
        log.info(
            "ecs-protection-sidecar listening on http://%s:%d with backend %s (%s)%s",
            config.host,
            port,
            service.backend_name,
            config.backend_reason,
            " (loopback only)" if config.host in ("127.0.0.1", "::1", "localhost") else "",
            extra={"event": "listening", "config": config.describe(), "port": port},
        )
        try:
            result = await service.run()
        finally:
            for task in (watcher, emf):
                if task is not None:
                    task.cancel()
        drain.uninstall()
    finally:
        await runner.cleanup()
        await service.close()
    log_at = logging.INFO if result.code == 0 else logging.ERROR
    log.log(
        log_at,
        "exiting with code %d: %s",
        result.code,
        result.reason,
        extra={"event": "exiting", "exit_code": result.code},
    )
    return result.code


def _start_stop_detection(config: Config, service: ProtectionService) -> asyncio.Task[None] | None:
    if not config.metadata_uri or not config.metadata_poll_seconds:
        why = (
            "no ECS_CONTAINER_METADATA_URI_V4 (not on ECS)"
            if not config.metadata_uri
            else "TASK_PROTECTION_METADATA_POLL_SECONDS=0"
        )
        log.info("stop detection off: %s", why, extra={"event": "stop_detection_off"})
        return None
    watcher = StopWatcher(config.metadata_uri, service, config.metadata_poll_seconds)
    return asyncio.create_task(watcher.run(), name="stop-detection")


def _start_emf(
    config: Config, service: ProtectionService, clock: Clock
) -> asyncio.Task[None] | None:
    if not config.emf_namespace:
        return None
    reporter = EmfReporter(
        service,
        clock,
        namespace=config.emf_namespace,
        interval=config.emf_interval_seconds,
        metadata_uri=config.metadata_uri,
    )
    return asyncio.create_task(reporter.run(), name="emf")


def _more_file_descriptors() -> None:
    """Raise the soft limit on open files to the hard one: every client is a socket."""
    with contextlib.suppress(ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _LoopErrors:
    """The event loop's own errors: accept() failing for want of file descriptors repeats
    for as long as clients keep connecting; one line per 10 s says it, not thousands."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        message = str(context.get("message", "event loop error"))
        if "out of system resource" not in message:
            loop.default_exception_handler(context)
            return
        now = loop.time()
        if now - self._last.get(message, -math.inf) >= 10.0:
            self._last[message] = now
            log.warning(
                "%s: %s (too many open connections?)",
                message,
                context.get("exception"),
                extra={"event": "connection_error"},
            )


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None
