"""Fixtures of the client's tests, as a plugin: the root conftest loads it, and so does the
client's nox run (`-p tests.client_fixtures`), which goes without the conftest (the
sidecar's fakes need Python 3.11, the client's tests run on 3.9 too)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ecs_protection import Client
from tests.client_support import FakeSidecar

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def fake() -> Iterator[FakeSidecar]:
    """A FakeSidecar for one test."""
    with FakeSidecar() as sidecar:
        yield sidecar


@pytest.fixture
def client(fake: FakeSidecar) -> Iterator[Client]:
    """A sync Client talking to the test's FakeSidecar."""
    with Client(fake.url) as c:
        yield c
