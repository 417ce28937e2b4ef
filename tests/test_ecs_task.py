"""ecs/task-definition.json run as ECS runs it: a pod (awsvpc) or a network (bridge), the
ECS agent as one more container, and the task stopped in ECS's order while a job runs.

Nothing in the registered file is changed for awsvpc: stop timeouts, grace, drain
timeout, the health check, the read-only root, the entry point and command are the
file's, and the example worker's job takes its default 20 s, which leaves a slow
machine ample time to begin the stop while the job runs. Bridge mode changes only
what the README's network-modes section says (TASK_PROTECTION_HOST,
TASK_PROTECTION_TOKEN, TASK_PROTECTION_URL, a link).
"""

from __future__ import annotations

import copy
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from tests.containers import podman
from tests.ecs_task import (
    EmulatedTask,
    LogLine,
    TranslationError,
    create_args,
    environment,
    load_task_definition,
    start_order,
)

if TYPE_CHECKING:
    from pathlib import Path

    from tests.containers import PodmanScope

AGENT_LATENCY = 0.5  # each ECS call behind the agent (the real one: 0.1-4 s)


def containers(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in definition["containerDefinitions"]}


# ---- the translation, without podman ------------------------------------------------


def test_sidecar_definition_becomes_a_read_only_container_with_its_health_check():
    """The sidecar's settings all reach podman: environment, read-only root (without
    podman's own tmpfs mounts, which ECS does not add), health check, stop timeout."""
    sidecar = containers(load_task_definition())["protection"]
    args = create_args(sidecar, name="s", image="local/sidecar:test", env={"EXTRA": "1"})
    assert args[:3] == ["create", "--name", "s"]
    assert "--env" in args
    assert "TASK_PROTECTION_IDLE_GRACE_SECONDS=10" in args
    assert "EXTRA=1" in args
    assert args[args.index("--read-only") + 1] == "--read-only-tmpfs=false"
    health = args[args.index("--health-cmd") + 1]
    assert health == '["python", "-m", "sidecar.healthcheck"]'  # exec form, as CMD is
    assert args[args.index("--health-start-period") + 1] == "10s"
    assert args[args.index("--health-retries") + 1] == "3"
    assert args[args.index("--stop-timeout") + 1] == "30"
    assert args[-1] == "local/sidecar:test"  # the image replaced, no command


def test_app_definition_keeps_its_entry_point_and_command():
    app = containers(load_task_definition())["app"]
    args = create_args(app, name="a", image="local/app:test", env={"JOB_SECONDS": "3"})
    assert args[args.index("--entrypoint") + 1] == '["ecs-protection", "run", "--"]'
    assert args[-2:] == ["local/app:test", "/app/worker.sh"]
    assert args[args.index("--stop-timeout") + 1] == "120"
    assert "--read-only" not in args
    assert "JOB_SECONDS=3" in args


def test_an_override_replaces_the_definitions_value():
    app = containers(load_task_definition())["app"]
    args = create_args(app, name="a", image="i", env={"TASK_PROTECTION_URL": "http://x:1"})
    values = [args[i + 1] for i, arg in enumerate(args) if arg == "--env"]
    assert [v for v in values if v.startswith("TASK_PROTECTION_URL=")] == [
        "TASK_PROTECTION_URL=http://x:1"
    ]


def test_a_setting_the_emulator_does_not_know_is_an_error_not_ignored():
    app = {**containers(load_task_definition())["app"], "mountPoints": []}
    with pytest.raises(TranslationError, match="mountPoints"):
        create_args(app, name="a", image="i")


def test_a_shell_health_check_runs_under_a_shell():
    sidecar = {
        **containers(load_task_definition())["protection"],
        "healthCheck": {"command": ["CMD-SHELL", "curl -f localhost/ || exit 1"]},
    }
    args = create_args(sidecar, name="s", image="i")
    assert args[args.index("--health-cmd") + 1] == "curl -f localhost/ || exit 1"
    assert args[args.index("--health-interval") + 1] == "30s"  # ECS's default


def test_containers_start_in_depends_on_order_and_a_cycle_is_refused():
    definitions = load_task_definition()["containerDefinitions"]
    assert [c["name"] for c in start_order(definitions)] == ["protection", "app"]
    cyclic = copy.deepcopy(definitions)
    cyclic[1]["dependsOn"] = [{"containerName": "app", "condition": "START"}]
    with pytest.raises(TranslationError, match="cycle"):
        start_order(cyclic)


# ---- the task, run and stopped as ECS does ------------------------------------------


@dataclass
class Job:
    started: float
    done: float | None
    acked: float | None


def jobs(log: list[LogLine]) -> list[Job]:
    """The worker's jobs, from worker.sh's lines (one job at a time, in order)."""
    found: list[Job] = []
    for line in log:
        if line.text == "job started":
            found.append(Job(line.at, None, None))
        elif line.text == "job done":
            found[-1].done = line.at
        elif line.text == "job acked":
            found[-1].acked = line.at
    return found


