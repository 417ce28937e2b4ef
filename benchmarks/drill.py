"""Scale-in drill: an ECS service simulated on loopback, scaled in, out and redeployed
while jobs run, in three modes with the same seed and workload.

    python -m benchmarks.drill [--jobs 2000] [--modes none,naive,sidecar] [--plot docs/drill.png]

- ECS control plane and job queue: one ThreadedMotoServer (ECS with the task-protection
  extension, SQS).
- Each task: an endpoint on a fake ECS agent that relays to moto's UpdateTaskProtection
  as the real agent relays to ECS, a sidecar process (sidecar mode), and a worker process
  (benchmarks/drill_worker.py) that polls SQS, works for a random time, deletes.
- A scaler that, while producers add jobs in waves, scales in (only tasks moto reports
  unprotected, stopped as ECS does: SIGTERM to the app, then the sidecar, SIGKILL after
  stopTimeout), scales out, and deploys (new tasks first, then every old one as soon
  as it is unprotected).

Per mode: jobs completed, jobs interrupted mid-run (started by a worker that died before
finishing), UpdateTaskProtection calls, calls per 1,000 jobs against the theoretical
minimum, and how long scaling waited on protected tasks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from tests.aws import CREDENTIALS, REGION, Cluster, moto_server
from tests.fakes.agent import FakeAgent
from tests.fakes.agent_moto import MotoEcs
from tests.fakes.threaded import ThreadedServer
from tests.processes import SidecarProcess

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "benchmarks" / "drill_worker.py"
MODES = ("none", "naive", "sidecar")


@dataclass(frozen=True)
class Settings:
    jobs: int = 2000
    wave: int = 200  # jobs per wave; queues drain between waves, so tasks go idle
    wave_gap: float = 2.0  # seconds between the queue emptying and the next wave
    tasks: int = 4
    min_tasks: int = 2
    max_tasks: int = 6
    job_seconds: tuple[float, float] = (0.02, 0.10)
    grace: float = 1.0  # TASK_PROTECTION_IDLE_GRACE_SECONDS
    stop_timeout: float = 3.0  # both containers' stopTimeout, scaled down
    scale_every: float = 2.5
    plan: tuple[str, ...] = ("in", "out", "in", "out", "deploy")  # repeated
    seed: int = 7
    timeout: float = 600.0


@dataclass
class Result:
    mode: str
    jobs: int
    completed: int
    interrupted: int
    update_calls: int  # at ECS: every attempt of the agent's SDK counts
    agent_puts: int  # PUTs the agent answered (one can be up to 3 ECS calls)
    minimum_calls: int
    scale_events: int
    deployments: int
    protected_wait: float
    seconds: float
    # The sidecars' EMF metric UnprotectedBusySeconds, summed over the service per 5-minute
    # period (CloudWatch's view), for the alarm docs/monitoring.md recommends.
    unprotected_busy_seconds: float = 0.0
    unprotected_busy_by_period: list[float] = field(default_factory=list)
    timeline: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def calls_per_1000(self) -> float:
        return 1000.0 * self.update_calls / max(1, self.completed)

    @property
    def minimum_per_1000(self) -> float:
        return 1000.0 * self.minimum_calls / max(1, self.completed)


class SimTask:
    """One ECS task: its moto record, agent endpoint, sidecar and worker processes."""

    def __init__(self, drill: Drill, index: int) -> None:
        self.drill = drill
        self.index = index
        self.arn = drill.cluster.run_task(service="drill")
        self.endpoint = f"task-{index}"
        drill.agent.add_task(self.endpoint, arn=self.arn)
        self.journal = drill.workdir / f"{drill.mode}-{index}.journal"
        self.sidecar: SidecarProcess | None = None
        self.stopped_at: float | None = None
        env = {
            **os.environ,
            **CREDENTIALS,
            "DRILL_MOTO_URL": drill.moto_url,
            "ECS_AGENT_URI": drill.agent.uri(self.endpoint),
            "PYTHONPATH": str(ROOT),
        }
        if drill.mode == "sidecar":
            self.sidecar = SidecarProcess(
                {
                    "ECS_AGENT_URI": drill.agent.uri(self.endpoint),
                    "TASK_PROTECTION_IDLE_GRACE_SECONDS": str(drill.settings.grace),
                    "TASK_PROTECTION_DRAIN_TIMEOUT_SECONDS": str(drill.settings.stop_timeout - 1),
                    "TASK_PROTECTION_EMF_NAMESPACE": "EcsProtectionDrill",
                },
                stdout=True,
            ).start()  # the app dependsOn the sidecar being HEALTHY
            env["TASK_PROTECTION_URL"] = self.sidecar.url
        self.worker = subprocess.Popen(
            [sys.executable, str(WORKER), drill.mode, drill.queue_url, str(self.journal)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def protected(self) -> bool:
        return self.drill.cluster.protected(self.arn)

    def stop(self) -> None:
        """As ECS stops a task: the app first (it dependsOn the sidecar), then the sidecar."""
        _terminate(self.worker, self.drill.settings.stop_timeout)
        if self.sidecar is not None:
            _terminate(self.sidecar.proc, self.drill.settings.stop_timeout)
            self.drill.emf_records.extend(_emf_records(self.sidecar))
            self.sidecar.stop()
        self.drill.cluster.ecs.stop_task(cluster=self.drill.cluster.name, task=self.arn)
        self.stopped_at = time.time()


def _emf_records(sidecar: SidecarProcess) -> list[dict[str, Any]]:
    """The EMF records an exited sidecar wrote to stdout (its log goes to stderr)."""
    records = []
    while True:
        try:
            line = sidecar.stdout.get(timeout=10)
        except queue.Empty:
            break
        if line is None:
            break
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


def by_period(records: list[dict[str, Any]], metric: str, period: float = 300.0) -> list[float]:
    """A metric's sum per period, from the first record on, as CloudWatch's Sum statistic."""
    stamped = [(r["_aws"]["Timestamp"] / 1000.0, float(r.get(metric, 0.0))) for r in records]
    if not stamped:
        return []
    start = min(at for at, _ in stamped)
    sums = [0.0] * (int((max(at for at, _ in stamped) - start) // period) + 1)
    for at, value in stamped:
        sums[int((at - start) // period)] += value
    return [round(value, 3) for value in sums]


def _terminate(proc: subprocess.Popen[Any], stop_timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(stop_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class Drill:
    def __init__(
        self, mode: str, settings: Settings, moto_url: str, agent: FakeAgent, workdir: Path
    ) -> None:
        self.mode = mode
        self.settings = settings
        self.moto_url = moto_url
        self.agent = agent
        self.workdir = workdir
        self.random = random.Random(settings.seed)
        ecs = boto3.client("ecs", region_name=REGION, endpoint_url=moto_url)
        self.cluster = Cluster(ecs, name=f"drill-{mode}-{time.monotonic_ns()}")
        self.ecs_calls = MotoEcs(ecs, self.cluster.name)
        agent.ecs = self.ecs_calls
        self.sqs = boto3.client("sqs", region_name=REGION, endpoint_url=moto_url)
        self.queue_url = self.sqs.create_queue(
            QueueName=self.cluster.name, Attributes={"VisibilityTimeout": "5"}
        )["QueueUrl"]
        self.tasks: list[SimTask] = []
        self.all_tasks: list[SimTask] = []
        self.next_index = 0
        self.protected_wait = 0.0
        self.scale_events = 0
        self.plan_steps = 0  # scaling steps taken
        self.deployments = 0
        self.emf_records: list[dict[str, Any]] = []
        self.produced = 0
        self._stop = threading.Event()

    # ---- the service ---------------------------------------------------------------

    def start_task(self) -> None:
        task = SimTask(self, self.next_index)
        self.next_index += 1
        self.tasks.append(task)
        self.all_tasks.append(task)

    def wait_unprotected(self, candidates: list[SimTask]) -> SimTask | None:
        """Like ECS: only an unprotected task may be stopped; wait for one."""
        began = time.monotonic()
        while not self._stop.is_set():
            order = candidates[:]
            self.random.shuffle(order)
            for task in order:
                if not task.protected():
                    self.protected_wait += time.monotonic() - began
                    return task
            time.sleep(0.05)
        return None

    def scale_in(self) -> None:
        if len(self.tasks) <= self.settings.min_tasks:
            return
        task = self.wait_unprotected(self.tasks)
        if task is not None:
            self.tasks.remove(task)
            task.stop()
            self.scale_events += 1

    def scale_out(self) -> None:
        if len(self.tasks) < self.settings.max_tasks:
            self.start_task()
            self.scale_events += 1

    def deploy(self) -> None:
        old = self.tasks[:]
        for _ in old:
            self.start_task()
        while old and not self._stop.is_set():
            task = self.wait_unprotected(old)
            if task is None:
                return
            old.remove(task)
            self.tasks.remove(task)
            task.stop()
        self.deployments += 1

    def scaler(self) -> None:
        actions = {"in": self.scale_in, "out": self.scale_out, "deploy": self.deploy}
        while not self._stop.wait(self.settings.scale_every):
            plan = self.settings.plan
            actions[plan[self.plan_steps % len(plan)]]()
            self.plan_steps += 1

    def producer(self) -> None:
        settings = self.settings
        while self.produced < settings.jobs and not self._stop.is_set():
            count = min(settings.wave, settings.jobs - self.produced)
            jobs = [
                {
                    "id": f"job-{self.produced + i}",
                    "seconds": round(self.random.uniform(*settings.job_seconds), 4),
                }
                for i in range(count)
            ]
            for start in range(0, count, 10):
                self.sqs.send_message_batch(
                    QueueUrl=self.queue_url,
                    Entries=[
                        {"Id": str(n), "MessageBody": json.dumps(job)}
                        for n, job in enumerate(jobs[start : start + 10])
                    ],
                )
            self.produced += count
            while not self._stop.is_set() and self.queue_depth() > 0:
                time.sleep(0.1)
            self._stop.wait(settings.wave_gap)

    def queue_depth(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return sum(int(v) for v in attributes.values())

    # ---- a run ---------------------------------------------------------------------------

    def run(self) -> Result:
        began = time.time()
        for _ in range(self.settings.tasks):
            self.start_task()
        threads = [
            threading.Thread(target=self.producer, daemon=True),
            threading.Thread(target=self.scaler, daemon=True),
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + self.settings.timeout
        while time.monotonic() < deadline:
            # Done when every job is, and every step of the plan has run at least once (on
            # a slow machine the jobs may end before the scaler got round to all of it).
            jobs_done = len(self.done_jobs()) >= self.settings.jobs
            plan_done = self.plan_steps >= len(self.settings.plan)
            if self.produced >= self.settings.jobs and jobs_done and plan_done:
                break
            time.sleep(0.5)
        self._stop.set()
        for thread in threads:
            thread.join(120)
        time.sleep(self.settings.grace + 1.0)  # let idle sidecars turn protection off
        for task in self.tasks:
            task.stop()
        return self.result(began)

    def journals(self) -> dict[int, list[tuple[float, str, str]]]:
        entries: dict[int, list[tuple[float, str, str]]] = {}
        for task in self.all_tasks:
            lines = task.journal.read_text().splitlines() if task.journal.exists() else []
            parsed = []
            for line in lines:
                parts = line.split()
                if len(parts) == 3:  # a line cut by SIGKILL is ignored
                    parsed.append((float(parts[0]), parts[1], parts[2]))
            entries[task.index] = parsed
        return entries

    def done_jobs(self) -> set[str]:
        return {
            job
            for entries in self.journals().values()
            for _, event, job in entries
            if event == "done"
        }

    def result(self, began: float) -> Result:
        journals = self.journals()
        interrupted = 0
        intervals: dict[int, list[tuple[float, float]]] = {}
        for index, entries in journals.items():
            started = {job: at for at, event, job in entries if event == "start"}
            finished = {job: at for at, event, job in entries if event == "done"}
            interrupted += len(set(started) - set(finished))
            intervals[index] = sorted((started[j], finished[j]) for j in started if j in finished)
        return Result(
            mode=self.mode,
            jobs=self.settings.jobs,
            completed=len(self.done_jobs()),
            interrupted=interrupted,
            update_calls=self.ecs_calls.updates,
            agent_puts=sum(
                1 for call in self.agent.calls if call.method == "PUT" and call.endpoint
            ),
            minimum_calls=minimum_calls(intervals, self.settings.grace),
            scale_events=self.scale_events,
            deployments=self.deployments,
            protected_wait=self.protected_wait,
            seconds=time.time() - began,
            unprotected_busy_seconds=round(
                sum(float(r.get("UnprotectedBusySeconds", 0.0)) for r in self.emf_records), 3
            ),
            unprotected_busy_by_period=by_period(self.emf_records, "UnprotectedBusySeconds"),
            timeline=self.timeline(intervals, began),
        )

    def timeline(
        self, intervals: dict[int, list[tuple[float, float]]], began: float
    ) -> dict[str, list[tuple[float, float]]]:
        """In-flight jobs and protected tasks over time, from journals and the agent's log."""
        events: list[tuple[float, int]] = []
        for jobs in intervals.values():
            for start, end in jobs:
                events += [(start - began, 1), (end - began, -1)]
        in_flight = _steps(events)
        # Protection changes per task, from the agent's log; a stopped task's protection
        # ends with it (naive workers can be stopped right after protecting themselves).
        changes: list[tuple[float, str, bool]] = [
            (call.at, call.endpoint, bool(json.loads(call.body).get("ProtectionEnabled")))
            for call in self.agent.calls
            if call.method == "PUT" and call.status == 200 and call.endpoint is not None
        ]
        changes += [
            (task.stopped_at, task.endpoint, False)
            for task in self.all_tasks
            if task.stopped_at is not None
        ]
        toggles: list[tuple[float, int]] = []
        state: dict[str, bool] = {}
        for at, endpoint, enabled in sorted(changes):
            if state.get(endpoint, False) != enabled:
                state[endpoint] = enabled
                toggles.append((at - began, 1 if enabled else -1))
        return {"in_flight": in_flight, "protected": _steps(toggles)}


