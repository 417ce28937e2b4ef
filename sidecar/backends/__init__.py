"""Ways to switch scale-in protection: the ECS agent, the ECS API, or a local simulation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.config import ConfigError

if TYPE_CHECKING:
    from sidecar.backends.base import Backend
    from sidecar.clock import Clock
    from sidecar.config import Config


def create_backend(config: Config, clock: Clock) -> Backend:
    """The backend the configuration names; imports only what that backend needs."""
    if config.backend == "agent":
        from sidecar.backends.agent import AgentBackend  # noqa: PLC0415

        assert config.agent_uri is not None  # noqa: S101  (Config guarantees it)
        return AgentBackend(config.agent_uri)
    if config.backend == "local":
        from sidecar.backends.local import LocalBackend  # noqa: PLC0415

        return LocalBackend(clock)
    raise ConfigError(
        [
            (
                "TASK_PROTECTION_BACKEND=api: the ECS API backend is not available in this "
                "version; use 'agent' (the default on ECS) or 'local'"
            ),
        ]
    )
