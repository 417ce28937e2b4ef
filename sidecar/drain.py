"""SIGTERM and SIGINT: the first starts a drain, the second exits at once."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.reconciler import Reconciler

log = logging.getLogger("sidecar.drain")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalDrain:
    def __init__(self, reconciler: Reconciler, timeout: float) -> None:
        self._reconciler = reconciler
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
        machine = self._reconciler.machine
        self._received += 1
        if self._received > 1:
            held = len(machine.leases)
            log.warning(
                "%s again: exiting now with %d lease(s) held",
                name,
                held,
                extra={"signal": name, "leases": held},
            )
            self._reconciler.force_exit(128 + signum, f"second {name}")
            return
        log.warning(
            "%s: draining; new leases are refused, exiting when the last of %d lease(s) "
            "is released or after %gs",
            name,
            len(machine.leases),
            self._timeout,
            extra={"signal": name, "leases": len(machine.leases)},
        )
        machine.start_drain(self._timeout)
        self._reconciler.wake()