def _steps(events: list[tuple[float, int]]) -> list[tuple[float, float]]:
    level, points = 0, [(0.0, 0.0)]
    for at, delta in sorted(events):
        level += delta
        points.append((at, float(level)))
    return points


def minimum_calls(intervals: dict[int, list[tuple[float, float]]], grace: float) -> int:
    """The fewest UpdateTaskProtection calls that protect every job: per task, one enable per
    busy period (jobs closer than the grace share one) and one disable after it. No
    renewals: a drill lasts far less than the 60-minute expiry."""
    total = 0
    for jobs in intervals.values():
        periods = 0
        last_end: float | None = None
        for start, end in jobs:
            if last_end is None or start - last_end >= grace:
                periods += 1
            last_end = end if last_end is None else max(last_end, end)
        total += 2 * periods
    return total


def run_drill(
    mode: str, settings: Settings, moto_url: str, agent: FakeAgent, workdir: Path
) -> Result:
    return Drill(mode, settings, moto_url, agent, workdir).run()


@contextlib.contextmanager
def environment() -> Any:
    """moto (ECS with the shim, SQS) and a fake agent relaying to it, on loopback."""
    with moto_server() as moto_url:
        agent = FakeAgent()

        async def start() -> str:
            return await agent.start()

        with ThreadedServer(start, agent.close), tempfile.TemporaryDirectory() as workdir:
            yield moto_url, agent, Path(workdir)


