"""The `ecs-protection` command's errors and settings: one clear line, a documented code.

Against the stdlib fake sidecar, so that it runs on every Python the client supports.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading

import pytest

from ecs_protection._cli import build_parser
from ecs_protection._errors import ConfigurationError
from ecs_protection._protocol import Settings
from tests.client_support import NOWHERE
from tests.support import read_line, wait_for_line, wait_until

CLI = [sys.executable, "-m", "ecs_protection"]

TERM_REPORTER = (
    "import signal, sys, time;"
    "signal.signal(signal.SIGTERM, lambda *a: (print('TERM', flush=True), sys.exit(0)));"
    "print('ready', flush=True)\n"
    "while True: time.sleep(0.05)"
)


def env_for(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASK_PROTECTION_")}
    return {**env, "TASK_PROTECTION_URL": url, **extra}


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# ---- errors from the sidecar ---------------------------------------------------------------


def test_a_refused_token_is_one_line_and_exit_77(fake, tmp_path):
    fake.token = "right-token-1234"
    marker = tmp_path / "ran"
    result = cli(
        ["busy", "--", "touch", str(marker)],
        env_for(fake.url, TASK_PROTECTION_TOKEN="wrong-token-1234"),
    )
    assert result.returncode == 77
    assert "401" in one_line(result.stderr)
    assert not marker.exists()


@pytest.mark.parametrize("command", [["state"], ["busy", "--", "true"]])
def test_a_server_error_is_one_line_and_exit_76(fake, command):
    path = "/state" if command == ["state"] else "/busy"
    fake.script(path, (500, b'{"error": {"code": "InternalError", "message": "boom"}}'))
    result = cli(command, env_for(fake.url))
    assert result.returncode == 76
    assert "500 InternalError" in one_line(result.stderr)


def test_an_answer_that_is_not_the_api_is_exit_76(fake):
    fake.script("/state", (200, b"<html>a proxy page</html>"))
    result = cli(["state"], env_for(fake.url))
    assert result.returncode == 76
    assert "InvalidAnswer" in one_line(result.stderr)


def test_a_full_lease_table_is_exit_69(fake):
    fake.busy_error = (429, "TooManyLeases")
    result = cli(["busy", "--", "true"], env_for(fake.url))
    assert result.returncode == 69
    assert "TooManyLeases" in one_line(result.stderr)


def test_draining_is_exit_75_and_the_command_does_not_run(fake, tmp_path):
    fake.draining = True
    marker = tmp_path / "ran"
    result = cli(["busy", "--", "touch", str(marker)], env_for(fake.url))
    assert result.returncode == 75
    assert "stopping" in one_line(result.stderr)
    assert not marker.exists()


def test_sigterm_while_the_lease_is_taken_means_the_command_never_starts(fake, tmp_path):
    """Stopped while waiting for protection: the command would only be killed at once."""
    fake.gate = threading.Event()  # /busy answers wait until opened
    marker = tmp_path / "ran"
    proc = subprocess.Popen(
        [*CLI, "busy", "--", "touch", str(marker)],
        env=env_for(fake.url),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: fake.leases, timeout=30)  # the request is at the sidecar
        proc.send_signal(signal.SIGTERM)
        fake.gate.set()
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert not marker.exists()
    assert fake.leases == set()  # the lease was given back
    assert "not starting it" in proc.stderr.read()


def test_state_unreachable_is_exit_69():
    result = cli(["state"], env_for(NOWHERE))
    assert result.returncode == 69
    assert "unreachable" in one_line(result.stderr)


# ---- bad flags and environment values ------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["busy", "--ttl", "nan", "--", "true"],
        ["busy", "--ttl", "-1", "--", "true"],
        ["busy", "--ttl", "inf", "--", "true"],
        ["busy", "--wait-seconds", "soon", "--", "true"],
        ["run", "--hold-timeout", "nan", "--", "true"],
        ["run", "--hold-timeout", "-5", "--", "true"],
        # Past what the clock calls take (sigtimedwait: OverflowError, and the job orphaned).
        ["run", "--hold-timeout", "1e11", "--", "true"],
        ["run", "--poll-seconds", "0", "--", "true"],
        ["run", "--poll-seconds", "1e308", "--", "true"],
        ["busy"],
    ],
)
def test_bad_flags_are_one_line_and_exit_2(fake, args):
    result = cli(args, env_for(fake.url))
    assert result.returncode == 2
    assert "error" in one_line(result.stderr)
    assert fake.seen == []


@pytest.mark.parametrize("value", ["nan", "2m", "-1", "inf", "1e11"])
def test_a_bad_hold_timeout_variable_is_one_line_and_exit_2(fake, value):
    result = cli(
        ["run", "--", "true"], env_for(fake.url, TASK_PROTECTION_HOLD_TIMEOUT_SECONDS=value)
    )
    assert result.returncode == 2
    assert "TASK_PROTECTION_HOLD_TIMEOUT_SECONDS" in one_line(result.stderr)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TASK_PROTECTION_URL", "127.0.0.1:31680"), ("TASK_PROTECTION_STRICT", "2")],
)
@pytest.mark.parametrize("command", ["state", "busy", "run"])
def test_a_bad_client_variable_is_one_line_and_exit_2(fake, tmp_path, command, variable, value):
    marker = tmp_path / "ran"
    args = ["state"] if command == "state" else [command, "--", "touch", str(marker)]
    result = cli(args, env_for(fake.url, **{variable: value}))
    assert result.returncode == 2
    assert variable in one_line(result.stderr)
    assert not marker.exists()
    assert fake.seen == []


@pytest.mark.parametrize("command", [["state"], ["busy", "--", "true"], ["run", "--", "true"]])
def test_the_sidecars_drain_timeout_variable_is_not_read(fake, command):
    """A sidecar setting in the app container's environment changes nothing here."""
    result = cli(command, env_for(fake.url, TASK_PROTECTION_DRAIN_TIMEOUT_SECONDS="2m"))
    assert result.returncode == 0, result.stderr


