"""A clock the test moves by hand: monotonic and wall time advance together."""

from __future__ import annotations


class FakeClock:
    def __init__(self, monotonic: float = 1000.0, wall: float = 1_800_000_000.0) -> None:
        self.mono = monotonic
        self.wall_time = wall

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_time

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_time += seconds

    def jump_wall(self, seconds: float) -> None:
        """Move only the wall clock, as NTP or an operator would."""
        self.wall_time += seconds
