"""A clock the test moves by hand: monotonic and wall time advance together.

`sleep()` waits until the test has moved the clock past its deadline, so a fake server
sharing the clock (the fake agent's latencies and back-off) takes exactly the time the
test lets pass. With `auto_advance`, the clock jumps to the earliest sleeper by itself
(a millisecond after it started sleeping): for tests that want the fake's answers in
their order, not its timing.
"""

from __future__ import annotations

import asyncio


class FakeClock:
    def __init__(
        self,
        monotonic: float = 1000.0,
        wall: float = 1_800_000_000.0,
        *,
        auto_advance: bool = False,
    ) -> None:
        self.mono = monotonic
        self.wall_time = wall
        self.auto_advance = auto_advance
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._jump_pending = False

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_time

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_time += seconds
        due = [(at, fut) for at, fut in self._sleepers if at <= self.mono]
        self._sleepers = [(at, fut) for at, fut in self._sleepers if at > self.mono]
        for _, fut in due:
            if not fut.done():
                fut.set_result(None)

    def jump_wall(self, seconds: float) -> None:
        """Move only the wall clock, as NTP or an operator would."""
        self.wall_time += seconds

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._sleepers.append((self.mono + seconds, fut))
        if self.auto_advance and not self._jump_pending:
            # Sleeps started together (a call racing its deadline) all register before
            # the clock jumps, one sleeper's deadline at a time, so the earliest wins.
            self._jump_pending = True
            loop.call_later(0.001, self._jump_to_next)
        await fut

    def _jump_to_next(self) -> None:
        self._jump_pending = False
        wake = self.next_wake()
        if wake is None:
            return
        self.advance(max(0.0, wake - self.mono))
        if self.next_wake() is not None:
            self._jump_pending = True
            asyncio.get_running_loop().call_later(0.001, self._jump_to_next)

    @property
    def sleeping(self) -> int:
        """How many sleeps are waiting for the clock to move."""
        return sum(1 for _, fut in self._sleepers if not fut.done())

    def next_wake(self) -> float | None:
        """The earliest moment a sleeper waits for, if any."""
        waiting = [at for at, fut in self._sleepers if not fut.done()]
        return min(waiting) if waiting else None
