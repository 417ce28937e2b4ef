"""Podman for the container tests: the project's settings, names unique to each test, and
cleanup that removes whatever a test made, even when it fails.

Standard library only: scripts/images imports it before any virtualenv exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).parent.parent
CONTAINERS_CONF = ROOT / "containers" / "containers.conf"

# The images scripts/images builds; their tags stay put so other test modules can name them.
SIDECAR_IMAGE = "localhost/ecs-protection-sidecar:test"
SIDECAR_API_IMAGE = "localhost/ecs-protection-sidecar:test-api"
APP_IMAGE = "localhost/ecs-protection-example-app:test"
BASE_REPOSITORY = "localhost/ecs-protection-test-base"
# Exactly what the stand-in base's root file system is made from (Debian bookworm's Python
# 3.11); these, the Containerfile and the host's CA bundle make its cache key.
MMDEBSTRAP_ARGS = (
    "--variant=minbase",
    "--include=python3,python3-pip,python3-venv,ca-certificates",
    "bookworm",
)
BASE_CONTAINERFILE = ROOT / "containers" / "test-base.Containerfile"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Every container, pod and network a test makes starts with this, so a leftover is
# recognisable (and removable) as ours.
NAME_PREFIX = "ecsp-test"

COMMAND_TIMEOUT = 300.0


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())  # each part hashed alone: no ambiguity
    return h.hexdigest()[:16]


def base_image() -> str:
    """The stand-in base's tag: its repository and the key of its inputs."""
    key = digest(
        json.dumps(MMDEBSTRAP_ARGS).encode(),
        BASE_CONTAINERFILE.read_bytes(),
        HOST_CA_BUNDLE.read_bytes(),
    )
    return f"{BASE_REPOSITORY}:{key}"


class PodmanError(RuntimeError):
    """A podman command failed; the message carries its command line and stderr."""


def podman_env() -> dict[str, str]:
    """The environment podman runs in: the project's containers.conf, nothing global."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(
    *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS...` with the project's settings, its output captured as text."""
    result = subprocess.run(
        ["podman", *args],
        env=podman_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise PodmanError(
            f"podman {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
        )
    return result


def podman_unavailable() -> str | None:
    """Why podman cannot run containers here, or None when it can."""
    if shutil.which("podman") is None:
        return "podman is not installed"
    try:
        result = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    except subprocess.TimeoutExpired:
        return "`podman info` did not answer within 60 s"
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or ["no message"]
        return f"`podman info` failed: {lines[-1]}"
    return None


def image_exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def inspect(kind: str, name: str) -> dict[str, Any]:
    """`podman KIND inspect NAME` as a dict (KIND: container, image, pod, network)."""
    found: list[dict[str, Any]] = json.loads(podman(kind, "inspect", name).stdout)
    return found[0]


def added_bytes(image: str) -> int:
    """The uncompressed size of the layers IMAGE adds on top of the stand-in base."""
    base = inspect("image", base_image())
    ours = inspect("image", image)
    if ours["RootFS"]["Layers"][: len(base["RootFS"]["Layers"])] != base["RootFS"]["Layers"]:
        raise PodmanError(f"{image} is not built on {base_image()}: run scripts/images")
    return int(ours["Size"]) - int(base["Size"])


def unique_name(purpose: str) -> str:
    """A name no other test (or concurrent run on this machine) uses."""
    return f"{NAME_PREFIX}-{purpose}-{uuid.uuid4().hex[:10]}"


class PodmanScope:
    """Names the containers, pods and networks of one test and removes them all at the end.

    Use as a context manager (or the `podman_scope` fixture): every name handed out is
    removed on exit whether or not it was ever created, so a test that fails half-way
    leaves nothing behind.
    """

    def __init__(self, purpose: str = "t") -> None:
        self.purpose = purpose
        self.containers: list[str] = []
        self.pods: list[str] = []
        self.networks: list[str] = []

    def container(self, purpose: str = "") -> str:
        name = unique_name(f"{self.purpose}-{purpose}" if purpose else self.purpose)
        self.containers.append(name)
        return name

    def pod(self, purpose: str = "pod") -> str:
        name = unique_name(f"{self.purpose}-{purpose}")
        self.pods.append(name)
        return name

    def network(self, purpose: str = "net") -> str:
        name = unique_name(f"{self.purpose}-{purpose}")
        self.networks.append(name)
        return name

    def close(self) -> None:
        """Remove everything named here: containers, then pods, then networks."""
        failures = []
        # Containers first: a pod or network cannot go while something still uses it.
        for kind, names in (
            ("container", self.containers),
            ("pod", self.pods),
            ("network", self.networks),
        ):
            for name in reversed(names):
                # `network rm` has no --ignore in podman 4.3: "not found" is checked instead.
                ignore = () if kind == "network" else ("--ignore",)
                # Killed, not stopped: what the test wanted from it is over.
                now = ("--time", "0") if kind == "container" else ()
                result = podman(kind, "rm", "--force", *ignore, *now, name, check=False)
                if result.returncode != 0 and "not found" not in result.stderr:
                    failures.append(f"{kind} {name}: {result.stderr.strip()}")
            names.clear()
        if failures:
            raise PodmanError("cleanup failed: " + "; ".join(failures))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def poll_until(
    check: Callable[[], object], what: str, timeout: float = 120.0, interval: float = 0.5
) -> object:
    """Poll CHECK until it returns something truthy, and return that; fail after TIMEOUT (a
    generous deadline for a loaded machine, never a speed claim) saying what did not
    happen. Slower than tests.support.wait_until on purpose: each check may be a podman
    command."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


# Run inside a container by `http_inside`: one request to the sidecar over the container's
# own loopback, never through a proxy; prints the status, then the body.
_REQUEST = """
import sys, urllib.request as u
port, method, path, body = sys.argv[1:5]
request = u.Request(f"http://127.0.0.1:{port}{path}", data=body.encode() or None,
                    method=method, headers={"Content-Type": "application/json"})
try:
    answer = u.build_opener(u.ProxyHandler({})).open(request, timeout=60)
except u.HTTPError as error:
    answer = error
print(answer.status)
print(answer.read().decode())
"""


def http_inside(
    container: str, method: str, path: str, body: str = "", port: int = 31680
) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of one request made inside CONTAINER to 127.0.0.1:PORT."""
    result = podman("exec", container, "python", "-c", _REQUEST, str(port), method, path, body)
    status, _, text = result.stdout.partition("\n")
    return int(status), json.loads(text)


def container_state(name: str) -> dict[str, Any]:
    state: dict[str, Any] = inspect("container", name)["State"]
    return state


if __name__ == "__main__":
    import sys

    # `python -m tests.containers base-image`: the stand-in base's tag, for scripts/test.
    if sys.argv[1:] != ["base-image"]:
        sys.exit("usage: python -m tests.containers base-image")
    print(base_image())  # noqa: T201 (the command's output)
