"""Configuration from plain dicts: defaults, overrides, every problem reported at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from sidecar.config import (
    BACKENDS,
    BackendName,
    Config,
    ConfigError,
    _backend_named,
    build_arg_parser,
    declared,
    settings_table,
    version,
)


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


ON_ECS = {"ECS_CONTAINER_METADATA_URI_V4": "http://169.254.170.2/v4/abc"}


def test_on_ecs_without_the_agent_endpoint_auto_uses_the_api():
    """An agent older than 1.65.0: the ECS API when boto3 is there, never the simulation."""
    config = Config.from_environ(ON_ECS, api_available=lambda: True)
    assert config.backend == "api"
    assert "older than 1.65.0" in config.backend_reason


def test_on_ecs_without_the_agent_endpoint_or_boto3_refuses_to_start():
    with pytest.raises(ConfigError) as caught:
        Config.from_environ(ON_ECS, api_available=lambda: False)
    [problem] = caught.value.problems
    assert "older than 1.65.0" in problem
    assert "ecs-protection-sidecar[api]" in problem


def test_the_simulation_is_refused_on_ecs_even_when_asked_for():
    with pytest.raises(ConfigError, match="only simulates protection"):
        Config.from_environ({**ON_ECS, "TASK_PROTECTION_BACKEND": "local"})


def test_off_ecs_auto_is_the_simulation_and_says_why():
    config = Config.from_environ({}, api_available=lambda: True)
    assert (config.backend, config.backend_reason.split(":")[0]) == ("local", "auto")


@pytest.mark.parametrize("value", ["0.001", "0.5", "-1", "3601"])
def test_metadata_polling_has_a_floor_of_a_second(value):
    with pytest.raises(ConfigError, match="METADATA_POLL_SECONDS"):
        Config.from_environ({"TASK_PROTECTION_METADATA_POLL_SECONDS": value})


def test_metadata_polling_zero_still_turns_stop_detection_off():
    config = Config.from_environ({"TASK_PROTECTION_METADATA_POLL_SECONDS": "0"})
    assert config.metadata_poll_seconds == 0.0
    assert Config.from_environ({"TASK_PROTECTION_METADATA_POLL_SECONDS": "1"}).metadata_poll_seconds


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_LEASES", "1_000"),
        ("PORT", "+80"),
        ("PORT", "0x50"),
        ("IDLE_GRACE_SECONDS", "1_0"),
        ("IDLE_GRACE_SECONDS", "inf"),
        ("IDLE_GRACE_SECONDS", "1e3"),
        ("DRAIN_TIMEOUT_SECONDS", "2m"),
    ],
)
def test_only_plain_decimal_numbers_are_accepted(name, value):
    with pytest.raises(ConfigError, match=f"TASK_PROTECTION_{name}"):
        Config.from_environ({f"TASK_PROTECTION_{name}": value})


def test_abbreviated_flags_are_refused():
    with pytest.raises(SystemExit):
        Config.from_environ({}, ["--po", "5"])


@pytest.mark.parametrize(
    "token", ["x" * 15, "tøken-with-non-ascii", "has space in the middle", "tab\tin-the-token-xx"]
)
def test_tokens_must_be_long_printable_ascii(token):
    with pytest.raises(ConfigError, match="printable ASCII"):
        Config.from_environ({"TASK_PROTECTION_TOKEN": token})


def test_the_docs_table_is_the_declared_settings():
    """docs/configuration.md's table comes from the declarations; regenerate it with
    `python scripts/docs_gen.py`."""
    page = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    begin = "<!-- settings table: generated from sidecar/config.py -->\n"
    end = "\n<!-- end of settings table -->"
    assert page[page.index(begin) + len(begin) : page.index(end)] == settings_table()


def test_every_declared_setting_has_a_flag_an_env_var_and_help():
    """One declaration gives the variable, the flag (none for a secret), the default and
    the allowed values."""
    parser_help = build_arg_parser().format_help()
    for field, spec, default in declared():
        assert spec.env == "TASK_PROTECTION_" + spec.name
        assert (spec.flag is None) == spec.secret
        assert spec.flag is None or spec.flag in parser_help
        assert spec.env in parser_help
        assert getattr(Config(), field) == default
    config = Config.from_environ({"TASK_PROTECTION_IDLE_GRACE_SECONDS": "3"}, ["--port", "5"])
    assert (config.idle_grace_seconds, config.port) == (3.0, 5)


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as caught:
        Config.from_environ({}, ["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"ecs-protection-sidecar {version()}"


@pytest.mark.parametrize(
    "argv", [["--token", "a-long-enough-token-value"], ["--token=a-long-enough-token-value"]]
)
def test_the_token_is_never_a_flag(argv):
    """A flag would show the secret in every process listing: refused, pointing at the
    variables that carry it."""
    with pytest.raises(ConfigError) as caught:
        Config.from_environ({}, argv)
    [problem] = caught.value.problems
    assert "\n" not in problem
    assert "TASK_PROTECTION_TOKEN" in problem
    assert "a-long-enough-token-value" not in problem
    assert "--token" not in build_arg_parser().format_help().replace("--token-file", "")


def test_the_token_can_come_from_a_file(tmp_path):
    """A mounted secret: one trailing newline stripped, nothing else."""
    path = tmp_path / "token"
    path.write_text("a-long-enough-token-value\n")
    config = Config.from_environ({"TASK_PROTECTION_TOKEN_FILE": str(path)})
    assert config.token == "a-long-enough-token-value"
    assert "a-long-enough-token-value" not in repr(config.describe())
    flagged = Config.from_environ({}, ["--token-file", str(path)])
    assert flagged.token == "a-long-enough-token-value"


@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"], ids=["none", "LF", "CRLF"])
def test_the_sidecar_and_the_client_read_a_token_file_alike(tmp_path, ending):
    """One secret file mounted in both containers: the same token on both sides, or
    every POST of the app would be refused (401)."""
    from ecs_protection._protocol import Settings  # noqa: PLC0415  (the client's side)

    path = tmp_path / "token"
    path.write_bytes(b"a-long-enough-token-value" + ending)
    env = {"TASK_PROTECTION_TOKEN_FILE": str(path)}
    assert Config.from_environ(env).token == Settings.from_environ(env).token
    assert Settings.from_environ(env).token == "a-long-enough-token-value"


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_token_file_that_is_no_regular_file_is_refused_without_blocking(tmp_path, kind):
    """A FIFO would block the open until a writer came (never), and the sidecar's signal
    handlers are installed by then: not even SIGTERM would end it."""
    named = {"fifo": str(tmp_path / "token"), "device": "/dev/zero", "directory": str(tmp_path)}
    if kind == "fifo":
        os.mkfifo(tmp_path / "token")
    with pytest.raises(ConfigError, match="not a regular file"):
        Config.from_environ({"TASK_PROTECTION_TOKEN_FILE": named[kind]})


def test_a_bad_token_from_a_file_names_the_file(tmp_path):
    path = tmp_path / "token"
    path.write_text("short\n")
    with pytest.raises(ConfigError) as caught:
        Config.from_environ({"TASK_PROTECTION_TOKEN_FILE": str(path)})
    assert any("TASK_PROTECTION_TOKEN_FILE" in problem for problem in caught.value.problems)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "is empty"),
        ("\n", "is empty"),
        ("a-long-enough-token-value\n\n", "printable ASCII"),  # only one newline is stripped
    ],
)
def test_a_token_file_that_holds_no_valid_token_is_refused(tmp_path, content, expected):
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(ConfigError, match=expected) as caught:
        Config.from_environ({"TASK_PROTECTION_TOKEN_FILE": str(path)})
    assert all("\n" not in problem for problem in caught.value.problems)


def test_an_unreadable_token_file_is_refused(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="TASK_PROTECTION_TOKEN_FILE") as caught:
        Config.from_environ({"TASK_PROTECTION_TOKEN_FILE": str(missing)})
    [problem] = caught.value.problems
    assert "cannot be read" in problem
    assert "\n" not in problem


def test_a_token_and_a_token_file_together_are_refused(tmp_path):
    path = tmp_path / "token"
    path.write_text("a-long-enough-token-value")
    with pytest.raises(ConfigError, match="both") as caught:
        Config.from_environ(
            {
                "TASK_PROTECTION_TOKEN": "another-long-token-value",
                "TASK_PROTECTION_TOKEN_FILE": str(path),
            }
        )
    [problem] = caught.value.problems
    assert "another-long-token-value" not in problem


def test_the_sidecar_refuses_a_token_flag_with_one_line_and_exit_2():
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "--token", "a-long-enough-token-value"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "TASK_PROTECTION_TOKEN" in line
    assert "a-long-enough-token-value" not in line


def test_the_backend_names_are_declared_once_and_an_unknown_one_is_an_error():
    """No fallback to the simulation: a name that is not a backend cannot become one."""
    assert ("auto", *get_args(BackendName)) == BACKENDS
    for name in get_args(BackendName):
        assert _backend_named(name) == name
    with pytest.raises(ValueError, match="magic"):
        _backend_named("magic")
