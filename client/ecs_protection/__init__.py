"""Keep an ECS task protected from scale-in while your code is busy.

    from ecs_protection import busy

    with busy(ttl=60):
        process(job)

The work happens in the ecs-protection sidecar; this package tells it when jobs start
and end. Without a sidecar (a laptop, CI) it warns once and carries on, unless
strict (TASK_PROTECTION_STRICT=1).
"""

from ecs_protection._async import AsyncClient
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
