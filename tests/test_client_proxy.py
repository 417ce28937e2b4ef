"""Calls to the sidecar never go through a proxy, whatever the environment says.

Corporate images often set HTTP_PROXY (or ALL_PROXY) with a NO_PROXY that lists only
the ECS link-local addresses: 127.0.0.1:31680 must still be reached directly, by the
sync and async clients, the CLI and the sidecar's health check.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ecs_protection import AsyncClient, Client, busy
from tests.client_support import ROOT, RecordingProxy, dead_proxy_url
from tests.processes import sidecar_python

PROXY_VARIABLES = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
)
USUAL_NO_PROXY = "169.254.169.254,169.254.170.2"


@pytest.fixture(params=["recording", "dead"])
def proxy(request):
    """A proxy URL that must never be used: one that counts connections, or nothing."""
    if request.param == "dead":
        yield None, dead_proxy_url()
        return
    recording = RecordingProxy()
    yield recording, recording.url
    recording.close()


def proxy_env(url: str) -> dict[str, str]:
    env = dict.fromkeys(PROXY_VARIABLES, url)
    env.update({"NO_PROXY": USUAL_NO_PROXY, "no_proxy": USUAL_NO_PROXY})
    return env


@pytest.fixture
def proxied(proxy, monkeypatch):
    recording, url = proxy
    for name, value in proxy_env(url).items():
        monkeypatch.setenv(name, value)
    yield url
    assert recording is None or recording.connections == 0


def test_sync_client_ignores_proxy_settings(fake, proxied):
    with Client(fake.url, strict=True) as client, busy(client=client) as lease:
        assert lease.protected
        assert client.state() is not None
    assert [s.path for s in fake.seen] == ["/busy", "/state", "/idle"]


def test_a_session_passed_in_ignores_proxy_settings_too(fake, proxied):
    import requests  # noqa: PLC0415

    with Client(fake.url, strict=True, session=requests.Session()) as client:
        assert client.drain() == 0


async def test_async_client_ignores_proxy_settings(fake, proxied):
    async with AsyncClient(fake.url, strict=True) as client, busy(async_client=client) as lease:
        assert lease.protected
    assert [s.path for s in fake.seen] == ["/busy", "/idle"]


def test_cli_ignores_proxy_settings(fake, proxy):
    _, url = proxy
    result = subprocess.run(
        [sys.executable, "-m", "ecs_protection", "state"],
        env={**os.environ, **proxy_env(url), "TASK_PROTECTION_URL": fake.url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"busy": false' in result.stdout


def test_healthcheck_ignores_proxy_settings(fake, proxy):
    _, url = proxy
    port = fake.url.rsplit(":", 1)[1]
    result = subprocess.run(
        [sidecar_python(), "-m", "sidecar.healthcheck"],
        env={**os.environ, **proxy_env(url), "TASK_PROTECTION_PORT": port},
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [s.path for s in fake.seen] == ["/healthz"]