def table(results: list[Result]) -> str:
    header = (
        "| mode | jobs completed | interrupted | agent PUTs | ECS UpdateTaskProtection calls "
        "| per 1,000 jobs | theoretical minimum per 1,000 | scale events / deployments "
        "| waited on protected tasks | run time |"
    )
    rows = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    rows.extend(
        f"| {r.mode} | {r.completed} | {r.interrupted} | {r.agent_puts} | {r.update_calls} | "
        f"{r.calls_per_1000:.0f} | {r.minimum_per_1000:.0f} | {r.scale_events} / "
        f"{r.deployments} | {r.protected_wait:.1f} s | {r.seconds:.0f} s |"
        for r in results
    )
    return "\n".join(rows)


def plot(results: list[Result], path: Path) -> None:
    import matplotlib as mpl  # noqa: PLC0415  (only needed for the picture)

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 2.6 * len(results)), sharex=False)
    for ax, r in zip(axes if len(results) > 1 else [axes], results, strict=True):
        for key, colour, label in (
            ("in_flight", "tab:blue", "jobs in flight"),
            ("protected", "tab:orange", "protected tasks"),
        ):
            xs, ys = zip(*r.timeline[key], strict=True)
            ax.step(xs, ys, where="post", color=colour, label=label, linewidth=1)
        ax.set_title(
            f"{r.mode}: {r.interrupted} interrupted, {r.update_calls} "
            f"UpdateTaskProtection calls for {r.completed} jobs",
            fontsize=10,
        )
        ax.set_ylabel("count")
        ax.legend(loc="upper right", fontsize=8)
    axes_list = axes if len(results) > 1 else [axes]
    axes_list[-1].set_xlabel("seconds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description="Scale-in drill (see the module docstring).")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG here")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    defaults = Settings()
    parser.add_argument("--wave", type=int, default=defaults.wave, help="jobs per wave")
    parser.add_argument("--tasks", type=int, default=defaults.tasks, help="tasks at start")
    parser.add_argument("--scale-every", type=float, default=defaults.scale_every)
    parser.add_argument("--timeout", type=float, default=defaults.timeout)
    parser.add_argument(
        "--plan", default=",".join(defaults.plan), help="scaling steps, repeated: in,out,deploy"
    )
    args = parser.parse_args()
    settings = Settings(
        jobs=args.jobs,
        seed=args.seed,
        wave=args.wave,
        tasks=args.tasks,
        scale_every=args.scale_every,
        timeout=args.timeout,
        plan=tuple(args.plan.split(",")),
    )
    results = []
    with environment() as (moto_url, agent, workdir):
        for mode in args.modes.split(","):
            print(f"running mode {mode} ...", file=sys.stderr, flush=True)
            agent.calls.clear()
            results.append(run_drill(mode, settings, moto_url, agent, workdir))
    print(table(results))
    if args.plot:
        plot(results, args.plot)
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {k: v for k, v in vars(r).items() if k != "timeline"}
                    | {"calls_per_1000": r.calls_per_1000, "minimum_per_1000": r.minimum_per_1000}
                    for r in results
                ],
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
