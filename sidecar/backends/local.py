"""In-memory protection for a laptop: same answers and expiry as ECS, nothing protected."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from sidecar.backends.base import Protection

if TYPE_CHECKING:
    from sidecar.clock import Clock

log = logging.getLogger("sidecar.backends.local")


class LocalBackend:
    """Simulated protection that honours expiry, for running outside ECS."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._expires_wall: float | None = None
        log.warning(
            "backend 'local': protection is simulated in memory; nothing outside this "
            "process is protected (for laptops and CI; never used on ECS)",
            extra={"event": "simulated_backend"},
        )

    @property
    def name(self) -> Literal["local"]:
        return "local"

    async def get(self) -> Protection:
        return self._state()

    async def set(self, enabled: bool, expires_minutes: int) -> Protection:
        self._expires_wall = self._clock.wall() + expires_minutes * 60 if enabled else None
        return self._state()

    async def close(self) -> None:
        return None

    def _state(self) -> Protection:
        if self._expires_wall is None or self._expires_wall <= self._clock.wall():
            self._expires_wall = None
            return Protection(enabled=False, expires_at=None)
        return Protection(enabled=True, expires_at=datetime.fromtimestamp(self._expires_wall, UTC))
