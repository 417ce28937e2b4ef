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
    try:
        from sidecar.backends.api import ApiBackend  # noqa: PLC0415
    except ImportError as exc:
        message = (
            f"TASK_PROTECTION_BACKEND=api needs boto3 ({exc}): "
            "pip install 'ecs-protection-sidecar[api]'"
        )
        raise ConfigError([message]) from exc
    return ApiBackend(
        cluster=config.cluster, task_arn=config.task_arn, metadata_uri=config.metadata_uri
    )
