"""Drives the pure Machine against a simulated ECS, moving a fake clock from timer to timer.

No asyncio and no sleeping: every call the machine asks for is answered at once (or
with a scripted error), and time only moves when the test says so.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sidecar.backends.base import BackendError, Protection, switched
from sidecar.leases import LeaseTable
from sidecar.machine import Action, Call, Exit, Machine, Op, Policy, Wait
from tests.fakes.clock import FakeClock

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass
class Made:
    """One backend call the machine made, and when (seconds since the harness started)."""

    at: float
    op: Op
    minutes: int


@dataclass
class Harness:
    policy: Policy = field(default_factory=Policy)
    capacity: int = 100
    clock: FakeClock = field(default_factory=FakeClock)
    # ECS's view of the task: protected until this wall time.
    ecs_expires_wall: float | None = None
    # Minutes ECS actually grants (None: what was asked).
    grant_minutes: int | None = None
    errors: deque[BackendError] = field(default_factory=deque)
    # Calls that reach ECS and take effect, but whose answer is lost (a timeout, a
    # dropped connection, a 504): the machine hears an uncertain failure.
    lose_answers: int = 0
    # A lost call whose change reaches ECS only this many seconds later (after the
    # machine may have made and confirmed other calls): set with lose_late().
    land_after: float | None = None
    landings: list[tuple[float, Op, int]] = field(default_factory=list)  # (at, op, minutes)
    landed: list[float] = field(default_factory=list)  # when late changes took effect
    failing: BackendError | None = None  # every call fails with this while set
    made: list[Made] = field(default_factory=list)
    rand: float = 1.0  # jitter factor source: 1.0 makes delays exact
    # Seconds added to the expiry ECS reports (not to the real one): a skewed answer.
    reported_skew: float = 0.0
    # Whether answers carry the server's own time (the agent's Date header), so the
    # machine can measure what is left without the local wall clock.
    server_clock: bool = True
    date_skew: float = 0.0  # seconds the server's Date is behind ECS's own clock

    def __post_init__(self) -> None:
        self.start = self.clock.monotonic()
        # ECS keeps true time: jumps of the local wall clock are skew, not time travel.
        self._ecs_offset = self.clock.wall() - self.clock.monotonic()
        self.machine = Machine(
            self.policy, self.clock, LeaseTable(self.capacity), rand=lambda: self.rand
        )

    @property
    def now(self) -> float:
        return self.clock.monotonic() - self.start

    def ops(self) -> list[Op]:
        return [m.op for m in self.made]

    def ecs_time(self) -> float:
        return self.clock.monotonic() + self._ecs_offset

    def ecs_protected(self) -> bool:
        return self.ecs_expires_wall is not None and self.ecs_expires_wall > self.ecs_time()

    def settle(self) -> Action:
        """Answer calls until the machine waits or exits."""
        for _ in range(100):  # a real settle makes a handful of calls
            action = self.machine.poll()
            if not isinstance(action, Call):
                return action
            self.answer(action)
        raise AssertionError("the machine keeps calling without waiting")

    def answer(self, call: Call) -> None:
        self.made.append(Made(self.now, call.op, call.expires_minutes))
        if self.errors or self.failing:
            error = self.errors.popleft() if self.errors else self.failing
            assert error is not None
            self.machine.on_failure(call, error)
            return
        if self.land_after is not None and call.op is not Op.GET:
            self.landings.append(
                (self.clock.monotonic() + self.land_after, call.op, call.expires_minutes)
            )
            self.land_after = None
            self.machine.on_failure(
                call, BackendError("RequestCanceled", "504", retryable=True, uncertain=True)
            )
            return
        self._apply(call.op, call.expires_minutes)
        if self.lose_answers:
            self.lose_answers -= 1
            self.machine.on_failure(
                call,
                BackendError("Timeout", "the answer was lost", retryable=True, uncertain=True),
            )
            return
        try:  # what every backend checks before answering a change
            answer = self.ecs_state()
            if call.op is not Op.GET:
                answer = switched(call.op is Op.ENABLE, answer)
        except BackendError as error:
            self.machine.on_failure(call, error)
            return
        self.machine.on_success(call, answer)

    def _apply(self, op: Op, minutes: int) -> None:
        """What a call does at ECS."""
        if op is Op.ENABLE:
            granted = minutes if self.grant_minutes is None else self.grant_minutes
            self.ecs_expires_wall = self.ecs_time() + granted * 60
        elif op is Op.DISABLE:
            self.ecs_expires_wall = None

    def lose_late(self, seconds: float) -> None:
        """The next change call is answered 504, and lands at ECS `seconds` later."""
        self.land_after = seconds

    def _land(self) -> None:
        due = [landing for landing in self.landings if landing[0] <= self.clock.monotonic()]
        self.landings = [landing for landing in self.landings if landing not in due]
        for at, op, minutes in sorted(due):
            self._apply(op, minutes)
            self.landed.append(at - self.start)

    def ecs_state(self) -> Protection:
        if not self.ecs_protected():
            return Protection(False, None)
        assert self.ecs_expires_wall is not None
        reported = self.ecs_expires_wall + self.reported_skew
        remaining = reported - self.ecs_time() + self.date_skew if self.server_clock else None
        return Protection(True, datetime.fromtimestamp(reported, UTC), remaining)

    def run_for(self, seconds: float, *, check: bool | Callable[[], None] = False) -> Action:
        """Let `seconds` pass, waking the machine at each timer it asked for.

        With check=True, assert at every wake-up that ECS has the task protected
        whenever a lease is held (the core promise); a callable is called instead.
        """

        def verify() -> None:
            # Called the instant a timer fires, before the machine acts on it, too: a
            # lapse that the wake-up itself would repair is still caught.
            if callable(check):
                check()
            elif check and self.machine.leases:
                assert self.ecs_protected(), f"unprotected while busy at t={self.now}"

        end = self.clock.monotonic() + seconds
        stalled = 0
        while True:
            action = self.settle()
            verify()
            if isinstance(action, Exit):
                return action
            assert isinstance(action, Wait)
            # Late landings happen on ECS's side, whenever they are due.
            until = min(
                [t for t in (action.until, *(due for due, _, _ in self.landings)) if t is not None],
                default=None,
            )
            if until is None or until > end:
                self.clock.advance(end - self.clock.monotonic())
                self._land()
                verify()
                return self.settle()
            step = max(0.0, until - self.clock.monotonic())
            stalled = stalled + 1 if step == 0 else 0
            if stalled > 1000:
                raise AssertionError(f"the machine keeps asking to be woken now, t={self.now}")
            self.clock.advance(step)
            self._land()
            verify()

    def busy(self, lease: str = "job", ttl: float | None = None) -> Action:
        self.machine.acquire(lease, ttl)
        return self.settle()

    def idle(self, lease: str = "job") -> Action:
        self.machine.release(lease)
        return self.settle()
