"""An ECS task emulated with podman, from the task definition users register.

- `create_args`: one container definition as `podman create` arguments: environment,
  entry point and command, user, `readonlyRootFilesystem`, the `healthCheck`,
  `stopTimeout`. Settings with no podman counterpart that matters on one machine are
  listed in IGNORED with the reason; any other key is an error, so a setting added to
  the task definition cannot go untested unnoticed.
- `EmulatedTask`: a whole task. `awsvpc`: a pod, whose containers share one network
  namespace. `bridge`: each container in its own namespace on a network made for the
  task, reachable by its container name. The ECS side (tests/pod_agent.py: the fake
  agent and the task metadata) runs as one more container; containers start in
  `dependsOn` order (waiting for HEALTHY where asked) and stop as ECS stops them: the
  metadata says `STOPPED`, then each container in reverse `dependsOn` order gets
  `podman stop -t <its stopTimeout>` (SIGTERM, SIGKILL after the timeout).

Everything made is named through a PodmanScope (tests/containers.py), which removes it
even when the test fails.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.containers import SIDECAR_IMAGE, podman

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from tests.containers import PodmanScope

ROOT = Path(__file__).parent.parent
TASK_DEFINITION = ROOT / "ecs" / "task-definition.json"
ECS_DEFAULT_STOP_TIMEOUT = 30  # the agent's ECS_CONTAINER_STOP_TIMEOUT, and Fargate's
# ECS's healthCheck defaults (seconds), for the fields a definition leaves out.
HEALTH_DEFAULTS = {"interval": 30, "timeout": 5, "retries": 3}
START_TIMEOUT = 180.0  # generous: the machine may be shared and slow
# Container settings with no counterpart that matters for one task on one machine.
IGNORED = {
    "cpu": "CPU shares only matter under contention with other tasks",
    "memory": "the limit only matters for a task that outgrows it",
    "logConfiguration": "awslogs: the logs stay with podman (k8s-file, with timestamps)",
    "restartPolicy": "restarts after a crash are not what these tests stop",
    "essential": "the emulator stops whole tasks; it does not react to one exit",
}
TRANSLATED = frozenset(
    {
        "name",
        "image",
        "environment",
        "entryPoint",
        "command",
        "user",
        "workingDirectory",
        "readonlyRootFilesystem",
        "healthCheck",
        "stopTimeout",
        "dependsOn",
        "links",
        "linuxParameters",
    }
)


class TranslationError(ValueError):
    """A container definition the emulator cannot run faithfully."""


def load_task_definition(path: Path = TASK_DEFINITION) -> dict[str, Any]:
    definition: dict[str, Any] = json.loads(path.read_text())
    return definition


def environment(definition: Mapping[str, Any]) -> dict[str, str]:
    return {entry["name"]: entry["value"] for entry in definition.get("environment", [])}


def create_args(
    definition: Mapping[str, Any],
    *,
    name: str,
    image: str,
    placement: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    extra: Iterable[str] = (),
) -> list[str]:
    """`podman create` arguments (without `podman`) for one container definition.

    `image` replaces the definition's image (a local test tag); `placement` puts it in a
    pod or on a network; `env` is merged over the definition's environment (what the
    agent injects, and a test's overrides); `extra` goes before the image.
    """
    unknown = sorted(set(definition) - TRANSLATED - set(IGNORED))
    if unknown:
        raise TranslationError(f"container setting(s) the emulator does not translate: {unknown}")
    args = ["create", "--name", name, *placement]
    for key, value in {**environment(definition), **(env or {})}.items():
        args += ["--env", f"{key}={value}"]
    if "entryPoint" in definition:
        args += ["--entrypoint", json.dumps(definition["entryPoint"])]
    if "user" in definition:
        args += ["--user", str(definition["user"])]
    if "workingDirectory" in definition:
        args += ["--workdir", str(definition["workingDirectory"])]
    if definition.get("readonlyRootFilesystem"):
        # ECS mounts nothing writable; podman would add tmpfs on /tmp, /run, /var/tmp.
        args += ["--read-only", "--read-only-tmpfs=false"]
    if definition.get("linuxParameters", {}).get("initProcessEnabled"):
        args += ["--init"]
    extra_linux = set(definition.get("linuxParameters", {})) - {"initProcessEnabled"}
    if extra_linux:
        raise TranslationError(f"linuxParameters the emulator does not translate: {extra_linux}")
    if "healthCheck" in definition:
        args += health_args(definition["healthCheck"])
    args += ["--stop-timeout", str(stop_timeout(definition))]
    args += [*extra, image]
    args += [str(part) for part in definition.get("command", [])]
    return args


def health_args(check: Mapping[str, Any]) -> list[str]:
    """ECS's healthCheck as podman's: `CMD` runs the command itself, `CMD-SHELL` a shell."""
    command = list(check["command"])
    kind, rest = command[0], command[1:]
    if kind == "CMD" and len(rest) > 1:
        # A JSON array is exec form in podman (it adds the CMD marker itself).
        cmd = json.dumps(rest)
    elif kind in ("CMD", "CMD-SHELL") and len(rest) == 1:
        cmd = rest[0]
    else:
        raise TranslationError(f"healthCheck command must start with CMD or CMD-SHELL: {command}")
    timing = {**HEALTH_DEFAULTS, **check}
    args = [
        "--health-cmd",
        cmd,
        "--health-interval",
        f"{timing['interval']}s",
        "--health-timeout",
        f"{timing['timeout']}s",
        "--health-retries",
        str(timing["retries"]),
    ]
    if "startPeriod" in check:
        args += ["--health-start-period", f"{check['startPeriod']}s"]
    return args


def stop_timeout(definition: Mapping[str, Any]) -> int:
    return int(definition.get("stopTimeout", ECS_DEFAULT_STOP_TIMEOUT))


def start_order(definitions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Containers in `dependsOn` order: a container after everything it depends on."""
    by_name = {d["name"]: d for d in definitions}
    ordered: list[dict[str, Any]] = []

    def visit(definition: dict[str, Any], path: tuple[str, ...]) -> None:
        if definition in ordered:
            return
        if definition["name"] in path:
            raise TranslationError(f"dependsOn cycle: {' -> '.join((*path, definition['name']))}")
        for dependency in definition.get("dependsOn", []):
            if dependency["containerName"] not in by_name:
                raise TranslationError(f"dependsOn names no container: {dependency}")
            visit(by_name[dependency["containerName"]], (*path, definition["name"]))
        ordered.append(definition)

    for definition in definitions:
        visit(definition, ())
    return ordered


