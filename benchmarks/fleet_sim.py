"""A discrete-event simulation of a fleet of sidecars against one ECS account.

Every task runs the sidecar's real `Machine` and `LeaseTable` on a shared simulated clock;
nothing sleeps. One heap holds every future event (a task starting, its queue filling, a
job arriving or ending, a timer its machine asked for, an ECS attempt, an agent answer),
so the cost grows with events, never with simulated seconds times tasks.

The shell around each machine does what the sidecar's reconciler and web handlers do:
poll after an event, run the call it returns (through `fleet_ecs.Agent` against
`fleet_ecs.Ecs`, the answer parsed by the sidecar's own `parse_answer`), wake it at the
time it asked for, and answer a job's `POST /busy` once protection is confirmed, or
unprotected once `wait_seconds` pass or the machine says no retry can come in time
(`gives_up_before`), as the web handler does.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

from sidecar.backends.agent import parse_answer
from sidecar.backends.base import BackendError
from sidecar.leases import LeaseTable
from sidecar.machine import Call, Machine, Op, Policy, Wait
from tests.fakes.fleet_ecs import Agent, Answer, Ecs, Retry

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

EPOCH = datetime(2026, 1, 5, tzinfo=UTC).timestamp()  # wall time at simulated second 0

# Event kinds; the heap holds (time, sequence, kind, task, argument).
START, QUEUE_FILLS, ARRIVE, JOB_END, WAKE, ATTEMPT, ANSWER, WAIT_OVER = range(8)


@dataclass(frozen=True)
class Workload:
    """What each task's app does: a queue worker, busy while its queue has work.

    The queue has work for a random time (exponential, mean `busy_minutes`), then is
    empty for a random time (exponential, mean `idle_minutes`). While it has work, each of
    the task's `slots` workers takes jobs back to back (exponential, mean `job_seconds`,
    picked up within `pickup_seconds`); once it is empty each finishes its current job.
    Every job holds its own lease and, like `busy()`, waits up to `wait_seconds` for
    protection, then starts anyway (counted as started unprotected).
    """

    busy_minutes: float = 120.0
    idle_minutes: float = 10.0
    job_seconds: float = 120.0
    slots: int = 2
    pickup_seconds: float = 2.0
    wait_seconds: float = 10.0


@dataclass(frozen=True)
class Account:
    """The ECS account's throttling bucket, shared by every task, and its error rate."""

    burst: float
    refill: float
    server_error_rate: float = 0.0


@dataclass(frozen=True)
class Scenario:
    name: str
    tasks: int
    seconds: float
    start_spread: float = 60.0  # every task starts within this, busy at once
    storm: tuple[float, float] | None = None  # [start, end): ECS throttles every call


