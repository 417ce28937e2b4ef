"""Wiring: configuration in, a serving sidecar out, an exit code when it is done."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import resource
from typing import TYPE_CHECKING, Any

from sidecar.backends import create_backend
from sidecar.clock import Clock, SystemClock
from sidecar.drain import SignalDrain, SignalInbox
from sidecar.emf import EmfReporter
from sidecar.exit_protection import switch_off_before_exit
from sidecar.machine import EXIT_DRAINED, Exit, Policy
from sidecar.metadata import StopWatcher
from sidecar.server import Runner, listen, make_runner
from sidecar.service import ProtectionService
from sidecar.web import Api, build_app

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from aiohttp import web

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


async def serve(
    config: Config, clock: Clock | None = None, *, signals: SignalInbox | None = None
) -> int:
    """Serve until drained or forced to stop; return the process exit code.

    `signals`: handlers the caller installed early (the entry point does, before its
    imports); without them serve() installs its own and puts the previous ones back.
    """
    own_signals = signals is None
    if signals is None:
        signals = SignalInbox()
        signals.install()
    try:
        return await _serve(config, clock or SystemClock(), signals)
    finally:
        signals.detach()
        if own_signals:
            signals.uninstall()


async def _serve(config: Config, clock: Clock, signals: SignalInbox) -> int:
    _more_file_descriptors()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_LoopErrors().handle)
    service = build_service(config, clock)
    # From here a SIGTERM drains, one that came earlier included; never kills.
    drain = SignalDrain(service, config.drain_timeout_seconds)
    signals.attach(loop, drain.on_signal)
    try:
        # A short shutdown timeout (make_runner's): requests still waiting for
        # confirmation when the process exits are cut off rather than holding it back.
        runner = make_runner(build_app(Api(service, config.token)))
        await runner.setup()
        try:
            if not await _listen(runner, config, service):
                return EXIT_ERROR
            result = await _supervise(config, service, clock)
        finally:
            await runner.cleanup()
        if result.code == EXIT_DRAINED:
            result = await _switch_off_unless_forced(drain, service, config, result)
    finally:
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


async def _listen(runner: Runner, config: Config, service: ProtectionService) -> bool:
    try:
        await listen(runner, config.host, config.port)
    except OSError as exc:
        log.error(  # noqa: TRY400  (the message is the whole story)
            "cannot listen on %s:%d: %s",
            config.host,
            config.port,
            exc,
            extra={"event": "listen_failed"},
        )
        return False
    port = _bound_port(runner) or config.port
    log.info(
        "ecs-protection-sidecar listening on http://%s:%d with backend %s (%s)%s",
        config.host,
        port,
        service.backend_name,
        config.backend_reason,
        " (loopback only)" if config.host in ("127.0.0.1", "::1", "localhost") else "",
        extra={"event": "listening", "config": config.describe(), "port": port},
    )
    return True


async def _supervise(config: Config, service: ProtectionService, clock: Clock) -> Exit:
    """Run protection with stop detection and EMF beside it, all in one task group: a
    background task that fails ends the sidecar (exit 1) instead of leaving it half
    alive, and every task has ended when this returns."""
    failed: _BackgroundFailedError | None = None
    try:
        async with asyncio.TaskGroup() as group:
            background = [
                group.create_task(_owned(name, job), name=name)
                for name, job in _background_jobs(config, service, clock)
            ]
            result = await service.run()
            for task in background:
                task.cancel()
    except* _BackgroundFailedError as failures:
        first = failures.exceptions[0]
        assert isinstance(first, _BackgroundFailedError)  # noqa: S101  (except* narrows)
        failed = first
    if failed is not None:
        return Exit(EXIT_ERROR, str(failed))
    return result


async def _switch_off_unless_forced(
    drain: SignalDrain, service: ProtectionService, config: Config, drained: Exit
) -> Exit:
    """The switch-off before a drain exit; a second signal meanwhile exits at once."""
    switching = asyncio.ensure_future(switch_off_before_exit(service, config.metadata_uri))
    forced = drain.forced()
    either: list[asyncio.Future[Any]] = [switching, forced]
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not forced.done():
        return drained
    switching.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await switching
    return Exit(forced.result(), "a second signal during the switch-off before exiting")


class _BackgroundFailedError(Exception):
    """A background task ended by an exception (already logged with its traceback)."""


async def _owned(name: str, job: Coroutine[Any, Any, None]) -> None:
    try:
        await job
    except Exception as exc:
        log.exception(
            "%s failed (%s); the sidecar stops",
            name,
            type(exc).__name__,
            extra={"event": "background_failed", "task": name},
        )
        raise _BackgroundFailedError(f"{name} failed: {type(exc).__name__}: {exc}") from exc


def _background_jobs(
    config: Config, service: ProtectionService, clock: Clock
) -> list[tuple[str, Coroutine[Any, Any, None]]]:
    jobs: list[tuple[str, Coroutine[Any, Any, None]]] = []
    watcher = _stop_detection(config, service)
    if watcher is not None:
        jobs.append(("stop detection", watcher.run()))
    reporter = _emf(config, service, clock)
    if reporter is not None:
        jobs.append(("EMF", reporter.run()))
    return jobs


def _stop_detection(config: Config, service: ProtectionService) -> StopWatcher | None:
    if not config.metadata_uri or not config.metadata_poll_seconds:
        why = (
            "no ECS_CONTAINER_METADATA_URI_V4 (not on ECS)"
            if not config.metadata_uri
            else "TASK_PROTECTION_METADATA_POLL_SECONDS=0"
        )
        log.info("stop detection off: %s", why, extra={"event": "stop_detection_off"})
        return None
    return StopWatcher(config.metadata_uri, service, config.metadata_poll_seconds)


def _emf(config: Config, service: ProtectionService, clock: Clock) -> EmfReporter | None:
    if not config.emf_namespace:
        return None
    return EmfReporter(
        service,
        clock,
        namespace=config.emf_namespace,
        interval=config.emf_interval_seconds,
        metadata_uri=config.metadata_uri,
    )


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
