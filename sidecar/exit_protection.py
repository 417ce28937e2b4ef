"""After a drain exit: switch protection off rather than leave it on with nobody busy.

When the sidecar alone stops (a `docker stop` on EC2, a crash loop of the app's
container), nothing else would switch protection off: ECS would keep the task
protected until the expiry, blocking scale-in and deployments for up to an hour. When
the whole task is stopping (DesiredStatus STOPPED), protection no longer matters and the
call is skipped.

One call, bounded as a whole (metadata read included) by EXIT_SWITCH_OFF_SECONDS: the
exit is never held for longer, whatever the agent does. A call that fails or runs out
of time is logged and the exit goes on with its code unchanged: the drain itself
succeeded, and protection then ends at its expiry as it would have before.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sidecar.backends.base import BackendError
from sidecar.metadata import fetch_task

if TYPE_CHECKING:
    from sidecar.service import ProtectionService

log = logging.getLogger("sidecar.exit")

# The whole of it: the agent answers in 0.1-4 s; ECS stops a task's containers after its
# stopTimeout (30 s by default), so a few seconds here cannot cost the exit.
EXIT_SWITCH_OFF_SECONDS = 5.0
# The metadata endpoint is local and quick: a slow one leaves the rest for the call.
METADATA_CHECK_SECONDS = 1.5


async def switch_off_before_exit(
    service: ProtectionService,
    metadata_uri: str | None,
    *,
    budget: float = EXIT_SWITCH_OFF_SECONDS,
) -> None:
    if not service.protection_left_on():
        return
    log.info(
        "switching protection off before exiting (at most %gs): no lease held",
        budget,
        extra={"event": "exit_switch_off"},
    )
    try:
        async with asyncio.timeout(budget):
            if metadata_uri and await _task_stopping(metadata_uri):
                log.info(
                    "protection left on: the task is stopping (DesiredStatus STOPPED)",
                    extra={"event": "exit_switch_off_skipped"},
                )
                return
            await service.switch_off()
    except TimeoutError:
        why = f"no answer within {budget:g}s"
    except BackendError as exc:
        why = f"{exc.code}: {exc.message}"
    except Exception as exc:  # noqa: BLE001  (a backend's bug must not turn the exit into a crash)
        why = f"{type(exc).__name__}: {exc}"[:300]
    else:
        log.info(
            "protection switched off before exiting: no lease held",
            extra={"event": "exit_switched_off"},
        )
        return
    log.warning(
        "could not switch protection off before exiting (%s): it stays on until it expires",
        why,
        extra={"event": "exit_switch_off_failed"},
    )


async def _task_stopping(metadata_uri: str) -> bool:
    """Whether the task metadata says the task is stopping; False when unreadable (then
    switching off is the safe side: a stopping task does not need protection either)."""
    try:
        async with asyncio.timeout(METADATA_CHECK_SECONDS):
            doc = await fetch_task(metadata_uri)
    except (TimeoutError, BackendError):
        return False
    return doc.get("DesiredStatus") == "STOPPED"