# ---- the hold timeout ------------------------------------------------------------------------


def start_run(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "run", *args, "--", sys.executable, "-c", TERM_REPORTER],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for_stderr(proc: subprocess.Popen[str], needle: str) -> str:
    return wait_for_line(proc.stderr, needle)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_the_hold_timeout_defaults_to_25_seconds_not_the_sidecars_drain_timeout(fake):
    fake.leases.add("job")
    proc = start_run(
        ["--poll-seconds", "0.05"],
        env_for(fake.url, TASK_PROTECTION_DRAIN_TIMEOUT_SECONDS="0.1"),
    )
    try:
        assert read_line(proc.stdout) == "ready"
        proc.send_signal(signal.SIGTERM)
        assert "(at most 25s)" in wait_for_stderr(proc, "held back")
        fake.leases.clear()
        assert read_line(proc.stdout) == "TERM"
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)


def test_the_hold_timeout_variable_bounds_the_hold(fake):
    fake.leases.add("stuck")
    proc = start_run(
        ["--poll-seconds", "0.05"], env_for(fake.url, TASK_PROTECTION_HOLD_TIMEOUT_SECONDS="0.3")
    )
    try:
        assert read_line(proc.stdout) == "ready"
        proc.send_signal(signal.SIGTERM)
        assert "(at most 0.3s)" in wait_for_stderr(proc, "held back")
        assert read_line(proc.stdout) == "TERM"  # forwarded although the lease is held
        assert proc.wait(timeout=30) == 0
        assert fake.leases == {"stuck"}
    finally:
        stop(proc)


def test_run_tells_the_sidecar_to_drain_on_sigterm(fake):
    fake.token = "right-token-1234"
    proc = start_run([], env_for(fake.url, TASK_PROTECTION_TOKEN="right-token-1234"))
    try:
        assert read_line(proc.stdout) == "ready"
        proc.send_signal(signal.SIGTERM)
        assert read_line(proc.stdout) == "TERM"
        assert proc.wait(timeout=30) == 0
        assert fake.draining
        assert [s.authorization for s in fake.seen if s.path == "/drain"] == [
            "Bearer right-token-1234"
        ]
    finally:
        stop(proc)


