"""require_protection: the job starts only once the sidecar confirmed protection.

Whatever stands in the way (no sidecar, 503, a drain, a full table, an answer that is
not the API's), a required job does not start; without the requirement only a missing
sidecar and an unconfirmed protection let it run unprotected.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import ecs_protection
from ecs_protection import (
    AsyncClient,
    Client,
    InvalidAnswerError,
    ProtectionUnavailableError,
    SidecarUnavailableError,
    TaskDrainingError,
    TooManyLeasesError,
    busy,
)
from ecs_protection import _protocol as protocol
from tests.client_support import NOWHERE, FakeSidecar
from tests.test_client_cli import env_for, one_line

CLI = [sys.executable, "-m", "ecs_protection"]


def test_an_unreachable_sidecar_stops_a_required_block():
    """SidecarUnavailableError, and the block never runs, even without strict mode."""
    with (
        Client(NOWHERE, strict=False) as client,
        pytest.raises(SidecarUnavailableError, match="unreachable"),
        busy(client=client, require_protection=True),
    ):
        pytest.fail("the body must not run")


def test_an_unreachable_sidecar_stops_a_required_hold(caplog, monkeypatch):
    """No "carrying on without task protection" warning either: nothing carries on."""
    monkeypatch.setattr(protocol, "_warned_urls", set())  # as in a fresh process
    with (
        caplog.at_level(logging.WARNING, "ecs_protection"),
        Client(NOWHERE, strict=False) as client,
        pytest.raises(SidecarUnavailableError),
    ):
        client.hold(require_protection=True)
    assert "carrying on" not in caplog.text


def test_the_default_hold_also_requires_when_asked(monkeypatch):
    monkeypatch.setenv("TASK_PROTECTION_URL", NOWHERE)
    monkeypatch.setattr(ecs_protection._busy, "_default_client", None)
    with pytest.raises(SidecarUnavailableError):
        ecs_protection.hold(require_protection=True)


async def test_an_unreachable_sidecar_stops_a_required_async_block():
    async with AsyncClient(NOWHERE, strict=False) as client:
        with pytest.raises(SidecarUnavailableError):
            async with busy(async_client=client, require_protection=True):
                pytest.fail("the body must not run")


async def test_a_required_async_block_without_a_client_stops_too(monkeypatch):
    monkeypatch.setenv("TASK_PROTECTION_URL", NOWHERE)
    with pytest.raises(SidecarUnavailableError):
        async with busy(require_protection=True):
            pytest.fail("the body must not run")


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (503, "ProtectionUnavailable", ProtectionUnavailableError),
        (503, "Draining", TaskDrainingError),
        (429, "TooManyLeases", TooManyLeasesError),
    ],
)
def test_every_refusal_stops_a_required_block(fake, client, status, code, error):
    fake.busy_error = (status, code)
    with pytest.raises(error), busy(client=client, require_protection=True):
        pytest.fail("the body must not run")
    assert fake.leases == set()


def test_an_answer_that_is_not_the_api_stops_a_required_block(fake, client):
    fake.script("/busy", (200, b'{"lease": "someone-else", "protected": true}'))
    with pytest.raises(InvalidAnswerError), busy(client=client, require_protection=True):
        pytest.fail("the body must not run")
    assert fake.leases == set()


def test_without_the_requirement_an_unreachable_sidecar_still_runs_the_block(monkeypatch):
    monkeypatch.setattr(protocol, "_warned_urls", set())  # leaves other tests a fresh process
    with Client(NOWHERE, strict=False) as client, busy(client=client) as lease:
        assert lease.protected is False


# ---- the command ----------------------------------------------------------------------


def test_cli_require_protection_with_no_sidecar_is_exit_69_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    result = subprocess.run(
        [*CLI, "busy", "--require-protection", "--", "touch", str(marker)],
        env=env_for(NOWHERE),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 69
    assert "unreachable" in one_line(result.stderr)
    assert not marker.exists()


def test_cli_require_protection_unconfirmed_is_exit_69_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    with FakeSidecar(busy_error=(503, "ProtectionUnavailable")) as fake:
        result = subprocess.run(
            [*CLI, "busy", "--require-protection", "--", "touch", str(marker)],
            env=env_for(fake.url),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert fake.leases == set()
    assert result.returncode == 69
    assert "ProtectionUnavailable" in one_line(result.stderr)
    assert not marker.exists()


def test_cli_help_says_what_a_required_job_does():
    result = subprocess.run(
        [*CLI, "busy", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    text = " ".join(result.stdout.split())
    assert "exit 69" in text
    assert "--require-protection" in text