@dataclass(frozen=True)
class LogLine:
    at: float  # Unix time conmon read the line
    text: str


def read_log(path: Path) -> list[LogLine]:
    """A k8s-file log: `<RFC3339 nanoseconds> stdout|stderr F|P <text>` per line."""
    lines: list[LogLine] = []
    if not path.exists():
        return lines
    for raw in path.read_text(errors="replace").splitlines():
        parts = raw.split(" ", 3)
        if len(parts) < 3:
            continue
        stamp, _stream, _flag = parts[:3]
        lines.append(LogLine(_parse_stamp(stamp), parts[3] if len(parts) == 4 else ""))
    return lines


def _parse_stamp(stamp: str) -> float:
    # fromisoformat takes at most microseconds: cut the nanoseconds' last three digits.
    head, dot, rest = stamp.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        rest = rest[: min(digits, 6)] + rest[digits:]
    return datetime.fromisoformat(head + dot + rest).timestamp()


@dataclass
class Running:
    """One started container of the task."""

    definition: dict[str, Any]
    name: str
    log: Path


@dataclass
class EmulatedTask:
    """One ECS task: its containers from the task definition, plus the ECS side.

    `images` maps container names to local image tags; `overrides` adds environment per
    container name (the test's overrides, said where they are used); `network` puts an
    awsvpc task's pod on an existing network (the drill's shared queue).
    """

    scope: PodmanScope
    definition: dict[str, Any]
    images: Mapping[str, str]
    workdir: Path
    overrides: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    network: str | None = None
    agent_latency: float = 0.0
    containers: dict[str, Running] = field(default_factory=dict)
    agent_name: str = ""
    stop_began: float | None = None
    exit_codes: dict[str, int] = field(default_factory=dict)
    _placement: list[str] = field(default_factory=list)
    _agent_host: str = "127.0.0.1"

    @property
    def mode(self) -> str:
        return str(self.definition.get("networkMode", "bridge"))

    @property
    def record_dir(self) -> Path:
        return self.workdir / "record"

    # ---- start ----------------------------------------------------------------------

    def start(self) -> EmulatedTask:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.record_dir.mkdir(exist_ok=True)
        if self.mode == "awsvpc":
            pod = self.scope.pod()
            network = ["--network", self.network] if self.network else []
            podman("pod", "create", "--name", pod, *network)
            self._placement = ["--pod", pod]
            self._start_agent(self._placement)
        elif self.mode == "bridge":
            network_name = self.scope.network()
            podman("network", "create", network_name)
            self._placement = ["--network", network_name]
            self._agent_host = "ecs-agent"  # as 169.254.170.2 is, from every namespace
            self._start_agent([*self._placement, "--network-alias", self._agent_host])
        else:
            raise TranslationError(f"networkMode {self.mode!r} is not emulated")
        ready = self._wait_ready()
        agent_env = {
            "ECS_AGENT_URI": (
                f"http://{self._agent_host}:{ready['agent_port']}/api/{ready['endpoint']}"
            ),
            "ECS_CONTAINER_METADATA_URI_V4": (
                f"http://{self._agent_host}:{ready['metadata_port']}/v4/abc"
            ),
        }
        ordered = start_order(self.definition["containerDefinitions"])
        healthy_needed = {
            d["containerName"]
            for c in ordered
            for d in c.get("dependsOn", [])
            if d["condition"] == "HEALTHY"
        }
        for definition in ordered:
            for dependency in definition.get("dependsOn", []):
                self._wait_condition(dependency)
            self._start_container(definition, agent_env)
            if definition["name"] in healthy_needed:
                self.wait_healthy(definition["name"])
        return self

    def _start_agent(self, placement: list[str]) -> None:
        self.agent_name = self.scope.container("ecs-agent")
        host = "127.0.0.1" if self.mode == "awsvpc" else "0.0.0.0"  # noqa: S104
        podman(
            "run", "--detach", "--name", self.agent_name, *placement,
            "--user", "0", "--read-only",
            "--volume", f"{ROOT / 'tests'}:/src/tests:ro",
            "--volume", f"{self.record_dir}:/record",
            "--env", "PYTHONPATH=/src", "--env", "PYTHONDONTWRITEBYTECODE=1",
            "--env", f"AGENT_ECS_LATENCY={self.agent_latency}",
            "--entrypoint", '["python", "-m", "tests.pod_agent"]',
            SIDECAR_IMAGE, "/record", "--host", host,
        )  # fmt: skip

    def _wait_ready(self) -> dict[str, Any]:
        ready = self.record_dir / "ready.json"
        self._wait(ready.exists, "the ECS agent stand-in serves", self.agent_name)
        found: dict[str, Any] = json.loads(ready.read_text())
        return found

    def _start_container(self, definition: dict[str, Any], agent_env: dict[str, str]) -> None:
        container = definition["name"]
        name = self.scope.container(container)
        log = self.workdir / f"{container}.log"
        placement = list(self._placement)
        if self.mode == "bridge":
            placement += ["--network-alias", container]
        args = create_args(
            definition,
            name=name,
            image=self.images[container],
            placement=placement,
            env={**agent_env, **self.overrides.get(container, {})},
            extra=["--log-driver", "k8s-file", "--log-opt", f"path={log}"],
        )
        podman(*args)
        podman("start", name)
        self.containers[container] = Running(definition, name, log)

    def _wait_condition(self, dependency: Mapping[str, str]) -> None:
        condition = dependency["condition"]
        target = dependency["containerName"]
        if condition == "START":
            return  # started before us, in start order
        if condition == "HEALTHY":
            self.wait_healthy(target)
            return
        name = self.containers[target].name
        self._wait(lambda: self._state(name) == "exited", f"{target} exits", name)
        if condition == "SUCCESS":
            assert self.exit_code(target) == 0, f"{target} (dependsOn SUCCESS) failed"

    def wait_healthy(self, container: str) -> None:
        """`podman healthcheck run` until it passes: the image's HEALTHCHECK timers need
        systemd, which this emulation does without."""
        name = self.containers[container].name
        self._wait(
            lambda: podman("healthcheck", "run", name, check=False).returncode == 0,
            f"{container} is healthy",
            name,
        )

    def _wait(self, predicate: Callable[[], bool], what: str, name: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not predicate():
            if self._state(name) == "exited":
                raise AssertionError(f"{name} exited while waiting until {what}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {START_TIMEOUT:g}s: {what}\n{self.logs()}")
            time.sleep(0.05)  # a real event, polled: each check is a podman command already

    def _state(self, name: str) -> str:
        result = podman("inspect", "--format", "{{.State.Status}}", name, check=False)
        return result.stdout.strip()

    # ---- stop -------------------------------------------------------------------------

    def begin_stop(self) -> float:
        """What ECS does first: the task's DesiredStatus becomes STOPPED. Returns when
        the metadata says so (the record's `stopping`), with that moment."""
        podman("kill", "--signal", "USR1", self.agent_name)
        self._wait(lambda: self.stopping_at() is not None, "the task is stopping", self.agent_name)
        began = self.stopping_at()
        assert began is not None
        self.stop_began = began
        return began

    def stop(self) -> None:
        """Stop the task as ECS does; the exit codes land in `exit_codes`."""
        self.begin_stop()
        self.stop_containers()

    def stop_containers(self) -> None:
        """Each container in reverse dependsOn order: SIGTERM, SIGKILL after stopTimeout."""
        ordered = start_order(self.definition["containerDefinitions"])
        for definition in reversed(ordered):
            running = self.containers.get(definition["name"])
            if running is None:
                continue
            timeout = stop_timeout(definition)
            podman("stop", "--time", str(timeout), running.name, timeout=timeout + 120)
            self.exit_codes[definition["name"]] = self.exit_code(definition["name"])
        podman("stop", "--time", "10", self.agent_name, timeout=130)

    def exit_code(self, container: str) -> int:
        name = self.containers[container].name
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout)

    # ---- what happened -------------------------------------------------------------------

    def record(self) -> list[dict[str, Any]]:
        path = self.record_dir / "record.jsonl"
        if not path.exists():
            return []
        entries = []
        for line in path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                break  # a line being written right now: read again later
        return entries

    def stopping_at(self) -> float | None:
        return next((e["at"] for e in self.record() if e["event"] == "stopping"), None)

    def protected(self) -> bool:
        """Whether ECS holds the task protected now (the agent's record, last change)."""
        changes = [e for e in self.record() if e["event"] == "protection"]
        if not changes:
            return False
        last = changes[-1]
        return bool(last["enabled"]) and (last["expires"] is None or last["expires"] > time.time())

    def log(self, container: str) -> list[LogLine]:
        return read_log(self.containers[container].log)

    def logs(self) -> str:
        """Every container's log, for a failure message."""
        parts = []
        for container, running in self.containers.items():
            text = "\n".join(line.text for line in read_log(running.log)[-40:])
            parts.append(f"--- {container} ({running.name})\n{text}")
        agent = podman("logs", self.agent_name, check=False)
        parts.append(f"--- ecs-agent\n{agent.stdout[-3000:]}{agent.stderr[-3000:]}")
        return "\n".join(parts)
