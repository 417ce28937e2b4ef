"""The image's dependencies are pinned with hashes (requirements/, made by scripts/lock from
pyproject.toml), so two builds of a version install the same thing; the pins stay in step
with pyproject.toml, and aiohttp, whose private classes sidecar/server.py subclasses, is the
version these tests run on."""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_urldispatcher import _default_expect_handler
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from sidecar.server import _JsonErrorHandler, _JsonErrorServer, make_runner

ROOT = Path(__file__).parent.parent
PINS = {"": ROOT / "requirements" / "image.txt", "api": ROOT / "requirements" / "image-api.txt"}
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)(?: ; (.+?))?\s*\\?$")


def pinned(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) for each requirement of a compiled file."""
    found: dict[str, tuple[str, list[str]]] = {}
    name = ""
    for line in path.read_text().splitlines():
        if match := PIN.match(line):
            name = match[1].lower()
            found[name] = (match[2], [])
        elif line.strip().startswith("--hash=sha256:"):
            found[name][1].append(line.strip().split(":", 1)[1].rstrip(" \\"))
    return found


@pytest.mark.parametrize("extras", ["", "api"])
def test_every_pin_is_exact_and_hashed_and_satisfies_pyproject(extras):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    if extras:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extras]]
    pins = pinned(PINS[extras])
    assert pins
    for requirement in wanted:
        version, _ = pins[requirement.name.lower()]
        assert requirement.specifier.contains(version), (requirement, version)
    for name, (_, hashes) in pins.items():
        assert hashes, f"{name} has no hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name


def test_the_pins_are_what_scripts_lock_makes_from_pyproject(tmp_path):
    """Regenerated (existing pins kept), the files come out the same: a dependency added to
    or dropped from pyproject.toml without `scripts/lock` fails here."""
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    out = tmp_path / "requirements"
    shutil.copytree(ROOT / "requirements", out)
    result = subprocess.run(
        [str(ROOT / "scripts" / "lock"), "--output-dir", str(out)],
        env={**os.environ, "UV": uv},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for path in PINS.values():
        assert (out / path.name).read_text() == path.read_text(), f"run scripts/lock: {path}"


def test_aiohttp_is_bounded_to_the_versions_tested():
    bound = next(
        Requirement(line.split("#", 1)[0])
        for line in (ROOT / "requirements" / "bounds.txt").read_text().splitlines()
        if line.startswith("aiohttp")
    )
    assert bound.specifier & SpecifierSet(">=99") != bound.specifier  # an upper bound
    assert any(spec.operator == "<" for spec in bound.specifier)
    for path in PINS.values():
        assert bound.specifier.contains(pinned(path)["aiohttp"][0])


def test_the_tests_run_on_the_pinned_aiohttp():
    """sidecar/server.py's override is tested (tests/test_server.py) against the aiohttp the
    image installs: scripts/test installs the test environment within the pins."""
    pins = {pinned(path)["aiohttp"][0] for path in PINS.values()}
    assert pins == {importlib.metadata.version("aiohttp")}, (
        "the test environment's aiohttp is not the image's: run scripts/test (it installs "
        "with -c requirements/image-api.txt) or scripts/lock"
    )


async def test_the_override_reaches_what_the_pinned_aiohttp_has():
    """What sidecar/server.py relies on beyond aiohttp's public API, checked on this version:
    AppRunner._make_server builds a web.Server with _loop and _kwargs, which the override
    passes on to RequestHandler (with the connection guard and header deadline); the
    methods it overrides keep their signatures; the state the guard reads is there."""
    runner = make_runner(web.Application())
    await runner.setup()
    try:
        server = runner.server
        assert type(server) is _JsonErrorServer
        handler = server()
        assert type(handler) is _JsonErrorHandler
        assert handler.guard is runner.guard
        assert handler.header_timeout == runner.header_timeout
        assert set(vars(server)) >= {"_loop", "_kwargs"}
    finally:
        await runner.cleanup()
    for name in ("handle_error", "finish_response", "connection_made", "connection_lost"):
        ours = inspect.signature(getattr(_JsonErrorHandler, name)).parameters
        theirs = inspect.signature(getattr(RequestHandler, name)).parameters
        assert list(ours) == list(theirs), name
    # The guard asks whether a connection waits for its next request as aiohttp's own
    # keep-alive check does: the handler's _waiter and _messages.
    assert {"_waiter", "_messages"} <= set(RequestHandler.__slots__)
    assert callable(RequestHandler.log_exception)
    assert callable(RequestHandler.force_close)
    # web.py answers `Expect: 100-continue` through aiohttp's own handler.
    assert list(inspect.signature(_default_expect_handler).parameters) == ["request"]


def test_nothing_in_the_dockerfile_is_architecture_specific():
    """One Dockerfile for linux/amd64 and linux/arm64 (buildx, or podman --platform)."""
    dockerfile = (ROOT / "Dockerfile").read_text().lower()
    for word in ("amd64", "x86_64", "arm64", "aarch64", "--platform", "uname"):
        assert word not in dockerfile, word


def test_the_pins_install_by_hash_on_arm64_and_python_3_12(tmp_path):
    """The build stage's `pip download --require-hashes` as it runs on python:3.12-slim for
    linux/arm64, the platform no build here covers: every file it picks has a pinned hash.
    The default image's pins: the -api image adds only pure-Python packages to them."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--require-hashes", "--no-deps",
         "--only-binary=:all:", "--platform", "manylinux_2_28_aarch64", "--python-version",
         "3.12", "--dest", str(tmp_path), "-r", str(PINS[""])],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [aiohttp] = [path.name for path in tmp_path.glob("aiohttp-*.whl")]
    assert "cp312" in aiohttp
    assert "aarch64" in aiohttp