def test_run_still_holds_sigterm_for_a_sidecar_without_drain(fake):
    # A sidecar older than POST /drain answers 404: the leases it holds still count.
    fake.leases.add("job")
    fake.script("/drain", (404, b'{"error": {"code": "NotFound", "message": "no route"}}'))
    proc = start_run(["--poll-seconds", "0.05"], env_for(fake.url))
    try:
        assert read_line(proc.stdout) == "ready"
        proc.send_signal(signal.SIGTERM)
        wait_for_stderr(proc, "held back")
        fake.leases.clear()
        assert read_line(proc.stdout) == "TERM"
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)


def test_run_forwards_sigterm_when_the_sidecar_is_unreachable():
    proc = start_run([], env_for(NOWHERE))
    try:
        assert read_line(proc.stdout) == "ready"
        proc.send_signal(signal.SIGTERM)
        assert read_line(proc.stdout) == "TERM"
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)


# ---- the token: never on the command line ---------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["busy", "--token", "s3cret-token", "--", "true"],
        ["run", "--token=s3cret-token", "--", "true"],
        ["state", "--token", "s3cret-token"],
        ["--token", "s3cret-token", "state"],
        ["state", "--token"],
    ],
)
def test_a_token_flag_is_refused_with_a_pointer_to_the_variable(fake, args):
    result = cli(args, env_for(fake.url))
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "TASK_PROTECTION_TOKEN" in line
    assert "s3cret" not in line  # the refusal does not print the secret again
    assert fake.seen == []


def test_a_token_flag_after_the_double_dash_belongs_to_the_command(fake):
    result = cli(
        ["busy", "--", sys.executable, "-c", "import sys; print(sys.argv[1:])", "--token", "x"],
        env_for(fake.url),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['--token', 'x']"


def token_file(tmp_path, content: bytes) -> str:
    path = tmp_path / "token"
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    ("content", "token"),
    [
        (b"from-a-file-1234\n", "from-a-file-1234"),
        (b"from-a-file-1234", "from-a-file-1234"),
        (b"from-a-file-1234\r\n", "from-a-file-1234"),
    ],
)
def test_the_token_file_holds_the_token_without_its_trailing_newline(tmp_path, content, token):
    settings = Settings.from_environ({"TASK_PROTECTION_TOKEN_FILE": token_file(tmp_path, content)})
    assert settings.token == token


def test_an_explicit_token_argument_wins_over_the_environment(tmp_path):
    env = {"TASK_PROTECTION_TOKEN_FILE": str(tmp_path / "missing")}
    assert Settings.from_environ(env, token="given-1234").token == "given-1234"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "cannot read"),  # no such file
        (b"", "empty"),
        (b"\n", "empty"),
        (b"two\nlines\n", "printable"),
        (b"\xff\xfe", "printable"),
    ],
)
def test_a_bad_token_file_is_a_one_line_error(tmp_path, content, needle):
    path = str(tmp_path / "missing") if content is None else token_file(tmp_path, content)
    with pytest.raises(ConfigurationError, match="TASK_PROTECTION_TOKEN_FILE") as error:
        Settings.from_environ({"TASK_PROTECTION_TOKEN_FILE": path})
    assert needle in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_token_file_that_is_no_regular_file_is_refused_without_blocking(tmp_path, kind):
    """A FIFO would block the open until a writer came (never); a device the read."""
    path = tmp_path / "token"
    if kind == "fifo":
        os.mkfifo(path)
    named = str(path) if kind == "fifo" else "/dev/zero"
    with pytest.raises(ConfigurationError, match="not a regular file"):
        Settings.from_environ({"TASK_PROTECTION_TOKEN_FILE": named})


