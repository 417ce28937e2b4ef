"""Time, injected: a monotonic clock for every decision, the wall clock only for people."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    """The real clocks. `time.monotonic` is what asyncio's default loop uses as well."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


def rfc3339(wall: float | None) -> str | None:
    """Epoch seconds as an RFC 3339 UTC timestamp with milliseconds, or None."""
    if wall is None:
        return None
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