@dataclass
class Tally:
    """ECS calls against the theoretical minimum over one window [start, end) of a run.

    The minimum comes from the leases alone: one enable per busy period (jobs closer than
    the idle grace share one), one renewal per whole expiry period of it (the least that
    keeps it covered, each call protecting for one period), one disable per idle gap
    longer than the grace. A busy period that began before the window is granted a call
    just before its start (the most favourable case), so the minimum stays a lower bound.
    """

    start: float
    end: float
    ecs_calls: int = 0
    task_seconds: float = 0.0
    enables: int = 0
    renewals: int = 0
    disables: int = 0

    def busy_period(self, begun: float, ended: float, period: float, disable_at: float | None):
        if self.start <= begun < self.end:
            self.enables += 1
        covered = min(ended, self.end) - max(begun, self.start)
        if covered > 0:
            self.renewals += int(covered // period)
        if disable_at is not None and self.start <= disable_at < self.end:
            self.disables += 1

    @property
    def task_hours(self) -> float:
        return self.task_seconds / 3600.0

    @property
    def minimum_calls(self) -> int:
        return self.enables + self.renewals + self.disables

    @property
    def calls_per_task_hour(self) -> float:
        return self.ecs_calls / self.task_hours if self.task_hours else 0.0

    @property
    def minimum_per_task_hour(self) -> float:
        return self.minimum_calls / self.task_hours if self.task_hours else 0.0

    @property
    def over_minimum(self) -> float | None:
        """Calls over the minimum, as a fraction of it."""
        minimum = self.minimum_calls
        return self.ecs_calls / minimum - 1.0 if minimum else None


@dataclass
class Result:
    """Everything measured in one scenario."""

    scenario: Scenario
    policy: Policy
    ecs_calls: int = 0
    throttled_calls: int = 0
    agent_calls: dict[str, int] = field(default_factory=dict)  # enable/renew/disable/get
    agent_answers: dict[int, int] = field(default_factory=dict)  # HTTP status -> count
    jobs: int = 0
    jobs_started_unprotected: int = 0
    # From the first job of a busy period waiting for protection to its confirmation.
    protect_delays: list[float] = field(default_factory=list)
    # Each task's first busy period; inf when it ended before protection was confirmed.
    first_protect_delays: list[float] = field(default_factory=list)
    busy_periods_never_protected: int = 0  # ended before protection was confirmed
    busy_unprotected_seconds: float = 0.0  # a lease held while ECS had no protection
    lapses: int = 0  # ECS protection expired while a lease was held
    calls: Tally = field(default_factory=lambda: Tally(0.0, 0.0))
    renewals_per_minute: list[int] = field(default_factory=list)
    ecs_per_second: list[int] = field(default_factory=list)
    throttled_per_second: list[int] = field(default_factory=list)
    storm_ecs_calls: int = 0
    unprotected_at_storm_end: int = 0
    # From the storm's end until every task then busy and unprotected is protected again
    # (or idle); 0 when none was, inf when one never was, None without a storm.
    reprotect_after_storm: float | None = None

    @property
    def seconds_to_protect_all(self) -> float:
        """The longest wait of a task's first busy period for protection (inf: never came)."""
        return max(self.first_protect_delays, default=0.0)

    @property
    def renewal_peak_to_mean(self) -> float | None:
        """The busiest minute's renewals over the mean per minute, from the first renewal on.

        Minutes before the first renewal are left out of the mean: until a task has been
        protected for most of a period nothing can be renewed, and counting those empty
        minutes would make any spread look worse than it is.
        """
        minutes = self.renewals_per_minute[: math.ceil(self.scenario.seconds / 60.0)]
        first = next((i for i, n in enumerate(minutes) if n), None)
        if first is None:
            return None
        window = minutes[first:]
        return max(window) / (sum(window) / len(window))


class _Clock:
    """The one clock every machine reads: simulated seconds; wall time is EPOCH + that."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now


class _Task:
    """One task: its sidecar's machine, its agent, its app's workers, and what ECS holds."""

    __slots__ = (
        "agent",
        "call",
        "ecs_expires",
        "first_period",
        "jitter",
        "job_rng",
        "last_accrue",
        "lease_seq",
        "machine",
        "period_end",
        "period_start",
        "queue_rng",
        "queue_until",
        "running",
        "slot_busy",
        "started",
        "unconfirmed_since",
        "waiters",
        "wake_at",
    )

    def __init__(self, index: int, seed: int, slots: int) -> None:
        # Separate streams, so that a change of policy leaves the workload as it was.
        base = seed * 1_000_003 + index * 7
        self.queue_rng = random.Random(base)
        self.job_rng = random.Random(base + 1)
        self.agent = Agent(str(index), random.Random(base + 2))
        self.jitter = random.Random(base + 3).random  # the machine's injected `rand`
        self.machine: Machine | None = None  # created when the task starts
        self.call: Call | None = None  # in flight
        self.wake_at: float | None = None  # the timer the machine asked for last
        self.queue_until = 0.0
        self.slot_busy = [False] * slots
        self.lease_seq = 0
        self.running = 0  # leases held
        # lease -> (arrival, job seconds, worker slot), for jobs waiting on `POST /busy`
        self.waiters: dict[str, tuple[float, float, int]] = {}
        self.ecs_expires: float | None = None  # ECS's truth, in simulated seconds
        self.started = 0.0
        self.last_accrue = 0.0
        self.unconfirmed_since: float | None = None  # busy, protection not yet confirmed
        self.first_period = True
        self.period_start: float | None = None  # the busy period the minimum counts
        self.period_end = 0.0


@contextmanager
def _quiet() -> Iterator[None]:
    """The machine logs every change: a fleet's worth would cost more than the simulation."""
    logger = logging.getLogger("sidecar")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class Simulation:
    def __init__(
        self, scenario: Scenario, policy: Policy, workload: Workload, account: Account, seed: int
    ) -> None:
        self.scenario = scenario
        self.policy = policy
        self.workload = workload
        self.seed = seed
        self.clock = _Clock()
        storms = (scenario.storm,) if scenario.storm else ()
        self.ecs = Ecs(account.burst, account.refill, storms, account.server_error_rate)
        self.ecs_rng = random.Random(seed * 31 + 5)
        self.heap: list[tuple[float, int, int, _Task, object]] = []
        self.seq = 0
        self.tasks = [_Task(i, seed, workload.slots) for i in range(scenario.tasks)]
        seconds = math.ceil(scenario.seconds) + 1
        self.result = Result(
            scenario,
            policy,
            calls=Tally(0.0, scenario.seconds),
            renewals_per_minute=[0] * (seconds // 60 + 1),
            ecs_per_second=[0] * (seconds + 1),
            throttled_per_second=[0] * (seconds + 1),
        )
        self._storm_pending: set[_Task] = set()  # busy and unprotected when the storm ended
        self._storm_end = scenario.storm[1] if scenario.storm else None  # until it passes
        self._storm_at_end = 0.0

    # ---- the loop -------------------------------------------------------------

    def push(self, at: float, kind: int, task: _Task, arg: object = None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, task, arg))

    def run(self) -> Result:
        start_rng = random.Random(self.seed * 17 + 3)
        for task in self.tasks:
            self.push(start_rng.uniform(0.0, self.scenario.start_spread), START, task)
        end = self.scenario.seconds
        heap = self.heap
        pop = heapq.heappop
        clock = self.clock
        handlers: tuple[Callable[[_Task, object], None], ...] = (
            self._start,
            self._queue_fills,
            self._arrive,
            self._job_end,
            self._wake,
            self._attempt,
            self._answer,
            self._wait_over,
        )
        with _quiet():
            while heap and heap[0][0] <= end:
                at, _, kind, task, arg = pop(heap)
                if self._storm_end is not None and at >= self._storm_end:
                    self._storm_over()
                clock.now = at
                handlers[kind](task, arg)
            clock.now = end
            if self._storm_end is not None:
                self._storm_over()
            self._finish(end)
        return self.result

    # ---- the app: queue, workers, jobs ---------------------------------------------

    def _start(self, task: _Task, _: object) -> None:
        now = self.clock.now
        task.machine = Machine(self.policy, self.clock, LeaseTable(10_000), rand=task.jitter)
        task.started = task.last_accrue = now
        self._queue_fills(task, None, first=True)

    def _queue_fills(self, task: _Task, _: object, *, first: bool = False) -> None:
        now = self.clock.now
        rng = task.queue_rng
        task.queue_until = now + rng.expovariate(1.0 / (60.0 * self.workload.busy_minutes))
        empty_for = rng.expovariate(1.0 / (60.0 * self.workload.idle_minutes))
        self.push(task.queue_until + empty_for, QUEUE_FILLS, task)
        for slot, busy in enumerate(task.slot_busy):
            if busy:
                continue  # still on a job from before: it takes the next one when done
            task.slot_busy[slot] = True
            if first and slot == 0:
                self._arrive(task, slot)  # busy at once: the first job comes with the task
            else:
                pickup = task.job_rng.uniform(0.0, self.workload.pickup_seconds)
                self.push(now + pickup, ARRIVE, task, slot)

    def _arrive(self, task: _Task, arg: object) -> None:
        """A worker takes a job: `POST /busy` with a lease of its own, then maybe a wait."""
        slot = cast("int", arg)
        machine = self._machine(task)
        now = self.clock.now
        task.lease_seq += 1
        lease = f"{slot}-{task.lease_seq}"
        seconds = task.job_rng.expovariate(1.0 / self.workload.job_seconds)
        if task.running == 0:
            self._busy_edge(task, now)
        task.running += 1
        machine.acquire(lease, None)
        self.result.jobs += 1
        if machine.protected():
            self.push(now + seconds, JOB_END, task, (slot, lease))
            return
        if task.unconfirmed_since is None:
            task.unconfirmed_since = now
        task.waiters[lease] = (now, seconds, slot)
        self.push(now + self.workload.wait_seconds, WAIT_OVER, task, lease)
        self._settle(task)
        self._serve_waiters(task)

    def _job_end(self, task: _Task, arg: object) -> None:
        slot, lease = cast("tuple[int, str]", arg)
        machine = self._machine(task)
        now = self.clock.now
        task.running -= 1
        if task.running == 0:
            self._accrue(task, now)
            task.period_end = now
            self._storm_pending.discard(task)  # idle: nothing left to protect
            if task.unconfirmed_since is not None:
                self.result.busy_periods_never_protected += 1
                task.unconfirmed_since = None
                if task.first_period:
                    self.result.first_protect_delays.append(math.inf)
                    task.first_period = False
        machine.release(lease)
        if not machine.leases:
            self._settle(task)  # the idle grace starts
        if now < task.queue_until:
            pickup = task.job_rng.uniform(0.0, self.workload.pickup_seconds)
            self.push(now + pickup, ARRIVE, task, slot)
        else:
            task.slot_busy[slot] = False

    def _wait_over(self, task: _Task, arg: object) -> None:
        lease = cast("str", arg)
        if lease in task.waiters:
            self._start_job(task, lease, protected=False)

    def _start_job(self, task: _Task, lease: str, *, protected: bool) -> None:
        _, seconds, slot = task.waiters.pop(lease)
        if not protected:
            self.result.jobs_started_unprotected += 1
        self.push(self.clock.now + seconds, JOB_END, task, (slot, lease))

    def _serve_waiters(self, task: _Task) -> None:
        """What `POST /busy` answers each waiting job, after every change of state."""
        machine = self._machine(task)
        now = self.clock.now
        if machine.protected():
            if task.unconfirmed_since is not None:
                delay = now - task.unconfirmed_since
                self.result.protect_delays.append(delay)
                if task.first_period:
                    self.result.first_protect_delays.append(delay)
                task.unconfirmed_since = None
            task.first_period = False
            for lease in list(task.waiters):
                self._start_job(task, lease, protected=True)
            self._reprotected(task)
            return
        for lease, (arrival, _, _) in list(task.waiters.items()):
            if machine.gives_up_before(arrival + self.workload.wait_seconds):
                self._start_job(task, lease, protected=False)

    # ---- the sidecar's shell ----------------------------------------------------

    @staticmethod
    def _machine(task: _Task) -> Machine:
        if task.machine is None:
            raise RuntimeError("an event for a task that has not started")
        return task.machine

    def _settle(self, task: _Task) -> None:
        """Poll until the machine waits: what the reconciler's loop does after each event."""
        machine = self._machine(task)
        while True:
            action = machine.poll()
            if isinstance(action, Call):
                self._call(task, action)
                continue
            if isinstance(action, Wait):
                until = action.until
                if until is not None and until != task.wake_at:
                    self.push(until, WAKE, task, until)
                task.wake_at = until
            return

    def _wake(self, task: _Task, at: object) -> None:
        if at != task.wake_at:
            return  # superseded by a later decision
        task.wake_at = None
        self._settle(task)
        self._serve_waiters(task)

    def _call(self, task: _Task, call: Call) -> None:
        now = self.clock.now
        kind = call.op.value
        machine = self._machine(task)
        if call.op is Op.ENABLE and machine.belief.on:
            kind = "renew"
            if not machine.retry.failures:  # a renewal falling due, not a retry of one
                self.result.renewals_per_minute[int(now // 60)] += 1
        calls = self.result.agent_calls
        calls[kind] = calls.get(kind, 0) + 1
        task.call = call
        self._agent_step(task, task.agent.begin(now))

    def _agent_step(self, task: _Task, step: Answer | Retry) -> None:
        if isinstance(step, Retry):
            self.push(step.at, ATTEMPT, task)
        else:
            self.push(step.at, ANSWER, task, step)

    def _attempt(self, task: _Task, _: object) -> None:
        """One ECS call: throttled by the account or served, and applied when it arrives."""
        now = self.clock.now
        result = self.result
        second = int(now)
        result.ecs_per_second[second] += 1
        if self.ecs.storm_at(now):
            result.storm_ecs_calls += 1
        outcome = self.ecs.admit(now, self.ecs_rng)
        body = b""
        if outcome.throttled:
            result.throttled_per_second[second] += 1
        elif not outcome.server_error:
            call = self._in_flight(task)
            if call.op is not Op.GET:
                self._accrue(task, now)
                minutes = call.expires_minutes
                task.ecs_expires = now + minutes * 60.0 if call.op is Op.ENABLE else None
            expires = task.ecs_expires
            protected = expires is not None and expires > now
            body = task.agent.protection_body(EPOCH + expires if protected else None)
        self._agent_step(task, task.agent.after_attempt(now, outcome, body))

    def _answer(self, task: _Task, arg: object) -> None:
        answer = cast("Answer", arg)
        call = self._in_flight(task)
        task.call = None
        answers = self.result.agent_answers
        answers[answer.status] = answers.get(answer.status, 0) + 1
        machine = self._machine(task)
        try:
            protection = parse_answer(answer.status, answer.body)
        except BackendError as error:
            machine.on_failure(call, error)
        else:
            machine.on_success(call, protection)
        self._settle(task)
        self._serve_waiters(task)

    @staticmethod
    def _in_flight(task: _Task) -> Call:
        if task.call is None:
            raise RuntimeError("an ECS answer for a task with no call in flight")
        return task.call

    # ---- measuring ------------------------------------------------------------

    def _busy_edge(self, task: _Task, now: float) -> None:
        """A lease is taken with none held: the idle gap ends, maybe a busy period begins."""
        self._accrue(task, now)
        if task.period_start is None:
            task.period_start = now
        elif now - task.period_end > self.policy.idle_grace:
            self._close_period(task, task.period_end, idle_after=True)
            task.period_start = now

    def _close_period(self, task: _Task, end: float, *, idle_after: bool) -> None:
        begun = task.period_start if task.period_start is not None else end
        disable_at = end + self.policy.idle_grace if idle_after else None
        self.result.calls.busy_period(begun, end, self.policy.period, disable_at)

    def _accrue(self, task: _Task, now: float) -> None:
        """Add the time a lease was held without ECS protection since the last look."""
        if task.running and now > task.last_accrue:
            expires = task.ecs_expires
            if expires is None:
                self.result.busy_unprotected_seconds += now - task.last_accrue
            elif expires < now:
                self.result.busy_unprotected_seconds += now - max(expires, task.last_accrue)
                if expires > task.last_accrue:
                    self.result.lapses += 1
        task.last_accrue = now

    def _storm_over(self) -> None:
        """Note every busy task without confirmed protection as the storm ends."""
        end = self._storm_end
        if end is None:
            return
        self._storm_end = None
        self.clock.now = end
        self._storm_pending = {
            task
            for task in self.tasks
            if task.machine is not None and task.running and not task.machine.protected()
        }
        self.result.unprotected_at_storm_end = len(self._storm_pending)
        self.result.reprotect_after_storm = 0.0
        self._storm_at_end = end

    def _reprotected(self, task: _Task) -> None:
        if task in self._storm_pending:
            self._storm_pending.discard(task)
            delay = self.clock.now - self._storm_at_end
            worst = self.result.reprotect_after_storm or 0.0
            self.result.reprotect_after_storm = max(worst, delay)

    def _finish(self, end: float) -> None:
        result = self.result
        result.ecs_calls = self.ecs.calls
        result.throttled_calls = self.ecs.throttled
        tally = result.calls
        tally.ecs_calls = sum(result.ecs_per_second[int(tally.start) : math.ceil(end)])
        for task in self.tasks:
            if task.machine is None:
                continue
            tally.task_seconds += max(0.0, end - max(task.started, tally.start))
            self._accrue(task, end)
            if task.period_start is None:
                continue
            if task.running:
                self._close_period(task, end, idle_after=False)
            else:
                idle_after = end - task.period_end > self.policy.idle_grace
                self._close_period(task, task.period_end, idle_after=idle_after)
        if self._storm_pending:
            result.reprotect_after_storm = math.inf  # some never got protection back


def simulate(
    scenario: Scenario,
    account: Account,
    policy: Policy | None = None,
    workload: Workload | None = None,
    seed: int = 1,
) -> Result:
    """Run one scenario; the same seed gives the same workload whatever the policy."""
    return Simulation(scenario, policy or Policy(), workload or Workload(), account, seed).run()
