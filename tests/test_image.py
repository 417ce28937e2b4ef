"""The sidecar image, built (scripts/images) and run with podman as ECS runs it: non-root,
read-only, its own HEALTHCHECK, its entry point as PID 1 draining on SIGTERM.

Requests go to the sidecar over the container's own loopback (`podman exec`), as the app
container of an awsvpc task reaches it. Deadlines are generous; nothing here asserts speed:
`python -m benchmarks.image` measures start-to-healthy and the sizes.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import tomllib
from pathlib import Path

import pytest

from tests.containers import (
    APP_IMAGE,
    SIDECAR_API_IMAGE,
    SIDECAR_IMAGE,
    added_bytes,
    base_image,
    container_state,
    http_inside,
    inspect,
    podman,
    poll_until,
)

pytestmark = pytest.mark.container

ROOT = Path(__file__).parent.parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
CLIENT_VERSION = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"][
    "version"
]
MB = 1_000_000
# The layers the project adds on top of its base, at most (uncompressed).
BUDGETS = {SIDECAR_IMAGE: 20 * MB, SIDECAR_API_IMAGE: 60 * MB}
HEALTHY_DEADLINE = 120.0


def start(
    name: str, image: str = SIDECAR_IMAGE, options: tuple[str, ...] = (), *command: str
) -> str:
    """The sidecar as ECS runs it with readonlyRootFilesystem: read-only and, unlike podman's
    default, no writable tmpfs anywhere (ECS adds none)."""
    podman(
        "run", "--detach", "--name", name, "--read-only", "--read-only-tmpfs=false",
        "--http-proxy=false", "--env", "TASK_PROTECTION_DRAIN_TIMEOUT_SECONDS=600",
        *options, image, *command,
    )  # fmt: skip
    return name


def healthy(name: str) -> bool:
    return podman("healthcheck", "run", name, check=False).returncode == 0


def wait_healthy(name: str) -> None:
    poll_until(lambda: healthy(name), f"{name} reports healthy", HEALTHY_DEADLINE, interval=1)


def log_records(name: str) -> list[dict[str, object]]:
    """The sidecar's JSON log lines, in order."""
    logs = podman("logs", name)
    lines = (logs.stdout + logs.stderr).splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def exit_code(name: str) -> int:
    """Wait for the container to exit; its exit code."""
    return int(podman("wait", name, timeout=HEALTHY_DEADLINE).stdout.strip())


def test_runs_as_uid_10001_on_a_read_only_root_and_writes_nothing(podman_scope):
    # Podman itself changes a container's /etc (hosts, resolv.conf mount points): what a
    # container of the same image that runs nothing shows is not the sidecar's doing.
    idle = start(podman_scope.container("idle"), SIDECAR_IMAGE, ("--entrypoint", "sleep"), "600")
    name = start(podman_scope.container("sidecar"))
    wait_healthy(name)
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
    assert inspect("image", SIDECAR_IMAGE)["Config"]["User"] == "10001"
    assert inspect("container", name)["HostConfig"]["ReadonlyRootfs"] is True
    # Its work done once, so that anything it writes on the way would show.
    assert http_inside(name, "POST", "/busy", '{"lease": "job-1"}')[0] == 200
    assert http_inside(name, "POST", "/idle", '{"lease": "job-1"}')[0] == 200
    assert podman("diff", name).stdout.split() == podman("diff", idle).stdout.split()
    # /tmp: writable by anyone on a writable root, so only the read-only mount refuses it.
    refused = podman("exec", name, "touch", "/tmp/probe", check=False)  # noqa: S108
    assert refused.returncode != 0
    assert "Read-only file system" in refused.stderr


def test_healthcheck_reports_healthy_within_its_start_period(podman_scope):
    """The image's own HEALTHCHECK (kept by --format docker), run as ECS's health check."""
    check = inspect("image", SIDECAR_IMAGE)["Healthcheck"]
    assert check["Test"] == ["CMD", "python", "-m", "sidecar.healthcheck"]
    assert check["StartPeriod"] == 5 * 10**9
    name = start(podman_scope.container("sidecar"))
    wait_healthy(name)
    assert container_state(name)["Health"]["Status"] == "healthy"


def test_the_entry_point_is_pid_1_in_exec_form(podman_scope):
    config = inspect("image", SIDECAR_IMAGE)["Config"]
    assert config["Entrypoint"] == ["env", "--block-signal", "ecs-protection-sidecar"]
    assert not config.get("Cmd")
    name = start(podman_scope.container("sidecar"))
    wait_healthy(name)
    cmdline = podman("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
    # The console script under Python (env exec'd it), no shell in between: SIGTERM
    # reaches the sidecar.
    assert Path(cmdline[0]).name.startswith("python")
    assert Path(cmdline[1]).name == "ecs-protection-sidecar"
    assert "sh" not in {Path(arg).name for arg in cmdline}
    # env blocked every signal; the sidecar unblocked those it handles once it could.
    status = podman("exec", name, "cat", "/proc/1/status").stdout
    blocked = int(re.search(r"^SigBlk:\s*([0-9a-f]+)$", status, re.MULTILINE)[1], 16)
    handled = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1]
    assert [signum for signum in handled if blocked & 1 << (signum - 1)] == []
    assert blocked & 1 << (signal.SIGTSTP - 1)  # blocked by env, not handled: still blocked


