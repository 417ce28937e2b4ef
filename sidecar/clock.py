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


# The range a timestamp is shown in: an answer from a lying backend must not break /state.
_FIRST = datetime(1970, 1, 1, tzinfo=UTC).timestamp()
_LAST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def rfc3339(wall: float | None) -> str | None:
    """Epoch seconds as an RFC 3339 UTC timestamp with milliseconds, or None."""
    if wall is None or wall != wall:  # noqa: PLR0124  (NaN is the only value unequal to itself)
        return None
    wall = min(max(wall, _FIRST), _LAST)
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
