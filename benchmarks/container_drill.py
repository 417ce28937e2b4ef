"""Container drill: an ECS service whose tasks are pods built from ecs/task-definition.json,
working a shared Redis queue while it is scaled in and out, redeployed and force-stopped.

    python -m benchmarks.container_drill [--tasks 3] [--jobs 400] [--plan out,in,force,deploy]

Needs the images of scripts/images; builds its own on top (containers/drill.Containerfile:
Debian's redis-server and python3-redis, and examples/redis_worker.py).

- The queue: a Redis container on a network the drill creates; every task's pod joins it.
- Each task (tests/ecs_task.py): the fake agent and task metadata as one container of the
  pod, the sidecar image as `protection`, the example app image running
  examples/redis_worker.py under the definition's entry point (`ecs-protection run --`):
  the command is overridden, as ECS's containerOverrides would, and REDIS_URL added.
  A task joins the service once its worker says it is ready (SIGTERM handled).
- A producer adds jobs in waves and waits for each to be acked, so tasks go idle between.
- A scaler repeats the plan: `out` starts a task; `in` stops one whose protection is off
  (as ECS does, reading each task's agent); `force` stops a protected task regardless
  (StopTask, Spot) and starts its replacement; `deploy` starts as many new tasks, then
  stops each old one once its protection is off. Every stop is ECS's: the metadata says
  STOPPED, then `podman stop -t <stopTimeout>` for the app, then for the sidecar. Jobs
  left unacked in a stopped task's processing list go back to the queue, as SQS's
  visibility timeout would put them.

From the app logs: jobs completed, interrupted (started, never finished in that task),
duplicated (finished more than once), lost (never finished); from the agents' records:
PUTs, against the theoretical minimum for the same busy periods (benchmarks/drill.py).

The only setting changed from the task definition: TASK_PROTECTION_IDLE_GRACE_SECONDS
(10 s in the file, `--grace` here), so that idle tasks become stoppable within a drill.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.drill import minimum_calls
from tests.containers import APP_IMAGE, SIDECAR_IMAGE, PodmanScope, inspect, podman
from tests.ecs_task import START_TIMEOUT, EmulatedTask, environment, load_task_definition

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
DRILL_IMAGE = "localhost/ecs-protection-drill:test"
CONTAINERFILE = ROOT / "containers" / "drill.Containerfile"
QUEUE = "jobs"
# Jobs waiting or in progress: the queue and every worker's processing list.
DEPTH = """
local n = redis.call('LLEN', KEYS[1])
for _, key in ipairs(redis.call('KEYS', 'processing:*')) do n = n + redis.call('LLEN', key) end
return n
"""
# A stopped worker's unacked jobs back to the head of the queue (SQS's visibility timeout).
REQUEUE = """
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do n = n + 1 end
return n
"""


@dataclass(frozen=True)
class Settings:
    tasks: int = 3
    jobs: int = 400
    wave: int = 80  # jobs per wave; the queue empties between waves, so tasks go idle
    wave_gap: float = 6.0  # seconds between a wave's last ack and the next wave
    job_seconds: tuple[float, float] = (0.1, 1.5)
    grace: float = 2.0  # TASK_PROTECTION_IDLE_GRACE_SECONDS (the file's: 10)
    plan: tuple[str, ...] = ("out", "in", "force", "deploy")  # repeated
    scale_every: float = 4.0
    agent_latency: float = 0.3  # each ECS call behind each task's agent
    seed: int = 7
    timeout: float = 1200.0


@dataclass
class Result:
    jobs: int
    completed: int
    interrupted: int
    duplicated: int
    lost: int
    agent_puts: int
    minimum_puts: int
    tasks_started: int
    scale_ins: int
    forced_stops: int
    deployments: int
    bad_exits: list[str]
    seconds: float

    @property
    def puts_per_1000(self) -> float:
        return 1000.0 * self.agent_puts / max(1, self.completed)

    @property
    def minimum_per_1000(self) -> float:
        return 1000.0 * self.minimum_puts / max(1, self.completed)


class Queue:
    """The drill's own calls to Redis, made with redis-cli inside the Redis container, so
    that its traffic stays inside the network it made (the host never joins it)."""

    def __init__(self, container: str) -> None:
        self.container = container

    def call(self, *command: str, check: bool = True) -> str:
        result = podman("exec", self.container, "redis-cli", "--raw", *command, check=check)
        return result.stdout.strip()


@dataclass
class DrillTask:
    task: EmulatedTask
    index: int
    host: str = ""  # the pod's host name: the worker's processing list


class Drill:
    def __init__(self, settings: Settings, scope: PodmanScope, workdir: Path) -> None:
        self.settings = settings
        self.scope = scope
        self.workdir = workdir
        self.random = random.Random(settings.seed)
        self.definition = worker_definition()
        self.tasks: list[DrillTask] = []  # the service's running tasks
        self.all_tasks: list[DrillTask] = []
        self.produced = 0
        self.plan_steps = 0
        self.scale_ins = self.forced_stops = self.deployments = 0
        self.bad_exits: list[str] = []
        self.failures: list[Exception] = []
        self._next_index = 0
        self.began = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the task lists, which several threads change
        self.network = ""
        self._queue: Queue | None = None

    # ---- set-up -----------------------------------------------------------------------

    def start_queue(self) -> None:
        self.network = self.scope.network("drill")
        podman("network", "create", self.network)
        name = self.scope.container("redis")
        podman(
            "run", "--detach", "--name", name, "--network", self.network,
            "--network-alias", "redis", "--entrypoint", '["redis-server"]', DRILL_IMAGE,
            "--bind", "0.0.0.0", "--protected-mode", "no",  # noqa: S104  (its own namespace)
            "--save", "", "--appendonly", "no",
        )  # fmt: skip
        self._queue = Queue(name)
        deadline = time.monotonic() + 120
        while self.queue.call("PING", check=False) != "PONG":
            if time.monotonic() > deadline:
                raise RuntimeError("the drill's Redis did not answer within 120 s")
            time.sleep(0.2)

    @property
    def queue(self) -> Queue:
        if self._queue is None:
            raise RuntimeError("the queue is not started")
        return self._queue

    def note(self, what: str) -> None:
        print(f"{time.monotonic() - self.began:6.1f} s  {what}", file=sys.stderr, flush=True)

    def start_tasks(self, count: int) -> None:
        """Start `count` tasks at once, as ECS places a service's new tasks."""
        with ThreadPoolExecutor(max_workers=count) as pool:
            for started in [pool.submit(self.start_task) for _ in range(count)]:
                started.result()  # an exception in any start ends the drill

    def start_task(self) -> DrillTask:
        with self._lock:
            index = self._next_index
            self._next_index += 1
        self.note(f"task-{index}: starting")
        grace = f"{self.settings.grace:g}"
        emulated = EmulatedTask(
            self.scope,
            self.definition,
            {"app": DRILL_IMAGE, "protection": SIDECAR_IMAGE},
            self.workdir / f"task-{index}",
            overrides={"protection": {"TASK_PROTECTION_IDLE_GRACE_SECONDS": grace}},
            network=self.network,
            agent_latency=self.settings.agent_latency,
        )
        task = DrillTask(emulated, index)
        with self._lock:
            self.all_tasks.append(task)  # before it starts: its log counts even if that fails
        emulated.start()
        task.host = inspect("container", emulated.containers["app"].name)["Config"]["Hostname"]
        # In service once the worker handles SIGTERM: a Python process stopped before then
        # dies of the signal (exit 143) with no job at stake, which is not what is measured.
        deadline = time.monotonic() + START_TIMEOUT
        while not any(line.text.startswith("ready:") for line in emulated.log("app")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"task-{index}: no worker ready\n{emulated.logs()}")
            time.sleep(0.1)
        self.note(f"task-{index}: running")
        with self._lock:
            self.tasks.append(task)
        return task

    def stop_task(self, task: DrillTask) -> None:
        """ECS's stop; then the task's unacked jobs go back to the queue."""
        with self._lock:
            if task in self.tasks:
                self.tasks.remove(task)
        protected = task.task.protected()
        self.note(f"task-{task.index}: stopping ({'protected' if protected else 'unprotected'})")
        task.task.stop()
        self.note(f"task-{task.index}: stopped, exit codes {task.task.exit_codes}")
        for container, code in task.task.exit_codes.items():
            if code != 0:
                self.bad_exits.append(f"task-{task.index} {container}: {code}")
                tail = "\n".join(line.text for line in task.task.log(container)[-15:])
                self.note(f"task-{task.index}: {container} exited {code}; its log ends:\n{tail}")
        self.queue.call("EVAL", REQUEUE, "2", f"processing:{task.host}", QUEUE)

    # ---- the service ------------------------------------------------------------------

    def wait_for(self, candidates: list[DrillTask], *, protected: bool) -> DrillTask | None:
        """A task whose protection is `protected`, read from its agent, as ECS reads it."""
        while not self._stop.is_set():
            order = candidates[:]
            self.random.shuffle(order)
            for task in order:
                if task.task.protected() == protected:
                    return task
            time.sleep(0.05)
        return None

    def scale_in(self) -> None:
        if len(self.tasks) <= 1:
            return
        task = self.wait_for(list(self.tasks), protected=False)
        if task is not None:
            self.stop_task(task)
            self.scale_ins += 1

    def scale_out(self) -> None:
        self.start_task()

    def force_stop(self) -> None:
        """StopTask (or a Spot interruption): protection does not stop it. A busy task is
        chosen when one turns up within a few seconds; the service then replaces it."""
        candidates = list(self.tasks)
        chosen = None
        deadline = time.monotonic() + 10
        while chosen is None and time.monotonic() < deadline and not self._stop.is_set():
            chosen = next((t for t in candidates if t.task.protected()), None)
            time.sleep(0.05)
        self.stop_task(chosen or self.random.choice(candidates))
        self.forced_stops += 1
        self.start_task()

    def deploy(self) -> None:
        old = list(self.tasks)
        self.start_tasks(len(old))
        while old and not self._stop.is_set():
            task = self.wait_for(old, protected=False)
            if task is None:
                return
            old.remove(task)
            self.stop_task(task)
        self.deployments += 1

    def scaler(self) -> None:
        actions = {
            "in": self.scale_in,
            "out": self.scale_out,
            "force": self.force_stop,
            "deploy": self.deploy,
        }
        while not self._stop.wait(self.settings.scale_every):
            plan = self.settings.plan
            step = plan[self.plan_steps % len(plan)]
            self.note(f"plan: {step}")
            actions[step]()
            self.plan_steps += 1

    def producer(self) -> None:
        settings = self.settings
        while self.produced < settings.jobs and not self._stop.is_set():
            count = min(settings.wave, settings.jobs - self.produced)
            jobs = [
                json.dumps(
                    {
                        "id": f"job-{self.produced + i}",
                        "seconds": round(self.random.uniform(*settings.job_seconds), 3),
                    }
                )
                for i in range(count)
            ]
            self.queue.call("RPUSH", QUEUE, *jobs)
            self.produced += count
            self.note(f"queue: {count} jobs added, {self.produced} in all")
            while not self._stop.is_set() and self.queue_depth() > 0:
                time.sleep(0.5)
            self._stop.wait(settings.wave_gap)

    def queue_depth(self) -> int:
        return int(self.queue.call("EVAL", DEPTH, "1", QUEUE))

    # ---- a run ---------------------------------------------------------------------

    def run(self) -> Result:
        began = self.began = time.monotonic()
        self.start_queue()
        self.start_tasks(self.settings.tasks)
        threads = [
            threading.Thread(target=self.guarded, args=(self.producer,), daemon=True),
            threading.Thread(target=self.guarded, args=(self.scaler,), daemon=True),
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + self.settings.timeout
        try:
            while time.monotonic() < deadline:
                jobs_done = len(self.done_jobs()) >= self.settings.jobs
                plan_done = self.plan_steps >= len(self.settings.plan)
                if self.produced >= self.settings.jobs and jobs_done and plan_done:
                    break
                if self.failures:
                    raise RuntimeError(f"the drill failed: {self.failures[0]!r}")
                time.sleep(0.5)
            else:
                print("the drill's timeout passed: the results are partial", file=sys.stderr)
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(300)
        for task in list(self.tasks):  # the service scaled to zero, as ECS scales in
            self.wait_unprotected(task)
            self.stop_task(task)
        return self.result(time.monotonic() - began)

    def wait_unprotected(self, task: DrillTask) -> None:
        """No jobs are left: protection goes off one grace after the last one ended."""
        deadline = time.monotonic() + self.settings.grace + START_TIMEOUT
        while task.task.protected() and time.monotonic() < deadline:
            time.sleep(0.05)

    def guarded(self, work: Callable[[], None]) -> None:
        """Run a thread's work; an exception ends the drill instead of only the thread."""
        try:
            work()
        except Exception as exc:
            self.failures.append(exc)
            raise

    def done_jobs(self) -> set[str]:
        return {job for task in self.all_tasks for _, event, job in lines(task) if event == "done"}

    def result(self, seconds: float) -> Result:
        done_counts: dict[str, int] = {}
        interrupted = 0
        intervals: dict[int, list[tuple[float, float]]] = {}
        for task in self.all_tasks:
            started: dict[str, float] = {}
            finished: dict[str, float] = {}
            for at, event, job in lines(task):
                if event == "started":
                    started[job] = at
                elif event == "done":
                    finished[job] = at
                    done_counts[job] = done_counts.get(job, 0) + 1
            interrupted += len(set(started) - set(finished))
            intervals[task.index] = sorted(
                (started[job], finished[job]) for job in started if job in finished
            )
        puts = sum(
            1
            for task in self.all_tasks
            for entry in task.task.record()
            if entry["event"] == "call" and entry["method"] == "PUT"
        )
        return Result(
            jobs=self.produced,
            completed=len(done_counts),
            interrupted=interrupted,
            duplicated=sum(1 for count in done_counts.values() if count > 1),
            lost=self.produced - len(done_counts),
            agent_puts=puts,
            minimum_puts=minimum_calls(intervals, self.settings.grace),
            tasks_started=len(self.all_tasks),
            scale_ins=self.scale_ins,
            forced_stops=self.forced_stops,
            deployments=self.deployments,
            bad_exits=self.bad_exits,
            seconds=seconds,
        )


def lines(task: DrillTask) -> list[tuple[float, str, str]]:
    """(time, started|done|acked, job id) from the worker's log; other lines skipped."""
    if "app" not in task.task.containers:
        return []
    found = []
    for line in task.task.log("app"):
        parts = line.text.split()
        if len(parts) == 2 and parts[0] in ("started", "done", "acked"):
            found.append((line.at, parts[0], parts[1]))
    return found


def worker_definition() -> dict[str, Any]:
    """ecs/task-definition.json with the app's command overridden to the Redis worker."""
    definition = copy.deepcopy(load_task_definition())
    for container in definition["containerDefinitions"]:
        if container["name"] == "app":
            container["command"] = ["python", "/app/redis_worker.py"]
            env = environment(container) | {"REDIS_URL": "redis://redis:6379/0"}
            container["environment"] = [{"name": k, "value": v} for k, v in env.items()]
    return definition


def build_image() -> None:
    """The drill's image, on the example app image (podman's cache makes reruns quick)."""
    podman(
        "build", "--quiet", "--format", "docker", "--network=host",
        "--build-arg", f"APP={APP_IMAGE}", "--file", str(CONTAINERFILE),
        "--tag", DRILL_IMAGE, str(ROOT / "examples"),
        timeout=900,
    )  # fmt: skip


def run_drill(settings: Settings, scope: PodmanScope, workdir: Path) -> Result:
    build_image()
    return Drill(settings, scope, workdir).run()


def table(result: Result) -> str:
    r = result
    return "\n".join(
        [
            (
                "| tasks | jobs completed | interrupted | duplicated | lost | agent PUTs "
                "| per 1,000 jobs | theoretical minimum per 1,000 "
                "| scale-ins / forced stops / deployments | non-zero exits | wall time |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|",
            (
                f"| {r.tasks_started} | {r.completed} of {r.jobs} | {r.interrupted} | "
                f"{r.duplicated} | {r.lost} | {r.agent_puts} | {r.puts_per_1000:.0f} | "
                f"{r.minimum_per_1000:.0f} | {r.scale_ins} / {r.forced_stops} / "
                f"{r.deployments} | {len(r.bad_exits)} | {r.seconds:.0f} s |"
            ),
        ]
    )


def main() -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(description="Container drill (see the module docstring).")
    parser.add_argument("--tasks", type=int, default=defaults.tasks, help="tasks at start")
    parser.add_argument("--jobs", type=int, default=defaults.jobs)
    parser.add_argument("--wave", type=int, default=defaults.wave, help="jobs per wave")
    parser.add_argument(
        "--wave-gap", type=float, default=defaults.wave_gap, help="seconds between waves"
    )
    parser.add_argument("--grace", type=float, default=defaults.grace)
    parser.add_argument("--scale-every", type=float, default=defaults.scale_every)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--timeout", type=float, default=defaults.timeout)
    parser.add_argument(
        "--plan", default=",".join(defaults.plan), help="steps, repeated: out,in,force,deploy"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args()
    settings = Settings(
        tasks=args.tasks,
        jobs=args.jobs,
        wave=args.wave,
        wave_gap=args.wave_gap,
        grace=args.grace,
        scale_every=args.scale_every,
        seed=args.seed,
        timeout=args.timeout,
        plan=tuple(args.plan.split(",")),
    )
    # SIGTERM ends the drill like Ctrl-C: the scope below still removes what it made.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with PodmanScope("drill") as scope, tempfile.TemporaryDirectory() as workdir:
        result = run_drill(settings, scope, Path(workdir))
    print(table(result))
    for bad in result.bad_exits:
        print(f"non-zero exit: {bad}")
    if args.json:
        numbers = asdict(result) | {
            "puts_per_1000": result.puts_per_1000,
            "minimum_per_1000": result.minimum_per_1000,
        }
        args.json.write_text(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()