def test_sigterm_with_a_lease_held_waits_for_idle_then_exits_0(podman_scope):
    name = start(podman_scope.container("sidecar"))
    wait_healthy(name)
    status, body = http_inside(name, "POST", "/busy", '{"lease": "job-1"}')
    assert (status, body["protected"]) == (200, True)
    podman("kill", "--signal", "TERM", name)

    def draining() -> bool:
        return http_inside(name, "GET", "/state")[1]["draining"] is True

    poll_until(draining, "the sidecar drains on SIGTERM")
    # Still running and still holding the lease: it waits for the job, not for a timer.
    status, body = http_inside(name, "POST", "/busy", '{"lease": "job-2"}')
    assert (status, body["error"]["code"]) == (503, "Draining")
    assert container_state(name)["Running"] is True
    status, body = http_inside(name, "POST", "/idle", '{"lease": "job-1"}')
    assert (status, body["released"]) == (200, True)
    assert exit_code(name) == 0
    records = log_records(name)
    events = [record.get("event") for record in records]
    assert events.index("drain_started") < events.index("exiting"), events
    assert records[events.index("exiting")]["exit_code"] == 0


def test_sigterm_with_no_lease_exits_0_at_once(podman_scope):
    """At once: with no lease, the drain ends on the signal itself; the drain timeout (600 s
    here) would have exited non-zero."""
    name = start(podman_scope.container("sidecar"))
    wait_healthy(name)
    podman("kill", "--signal", "TERM", name)
    assert exit_code(name) == 0


@pytest.mark.parametrize("image", [SIDECAR_IMAGE, SIDECAR_API_IMAGE])
def test_version_inside_the_image_is_the_package_version(image, podman_scope):
    out = podman("run", "--rm", "--name", podman_scope.container(), image, "--version")
    assert out.stdout.strip() == f"ecs-protection-sidecar {VERSION}"
    label = inspect("image", image)["Config"]["Labels"]["org.opencontainers.image.version"]
    assert label == VERSION


@pytest.mark.parametrize(
    ("image", "has_boto3"), [(SIDECAR_IMAGE, False), (SIDECAR_API_IMAGE, True)]
)
def test_only_the_api_image_carries_boto3(image, has_boto3, podman_scope):
    probe = podman(
        "run", "--rm", "--name", podman_scope.container(), "--entrypoint", "python", image,
        "-c", "import importlib.util as u; print(bool(u.find_spec('boto3')))",
    )  # fmt: skip
    assert probe.stdout.strip() == str(has_boto3)


@pytest.mark.parametrize("image", [SIDECAR_IMAGE, SIDECAR_API_IMAGE])
def test_the_layers_added_to_the_base_stay_within_budget(image, capsys):
    added = added_bytes(image)
    with capsys.disabled():
        print(  # noqa: T201 (the figure the docs quote)
            f"\n{image}: {added / MB:.1f} MB added to the base (budget {BUDGETS[image] / MB:.0f})"
        )
    assert added <= BUDGETS[image]


def test_the_pinned_aiohttp_in_the_image_answers_malformed_requests_in_json(podman_scope):
    """sidecar/server.py's override of aiohttp's private handler, on the image's pinned
    aiohttp: a request aiohttp cannot parse gets the API's JSON error, not text/plain."""
    name = start(podman_scope.container("sidecar"))
    wait_healthy(name)
    raw = (
        "import socket; s = socket.create_connection(('127.0.0.1', 31680), timeout=60);"
        "s.sendall(b'POST /busy HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: abc\\r\\n\\r\\n');"
        "print(s.recv(65536).decode())"
    )
    answer = podman("exec", name, "python", "-c", raw).stdout
    head, _, body = answer.replace("\r\n", "\n").partition("\n\n")
    assert head.split()[1] == "400", head
    assert "application/json" in head
    assert json.loads(body)["error"]["code"] == "BadRequest"
    assert "Traceback" not in podman("logs", name).stderr


def test_the_example_app_image_has_the_client_of_this_repository(podman_scope):
    out = podman(
        "run", "--rm", "--name", podman_scope.container("app"), "--entrypoint", "ecs-protection",
        APP_IMAGE, "--version",
    )  # fmt: skip
    assert out.stdout.strip() == f"ecs-protection {CLIENT_VERSION}"
    config = inspect("image", APP_IMAGE)["Config"]
    assert config["Entrypoint"] == ["ecs-protection", "run", "--"]
    assert config["Cmd"] == ["/app/worker.sh"]


def test_a_rebuild_after_a_source_change_ships_the_new_code(tmp_path, podman_scope):
    """Podman's layer cache must not keep the old code: a RUN that bind-mounts the build
    stage's wheels is not rebuilt by buildah when only those wheels changed."""
    context = tmp_path / "context"
    context.mkdir()
    for item in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.pypi.md", "LICENSE"):
        shutil.copy(ROOT / item, context / item)
    for folder in ("sidecar", "requirements"):
        shutil.copytree(
            ROOT / folder, context / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    marker = f"# {podman_scope.container('marker')}"  # unique: no cache entry can have it
    build = (
        "build",
        "--format",
        "docker",
        "--network=host",
        "--build-arg",
        f"PYTHON={base_image()}",
    )
    tag = f"localhost/{podman_scope.container('rebuild')}:test"
    try:
        podman(*build, "--tag", tag, str(context), timeout=900)  # from cache: unchanged inputs
        with (context / "sidecar" / "healthcheck.py").open("a") as source:
            source.write(f"{marker}\n")
        # The build stage tagged too, so that removing the tags leaves no image behind.
        podman(*build, "--target", "build", "--tag", f"{tag}-build", str(context), timeout=900)
        podman(*build, "--tag", tag, str(context), timeout=900)
        shipped = podman(
            "run", "--rm", "--name", podman_scope.container("read"), "--entrypoint", "python",
            tag, "-c", "import sidecar.healthcheck as h; print(open(h.__file__).read())",
        )  # fmt: skip
        assert marker in shipped.stdout
    finally:
        podman("rmi", "--force", tag, f"{tag}-build", check=False)