def test_a_directory_as_token_file_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot read"):
        Settings.from_environ({"TASK_PROTECTION_TOKEN_FILE": str(tmp_path)})


def test_the_token_and_the_token_file_together_are_refused(tmp_path):
    env = {
        "TASK_PROTECTION_TOKEN": "direct-1234",
        "TASK_PROTECTION_TOKEN_FILE": token_file(tmp_path, b"filed-1234\n"),
    }
    with pytest.raises(ConfigurationError, match="not both"):
        Settings.from_environ(env)


def test_the_cli_sends_the_token_from_the_file(fake, tmp_path):
    fake.token = "from-a-file-1234"
    env = env_for(fake.url, TASK_PROTECTION_TOKEN_FILE=token_file(tmp_path, b"from-a-file-1234\n"))
    result = cli(["busy", "--", "true"], env)
    assert result.returncode == 0, result.stderr
    assert {s.authorization for s in fake.seen} == {"Bearer from-a-file-1234"}


@pytest.mark.parametrize("command", ["state", "busy", "run"])
def test_the_cli_refuses_a_bad_token_file_before_anything_runs(fake, tmp_path, command):
    marker = tmp_path / "ran"
    args = ["state"] if command == "state" else [command, "--", "touch", str(marker)]
    env = env_for(fake.url, TASK_PROTECTION_TOKEN_FILE=token_file(tmp_path, b""))
    result = cli(args, env)
    assert result.returncode == 2
    assert "TASK_PROTECTION_TOKEN_FILE" in one_line(result.stderr)
    assert not marker.exists()
    assert fake.seen == []


def test_both_token_settings_are_a_usage_error(fake, tmp_path):
    env = env_for(
        fake.url,
        TASK_PROTECTION_TOKEN="direct-1234",
        TASK_PROTECTION_TOKEN_FILE=token_file(tmp_path, b"filed-1234"),
    )
    result = cli(["state"], env)
    assert result.returncode == 2
    assert "not both" in one_line(result.stderr)


# ---- help ----------------------------------------------------------------------------------


def every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    top = build_parser()
    found = [("ecs-protection", top)]
    for action in top._actions:  # argparse keeps its subparsers there only
        if isinstance(action, argparse._SubParsersAction):
            found += [(f"ecs-protection {name}", sub) for name, sub in action.choices.items()]
    return found


def last_section(text: str) -> str:
    return text.rstrip().rsplit("\n\n", 1)[-1]


PARSERS = dict(every_parser())


@pytest.mark.parametrize("name", PARSERS)
def test_every_help_ends_with_its_exit_codes_and_explains_every_option(name):
    parser = PARSERS[name]
    codes = last_section(parser.format_help()).splitlines()
    assert codes[0] == "exit codes:"
    assert any(line.split()[0] == "2" for line in codes[1:])  # usage errors, everywhere
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
        assert action.help != argparse.SUPPRESS


@pytest.mark.parametrize("name", PARSERS)
def test_help_is_printed_with_exit_0_and_ends_with_the_exit_codes(name):
    result = subprocess.run(
        [*CLI, *name.split()[1:], "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert last_section(result.stdout).startswith("exit codes:")


def test_busy_help_explains_the_lease_prefix():
    text = PARSERS["ecs-protection busy"].format_help()
    start = text.rindex("--lease-prefix")  # its entry, after the usage lines
    option = text[start : text.index("--wait-seconds", start)]
    assert "lease id" in option
    assert "/state" in option


def test_the_exit_codes_per_command():
    helps = {name: last_section(parser.format_help()) for name, parser in PARSERS.items()}
    for code in ("69", "75", "76", "77", "126", "127"):
        assert f"  {code} " in helps["ecs-protection busy"]
    for code in ("69", "76", "77"):
        assert f"  {code} " in helps["ecs-protection state"]
        assert f"  {code} " not in helps["ecs-protection run"]  # run never fails on the sidecar
    for code in ("126", "127"):
        assert f"  {code} " in helps["ecs-protection run"]
