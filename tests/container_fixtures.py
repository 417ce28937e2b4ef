"""The `container` marker and the fixtures of the tests that run real containers.

Where podman cannot run, those tests do not run and the session says why in one line; under
CI=true that is a failure instead, since a CI run that quietly skipped them proves nothing.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import pytest

from tests.containers import (
    APP_IMAGE,
    SIDECAR_API_IMAGE,
    SIDECAR_IMAGE,
    PodmanScope,
    image_exists,
    podman_unavailable,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

MARKER = "container"
UNAVAILABLE = pytest.StashKey[str | None]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: runs real containers with podman (images from scripts/images)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Asked once, and only when a container test was collected: `podman info` takes a while.
    if any(item.get_closest_marker(MARKER) for item in items):
        # scripts/test has already found out, and said why, when it could not build images.
        said = os.environ.get("ECS_PROTECTION_NO_CONTAINERS")
        config.stash[UNAVAILABLE] = said or podman_unavailable()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker(MARKER) is None:
        return
    reason = item.config.stash.get(UNAVAILABLE, None)
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"container tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"container tests did not run: {reason}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if MARKER in report.keywords:
        # Setup, call and teardown of each container test.
        spent[report.nodeid] = spent.get(report.nodeid, 0.0) + report.duration


spent: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if spent:
        # What the container tests cost this run (the images are built before pytest).
        terminalreporter.write_line(
            f"container tests: {len(spent)} in {sum(spent.values()):.0f} s of this run"
        )
    reason = terminalreporter.config.stash.get(UNAVAILABLE, None)
    if reason is not None:
        terminalreporter.write_line(
            f"CONTAINER TESTS DID NOT RUN: {reason} (install podman, or see scripts/test)",
            red=True,
            bold=True,
        )


@pytest.fixture(scope="session")
def container_images() -> dict[str, str]:
    """The images scripts/images builds (scripts/test builds them before pytest)."""
    images = {"sidecar": SIDECAR_IMAGE, "sidecar-api": SIDECAR_API_IMAGE, "app": APP_IMAGE}
    missing = [image for image in images.values() if not image_exists(image)]
    if missing:
        pytest.fail(f"missing images {missing}: run scripts/images first", pytrace=False)
    return images


@pytest.fixture
def podman_scope(request: pytest.FixtureRequest) -> Iterator[PodmanScope]:
    """Names for this test's containers, pods and networks; all removed afterwards."""
    purpose = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:24]
    with PodmanScope(purpose) as scope:
        yield scope
