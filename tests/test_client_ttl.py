"""Lease TTLs: 60 s with heartbeats unless told otherwise, and only TTLs the sidecar can keep.

A lease without a TTL outlives a killed worker for as long as its container runs, so
busy() and hold() take one by default; `ttl=None` says "none" explicitly. A TTL beyond
the sidecar's maximum (7 days) or below the client's floor (1 s: a lease that expires
before its heartbeat or its answer can come) is refused before any request.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import ecs_protection
from ecs_protection import AsyncClient, GracefulShutdown, busy
from ecs_protection._frameworks import LeaseOptions
from tests.test_client_cli import env_for, one_line

CLI = [sys.executable, "-m", "ecs_protection"]


# ---- the default ---------------------------------------------------------------------


def test_busy_takes_a_60_second_lease_by_default(fake, client):
    with busy(client=client):
        pass
    assert fake.posts("/busy")[0]["ttl_seconds"] == 60


def test_hold_takes_a_60_second_lease_by_default(fake, client):
    with client.hold():
        pass
    assert fake.posts("/busy")[0]["ttl_seconds"] == 60


def test_the_default_hold_takes_a_60_second_lease(fake, monkeypatch):
    monkeypatch.setenv("TASK_PROTECTION_URL", fake.url)
    monkeypatch.setattr(ecs_protection._busy, "_default_client", None)
    with ecs_protection.hold():
        pass
    assert fake.posts("/busy")[0]["ttl_seconds"] == 60


async def test_async_busy_and_hold_take_a_60_second_lease_by_default(fake):
    async with AsyncClient(fake.url) as client:
        async with busy(async_client=client):
            pass
        async with await client.hold():
            pass
    assert [b["ttl_seconds"] for b in fake.posts("/busy")] == [60, 60]


def test_ttl_none_says_no_ttl_explicitly(fake, client):
    with busy(client=client, ttl=None), client.hold(ttl=None):
        pass
    assert [("ttl_seconds" in b) for b in fake.posts("/busy")] == [False, False]


def test_the_integrations_share_the_default():
    assert LeaseOptions().ttl == 60


def test_the_command_sends_its_ttl_and_0_means_none(fake):
    for flag, expected in ((["--ttl", "0"], None), ([], 60), (["--ttl", "90"], 90)):
        result = subprocess.run(
            [*CLI, "busy", *flag, "--", "true"],
            env=env_for(fake.url),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert fake.posts("/busy")[-1].get("ttl_seconds") == expected


# ---- bounds --------------------------------------------------------------------------


MAX_TTL, MIN_TTL = 7 * 86400.0, 1.0  # the sidecar's maximum; the client's floor
BAD_TTLS = [1e12, MAX_TTL + 1, 1e-300, MIN_TTL / 2]


@pytest.mark.parametrize("ttl", BAD_TTLS)
def test_a_ttl_the_sidecar_cannot_keep_is_refused_before_any_request(fake, client, ttl):
    with pytest.raises(ValueError, match="ttl"):
        busy(client=client, ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        client.hold(ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        LeaseOptions(ttl=ttl)
    assert fake.seen == []


@pytest.mark.parametrize("ttl", BAD_TTLS)
async def test_an_async_hold_refuses_it_too(fake, ttl):
    async with AsyncClient(fake.url) as client:
        with pytest.raises(ValueError, match="ttl"):
            await client.hold(ttl=ttl)
    assert fake.seen == []


def test_the_bounds_themselves_are_accepted(fake, client):
    for ttl in (MIN_TTL, MAX_TTL):
        with client.hold(ttl=ttl):
            pass
    assert [b["ttl_seconds"] for b in fake.posts("/busy")] == [MIN_TTL, MAX_TTL]


@pytest.mark.parametrize("prefix", ["my job", "x" * 112, "", "é"])
def test_a_lease_prefix_the_sidecar_would_refuse_is_refused_before_any_request(
    fake, client, prefix
):
    """The sidecar answers 400 to a lease id outside [A-Za-z0-9._:-]{1,128}: said here,
    as a bad argument, not later as the sidecar's error (the CLI's exit 76)."""
    with pytest.raises(ValueError, match="lease prefix"):
        client.hold(lease_prefix=prefix)
    with pytest.raises(ValueError, match="lease prefix"), busy(client=client, lease_prefix=prefix):
        pytest.fail("the block must not run")
    assert fake.seen == []
    with client.hold(lease_prefix="x" * 111):  # the longest that fits: accepted
        pass
    assert len(fake.posts("/busy")[0]["lease"]) == 128


def test_a_wait_beyond_the_sidecars_maximum_is_refused(fake, client):
    with pytest.raises(ValueError, match="wait_seconds"):
        client.hold(wait_seconds=301)
    assert fake.seen == []


@pytest.mark.parametrize(
    "args",
    [
        ["--ttl", "1e12"],
        ["--ttl", "604801"],
        ["--ttl", "1e-300"],
        ["--ttl", "0.5"],
        ["--wait-seconds", "1e12"],
        ["--lease-prefix", "my job"],
        ["--lease-prefix", "x" * 112],
        ["--lease-prefix", ""],
    ],
)
def test_cli_out_of_range_values_are_one_line_and_exit_2(fake, tmp_path, args):
    marker = tmp_path / "ran"
    result = subprocess.run(
        [*CLI, "busy", *args, "--", "touch", str(marker)],
        env=env_for(fake.url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "error" in one_line(result.stderr)
    assert not marker.exists()
    assert fake.seen == []


# ---- every other duration: finite, and within what the clock calls can take --------------


@pytest.mark.parametrize("grace", [1e11, 604801])
def test_a_grace_past_a_week_is_refused(grace):
    """Its watcher thread waits in select(), which overflows past about 9e9 s: the
    fallback would die in a traceback instead of ending a process that never exits."""
    with pytest.raises(ValueError, match="grace_seconds"):
        GracefulShutdown(grace_seconds=grace)


# (timeout, poll_seconds, the one refused)
BAD_WAITS = [(float("nan"), 1.0, "timeout"), (1e11, 1.0, "timeout")]
BAD_WAITS += [(1.0, 0, "poll_seconds"), (1.0, float("inf"), "poll_seconds")]


@pytest.mark.parametrize(("limit", "poll", "name"), BAD_WAITS)
def test_wait_for_drain_refuses_a_wait_it_cannot_keep(fake, client, limit, poll, name):
    """A NaN timeout never passed (the wait went on for good); 0 polls in a busy loop."""
    with pytest.raises(ValueError, match=name):
        client.wait_for_drain(timeout=limit, poll_seconds=poll)
    assert fake.seen == []


@pytest.mark.parametrize(("limit", "poll", "name"), BAD_WAITS)
async def test_async_wait_for_drain_refuses_a_wait_it_cannot_keep(fake, limit, poll, name):
    async with AsyncClient(fake.url) as client:
        with pytest.raises(ValueError, match=name):
            await client.wait_for_drain(timeout=limit, poll_seconds=poll)
    assert fake.seen == []
