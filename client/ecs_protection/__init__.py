"""Keep an ECS task protected from scale-in while your code is busy.

    from ecs_protection import busy

    with busy(ttl=60):
        process(job)

The work happens in the ecs-protection sidecar; this package tells it when jobs start
and end. Without a sidecar (a laptop, CI) it warns once and carries on, unless
strict (TASK_PROTECTION_STRICT=1).

The worker-framework integrations are submodules, imported on first use, so that
`import ecs_protection` then `ecs_protection.celery.protect(app)` works and a plain
import pulls in no framework: `ecs_protection.celery`, `.rq`, `.dramatiq`. The async
client (`AsyncClient`, which imports asyncio and aiohttp) is imported on first use too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ecs_protection._busy import Busy, busy, default_client, hold
from ecs_protection._errors import (
    ConfigurationError,
    InvalidAnswerError,
    ProtectionError,
    ProtectionUnavailableError,
    SidecarError,
    SidecarUnavailableError,
    TaskDrainingError,
    TooManyLeasesError,
)
from ecs_protection._hold import AsyncHold, Hold
from ecs_protection._protocol import Lease, Settings, State
from ecs_protection._shutdown import GracefulShutdown
from ecs_protection._sync import Client

if TYPE_CHECKING:
    # Re-exported (as X), for type checkers; at run time __getattr__ imports them.
    from ecs_protection import celery as celery
    from ecs_protection import dramatiq as dramatiq
    from ecs_protection import rq as rq
    from ecs_protection._async import AsyncClient

__all__ = [
    "AsyncClient",
    "AsyncHold",
    "Busy",
    "Client",
    "ConfigurationError",
    "GracefulShutdown",
    "Hold",
    "InvalidAnswerError",
    "Lease",
    "ProtectionError",
    "ProtectionUnavailableError",
    "Settings",
    "SidecarError",
    "SidecarUnavailableError",
    "State",
    "TaskDrainingError",
    "TooManyLeasesError",
    "busy",
    "default_client",
    "hold",
]

# Not in __all__: `from ecs_protection import *` must not import a framework.
_INTEGRATIONS = ("celery", "dramatiq", "rq")


def __getattr__(name: str) -> Any:  # noqa: ANN401  (a module or a class, by name)
    # PEP 562: called only for names not found above.
    if name in _INTEGRATIONS:
        return importlib.import_module(f"{__name__}.{name}")  # binds it here too
    if name == "AsyncClient":
        from ecs_protection._async import AsyncClient  # noqa: PLC0415

        globals()[name] = AsyncClient
        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_INTEGRATIONS})
