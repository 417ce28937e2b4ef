"""SIGTERM and SIGINT: the first starts a drain, the second exits at once."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.service import ProtectionService

log = logging.getLogger("sidecar.drain")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalDrain:
    def __init__(self, service: ProtectionService, timeout: float) -> None:
        self._service = service
        self._timeout = timeout
        self._received = 0

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self.on_signal, sig)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        self._received += 1
        if self._received > 1:
            held = self._service.lease_count
            log.warning(
                "%s again: exiting now with %d lease(s) held",
                name,
                held,
                extra={"event": "drain_forced", "signal": name, "leases": held},
            )
            self._service.force_exit(128 + signum, f"second {name}")
            return
        held = self._service.drain(exit_when_idle=True, timeout=self._timeout)
        log.warning(
            "%s: draining; new leases are refused, exiting when the last of %d lease(s) "
            "is released or after %gs",
            name,
            held,
            self._timeout,
            extra={"event": "drain_started", "source": "signal", "signal": name, "leases": held},
        )
