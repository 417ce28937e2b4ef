"""Configuration from plain dicts: defaults, overrides, every problem reported at once."""

from __future__ import annotations

import pytest

from sidecar.config import Config, ConfigError


def test_defaults_match_the_contract():
    config = Config.from_environ({})
    assert (config.host, config.port, config.backend) == ("127.0.0.1", 31680, "local")
    assert (config.expires_minutes, config.idle_grace_seconds) == (60, 10.0)
    assert (config.drain_timeout_seconds, config.token, config.log_format) == (120.0, None, "json")
    assert (config.max_protected_seconds, config.max_leases) == (None, 10000)


def test_auto_picks_the_agent_when_ecs_agent_uri_is_set():
    config = Config.from_environ({"ECS_AGENT_URI": "http://169.254.170.2/api/abc"})
    assert (config.backend, config.agent_uri) == ("agent", "http://169.254.170.2/api/abc")


def test_explicit_local_wins_over_the_agent_uri():
    env = {"ECS_AGENT_URI": "http://x/api/y", "TASK_PROTECTION_BACKEND": "LOCAL"}
    assert Config.from_environ(env).backend == "local"


def test_flags_override_variables():
    config = Config.from_environ(
        {"TASK_PROTECTION_PORT": "1234", "TASK_PROTECTION_LOG_FORMAT": "json"},
        ["--port", "4321", "--log-format", "text", "--max-protected-seconds", "7200"],
    )
    assert (config.port, config.log_format, config.max_protected_seconds) == (4321, "text", 7200)


def test_all_problems_are_reported_together():
    with pytest.raises(ConfigError) as caught:
        Config.from_environ(
            {
                "TASK_PROTECTION_PORT": "http",
                "TASK_PROTECTION_EXPIRES_MINUTES": "2881",
                "TASK_PROTECTION_BACKEND": "magic",
                "TASK_PROTECTION_IDLE_GRACE_SECONDS": "nan",
                "TASK_PROTECTION_MAX_LEASES": "0",
                "TASK_PROTECTION_LOG_FORMAT": "xml",
            }
        )
    assert [p.split("=")[0] for p in caught.value.problems] == [
        "TASK_PROTECTION_PORT",
        "TASK_PROTECTION_BACKEND",
        "TASK_PROTECTION_EXPIRES_MINUTES",
        "TASK_PROTECTION_IDLE_GRACE_SECONDS",
        "TASK_PROTECTION_LOG_FORMAT",
        "TASK_PROTECTION_MAX_LEASES",
    ]
    assert "from 1 to 2880" in str(caught.value)


def test_agent_backend_without_agent_uri_is_an_error():
    with pytest.raises(ConfigError, match="needs ECS_AGENT_URI"):
        Config.from_environ({"TASK_PROTECTION_BACKEND": "agent"})


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "example.com"])  # noqa: S104
def test_a_non_loopback_address_needs_a_token(host):
    with pytest.raises(ConfigError, match="not a loopback address"):
        Config.from_environ({"TASK_PROTECTION_HOST": host})
    config = Config.from_environ(
        {"TASK_PROTECTION_HOST": host, "TASK_PROTECTION_TOKEN": "a-long-enough-token"}
    )
    assert config.host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost"])
def test_loopback_addresses_need_no_token(host):
    assert Config.from_environ({"TASK_PROTECTION_HOST": host}).host == host


def test_a_short_token_is_refused():
    with pytest.raises(ConfigError, match="at least 16"):
        Config.from_environ({"TASK_PROTECTION_TOKEN": "short"})


def test_empty_max_protected_means_no_cap():
    assert (
        Config.from_environ({"TASK_PROTECTION_MAX_PROTECTED_SECONDS": ""}).max_protected_seconds
        is None
    )


def test_describe_never_shows_the_token():
    config = Config.from_environ({"TASK_PROTECTION_TOKEN": "super-secret-value-1"})
    assert "super-secret-value-1" not in repr(config.describe())