class Sampler:
    """Reads, every few milliseconds while the task stops, whether ECS holds it protected."""

    def __init__(self, task: EmulatedTask) -> None:
        self.task = task
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self.task.protected()))
            self._stop.wait(0.01)

    def __enter__(self) -> Sampler:  # noqa: PYI034  (as in tests/processes.py)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)


def wait_for_job(task: EmulatedTask) -> None:
    deadline = time.monotonic() + 180
    while not jobs(task.log("app")):
        assert time.monotonic() < deadline, f"no job started within 180 s\n{task.logs()}"
        time.sleep(0.05)


def run_and_stop(task: EmulatedTask) -> list[tuple[float, bool]]:
    """Start the task, wait for its first job, stop the task as ECS does while that job
    runs, and return the protection samples taken throughout."""
    task.start()
    wait_for_job(task)
    with Sampler(task) as sampler:
        task.stop()
    return sampler.samples


def assert_stopped_cleanly(task: EmulatedTask, samples: list[tuple[float, bool]]) -> None:
    assert task.stop_began is not None
    worked = jobs(task.log("app"))
    context = task.logs()
    # The stop landed while a job ran: that job finished and was acked.
    running = worked[-1]
    assert running.started < task.stop_began, context
    assert running.done is not None, context
    assert running.done > task.stop_began, context
    assert running.acked is not None, context
    assert running.acked >= running.done
    # No job started after the stop began.
    assert all(job.started < task.stop_began for job in worked), context
    # Protection, as ECS held it, was on from before each job started until it ended.
    changes = [e for e in task.record() if e["event"] == "protection"]
    for job in worked:
        assert job.done is not None
        before = [c for c in changes if c["at"] < job.started]
        assert before, f"never protected before the job started\n{context}"
        assert before[-1]["enabled"], context
        assert before[-1]["expires"] > job.done, context
        during = [c for c in changes if job.started <= c["at"] <= job.done]
        assert all(c["enabled"] for c in during), context
    # The samples taken while the task stopped say the same, and there were some.
    inside = [on for at, on in samples if running.started < at < running.done]
    assert inside, "no sample while the job ran"
    assert all(inside), context
    # ECS's stop: both containers exited on their own, with 0.
    assert task.exit_codes == {"app": 0, "protection": 0}, context


@pytest.mark.container
@pytest.mark.timeout(600)
def test_awsvpc_task_finishes_its_job_when_stopped(container_images, podman_scope, tmp_path):
    """The task definition as a pod: the sidecar on 127.0.0.1 of the task, the app
    wrapped by `ecs-protection run`, the stop in ECS's order."""
    task = EmulatedTask(
        podman_scope,
        load_task_definition(),
        {"app": container_images["app"], "protection": container_images["sidecar"]},
        tmp_path,
        agent_latency=AGENT_LATENCY,
    )
    samples = run_and_stop(task)
    assert_stopped_cleanly(task, samples)


def bridge_definition(token: str) -> dict[str, Any]:
    """The task definition changed for bridge mode as the README says: the sidecar on
    0.0.0.0 with a token, the app linked to it and given its URL and the token."""
    definition = copy.deepcopy(load_task_definition())
    definition["networkMode"] = "bridge"
    for container in definition["containerDefinitions"]:
        env = environment(container)
        if container["name"] == "protection":
            env |= {"TASK_PROTECTION_HOST": "0.0.0.0", "TASK_PROTECTION_TOKEN": token}  # noqa: S104
        else:
            env |= {
                "TASK_PROTECTION_URL": "http://protection:31680",
                "TASK_PROTECTION_TOKEN": token,
            }
            container["links"] = ["protection"]
        container["environment"] = [{"name": k, "value": v} for k, v in env.items()]
    return definition


POST_WITHOUT_TOKEN = """
import urllib.error, urllib.request
request = urllib.request.Request("http://protection:31680/busy", data=b"{}", method="POST")
try:
    urllib.request.urlopen(request, timeout=30)
    print(200)
except urllib.error.HTTPError as error:
    print(error.code)
"""


@pytest.mark.container
@pytest.mark.timeout(600)
def test_bridge_task_reaches_its_sidecar_by_name_with_the_token(
    container_images, podman_scope: PodmanScope, tmp_path: Path
):
    """Bridge mode: each container in its own namespace on the task's network; the
    sidecar answers the app by name, refuses a POST without the token (401), and the
    task still stops cleanly."""
    task = EmulatedTask(
        podman_scope,
        bridge_definition(secrets.token_hex(16)),
        {"app": container_images["app"], "protection": container_images["sidecar"]},
        tmp_path,
        agent_latency=AGENT_LATENCY,
    )
    task.start()
    wait_for_job(task)
    app = task.containers["app"].name
    refused = podman("exec", app, "python", "-c", POST_WITHOUT_TOKEN).stdout.strip()
    assert refused == "401"
    with Sampler(task) as sampler:
        task.stop()
    assert_stopped_cleanly(task, sampler.samples)
