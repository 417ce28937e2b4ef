"""`ecs-protection`: busy -- CMD, run -- CMD (a PID-1 wrapper), state.

Exit codes (also in docs/client.md):
  CMD's own code, or 128+N when signal N ended it
  2    usage: a bad flag or environment value (one line on stderr)
  69   the sidecar is unreachable (state; busy when strict or --require-protection),
       protection is required and unconfirmed, or its lease table is full (429)
  75   the task is draining: CMD was not started
  76   the sidecar answered an error, or something that is not its API (500, ...)
  77   the sidecar refused the token (401, or 403)
  126  CMD cannot be executed; 127 CMD not found
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import os
import signal
import sys
import textwrap
from typing import TYPE_CHECKING, NoReturn

from ecs_protection import _signals
from ecs_protection._errors import (
    ConfigurationError,
    ProtectionUnavailableError,
    SidecarError,
    SidecarUnavailableError,
    TaskDrainingError,
    TooManyLeasesError,
)
from ecs_protection._protocol import (
    DEFAULT_TTL_SECONDS,
    MAX_SECONDS,
    Settings,
    check_lease_prefix,
    check_ttl,
    check_wait,
    in_seconds_range,
)
from ecs_protection._sync import Client
from ecs_protection._wrapper import Wrapper

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger("ecs_protection.cli")

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69
EXIT_DRAINING = 75
EXIT_PROTOCOL = 76
EXIT_NOPERM = 77

# Fargate's default stopTimeout is 30 s: SIGTERM, then SIGKILL 30 s later. Forwarding a
# held SIGTERM after 25 s leaves CMD 5 s to stop cleanly before the SIGKILL. With a
# longer stopTimeout, set TASK_PROTECTION_HOLD_TIMEOUT_SECONDS to it minus that margin.
DEFAULT_HOLD_TIMEOUT_SECONDS = 25.0
HOLD_TIMEOUT_VARIABLE = "TASK_PROTECTION_HOLD_TIMEOUT_SECONDS"


class UsageError(Exception):
    """A bad flag or environment value: one line, exit 2."""


# The end of each --help: what the command's exit status means.
CMD_CODES = """\
  N    CMD's own exit code, or 128+N when signal N ended it
"""
USAGE_CODE = """\
  2    usage: a bad flag or environment value (one line on stderr); nothing started
"""
SIDECAR_CODES = """\
  76   the sidecar answered an error, or something that is not its API (500, ...)
  77   the sidecar refused the token (401, or 403)
"""
CMD_START_CODES = """\
  126  CMD cannot be executed
  127  CMD not found
"""
EXIT_CODES = {
    "busy": CMD_CODES
    + USAGE_CODE
    + """\
  69   protection is required (--require-protection) and not confirmed, the sidecar is
       unreachable and TASK_PROTECTION_STRICT=1, or its lease table is full (429)
  75   the task is stopping (the sidecar is draining): CMD was not started
"""
    + SIDECAR_CODES
    + CMD_START_CODES,
    "run": CMD_CODES
    + USAGE_CODE
    + CMD_START_CODES
    + """\
  (a sidecar that fails or cannot be reached never ends run: SIGTERM then goes on)
""",
    "state": """\
  0    the state was printed
"""
    + USAGE_CODE
    + """\
  69   the sidecar is unreachable
"""
    + SIDECAR_CODES,
}
ALL_CODES = """\
  CMD  busy and run: CMD's own exit code, or 128+N when signal N ended it
"""
ALL_CODES += USAGE_CODE + (
    """\
  69   state: the sidecar is unreachable; busy: protection is required and not
       confirmed, the sidecar is unreachable when strict, or its lease table is full
  75   busy: the task is stopping (the sidecar is draining): CMD was not started
"""
    + SIDECAR_CODES
    + CMD_START_CODES
)

NOT_ON_THE_COMMAND_LINE = (
    "--token is not accepted: a token on the command line shows in every process "
    "listing; set TASK_PROTECTION_TOKEN, or TASK_PROTECTION_TOKEN_FILE to a file holding it"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, without argparse's usage block: the message names the problem.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class _RefuseToken(argparse.Action):
    """`--token` exists only to say where the token goes instead (never echoing it)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        del namespace, values, option_string  # the value is a secret: never used, never shown
        parser.error(NOT_ON_THE_COMMAND_LINE)


def _refuse_token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token",
        action=_RefuseToken,
        nargs="?",
        metavar="TOKEN",
        help="refused (it would show in every process listing): set TASK_PROTECTION_TOKEN, "
        "or TASK_PROTECTION_TOKEN_FILE to a file holding it",
    )


def _wrap(description: str) -> str:
    # Wrapped here: the formatter keeps descriptions as written, for the exit code table.
    return textwrap.fill(description, 79)


def _epilog(codes: str) -> str:
    return "exit codes:\n" + codes


RAW = argparse.RawDescriptionHelpFormatter  # the exit codes are a table


def seconds(*, positive: bool = False) -> Callable[[str], float]:
    """An argparse type: a number of seconds, >= 0 (or > 0) and at most MAX_SECONDS."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not in_seconds_range(value, positive=positive):
            kind = "positive" if positive else "zero or positive"
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {kind} number of seconds up to {MAX_SECONDS:g}"
            )
        return value

    parse.__name__ = "seconds"  # argparse names the type in its messages
    return parse


def _ttl(text: str) -> float:
    """An argparse type: 0 (no TTL), or a TTL the sidecar can keep."""
    value = seconds()(text)
    if value:
        try:
            check_ttl(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _lease_prefix(text: str) -> str:
    """An argparse type: a prefix of lease ids the sidecar accepts."""
    try:
        return check_lease_prefix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _wait(text: str) -> float:
    """An argparse type: a wait for confirmation the sidecar accepts."""
    value = seconds()(text)
    try:
        check_wait(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _version() -> str:
    try:
        return importlib.metadata.version("ecs-protection")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The parser; it reads no environment variable (main() does, with clear errors)."""
    parser = _Parser(
        prog="ecs-protection",
        formatter_class=RAW,
        description=_wrap(
            "Talk to the ecs-protection sidecar (TASK_PROTECTION_URL, default "
            "http://127.0.0.1:31680; the token from TASK_PROTECTION_TOKEN or "
            "TASK_PROTECTION_TOKEN_FILE)."
        ),
        epilog=_epilog(ALL_CODES),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _refuse_token(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    busy = commands.add_parser(
        "busy",
        help="hold a lease while CMD runs; exit with its code",
        formatter_class=RAW,
        description=_wrap(
            "Hold a lease (the task stays protected from scale-in) while CMD runs; "
            "signals are passed on to CMD."
        ),
        epilog=_epilog(EXIT_CODES["busy"]),
    )
    busy.add_argument(
        "--ttl",
        type=_ttl,
        default=DEFAULT_TTL_SECONDS,
        help="lease TTL in seconds, 1 to 604800, refreshed every ttl/3 (0: none; default 60)",
    )
    busy.add_argument(
        "--lease-prefix",
        type=_lease_prefix,
        default="cli",
        metavar="PREFIX",
        help="start of the lease id: each run takes its own lease, PREFIX-<16 hex digits>, "
        "shown in the sidecar's /state and logs; name the job with it: 1 to 111 of "
        "A-Z a-z 0-9 . _ : - (default: cli)",
    )
    busy.add_argument(
        "--wait-seconds",
        type=_wait,
        default=None,
        help="how long to wait for confirmed protection, 0 to 300 (sidecar default 10)",
    )
    busy.add_argument(
        "--require-protection",
        action="store_true",
        help="do not run CMD unless protection is confirmed, whatever the reason: exit 69 "
        "when the sidecar is unreachable or does not confirm in time (75 draining, 76 a bad "
        "answer, 77 a refused token)",
    )
    busy.add_argument(
        "cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the command to run"
    )
    _refuse_token(busy)

    run = commands.add_parser(
        "run",
        help="PID-1 wrapper: forward signals, reap zombies, hold SIGTERM while busy",
        formatter_class=RAW,
        description=_wrap(
            "Run CMD as a container's PID 1 would: forward every signal to it and reap "
            "orphans. On the first SIGTERM, tell the sidecar to drain and hold SIGTERM "
            "back from CMD while the sidecar reports leases held, for at most the hold "
            "timeout; a second SIGTERM is forwarded at once."
        ),
        epilog=_epilog(EXIT_CODES["run"]),
    )
    run.add_argument(
        "--hold-timeout",
        type=seconds(),
        default=None,
        help=f"longest time to hold SIGTERM back while the sidecar reports leases "
        f"(default: {HOLD_TIMEOUT_VARIABLE} or {DEFAULT_HOLD_TIMEOUT_SECONDS:g}); keep it "
        "below the container's stopTimeout",
    )
    run.add_argument(
        "--poll-seconds",
        type=seconds(positive=True),
        default=0.5,
        help="how often to ask the sidecar while holding SIGTERM (default 0.5)",
    )
    run.add_argument(
        "cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the command to run"
    )
    _refuse_token(run)

    state = commands.add_parser(
        "state",
        help="print the sidecar's state as JSON",
        formatter_class=RAW,
        description=_wrap("Print the sidecar's GET /state document as JSON."),
        epilog=_epilog(EXIT_CODES["state"]),
    )
    _refuse_token(state)
    return parser


def hold_timeout(flag: float | None, environ: Mapping[str, str]) -> float:
    if flag is not None:
        return flag
    text = environ.get(HOLD_TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_HOLD_TIMEOUT_SECONDS
    try:
        return seconds()(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{HOLD_TIMEOUT_VARIABLE}: {exc}") from None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="ecs-protection: %(message)s", stream=sys.stderr)
    try:
        return _command(parser, args, env)
    except UsageError as exc:
        sys.stderr.write(f"ecs-protection: error: {exc}\n")
        return EXIT_USAGE
    except TaskDrainingError:
        log.error("the task is stopping (sidecar is draining): not starting %s", _name(args))  # noqa: TRY400
        return EXIT_DRAINING
    except (ProtectionUnavailableError, SidecarUnavailableError, TooManyLeasesError) as exc:
        log.error("%s", exc)  # noqa: TRY400  (the message is the whole story)
        return EXIT_UNAVAILABLE
    except SidecarError as exc:
        log.error("the sidecar answered %s", exc)  # noqa: TRY400
        return EXIT_NOPERM if exc.status in (401, 403) else EXIT_PROTOCOL


def _name(args: argparse.Namespace) -> str:
    cmd = [c for c in getattr(args, "cmd", []) if c != "--"]
    return cmd[0] if cmd else "the command"


def _command(
    parser: argparse.ArgumentParser, args: argparse.Namespace, env: Mapping[str, str]
) -> int:
    try:  # every command talks to the sidecar: its settings are checked before anything runs
        Settings.from_environ(env)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None
    if args.command == "state":
        return _state()
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        parser.error(f"{args.command}: give a command after --")
    if args.command == "busy":
        return _busy(cmd, args)
    timeout = hold_timeout(args.hold_timeout, env)
    # Blocked before the client exists: no thread may ever see these signals.
    source = _signals.signal_source()
    return Wrapper(
        cmd, Client(), hold_timeout=timeout, poll_seconds=args.poll_seconds, source=source
    ).run()


def run() -> None:
    """The console script."""
    sys.exit(main())


def _state() -> int:
    state = Client(strict=True).state()
    assert state is not None  # noqa: S101  (strict clients raise instead)
    sys.stdout.write(json.dumps(state.raw, indent=2) + "\n")
    return 0


def _busy(cmd: list[str], args: argparse.Namespace) -> int:
    # Blocked before the heartbeat thread starts, so that it inherits the block.
    source = _signals.signal_source()
    with Client().hold(
        ttl=args.ttl or None,
        lease_prefix=args.lease_prefix,
        wait_seconds=args.wait_seconds,
        require_protection=args.require_protection,
    ):
        # Signals that came while the lease was being taken: a stop means CMD must not
        # start at all (it would only be killed at once); others are passed on to it.
        pending = [signum for signum in source.wait(0) if signum != signal.SIGCHLD]
        stop = next((signum for signum in pending if signum in STOPS), None)
        if stop is not None:
            log.info("%s before %s started: not starting it", signal.Signals(stop).name, cmd[0])
            return 128 + stop
        return _run_forwarding(cmd, source, pending)


STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _run_forwarding(
    cmd: list[str], source: _signals.SignalSource, pending: list[int] | None = None
) -> int:
    """Run CMD, passing every forwarded signal on to it; return its exit code."""
    child = _signals.spawn(cmd, source, log.error)
    if isinstance(child, int):
        return child
    for signum in pending or ():
        _signals.send(child, signum)
    while True:
        code = _signals.reap(child, everyone=False)
        if code is not None:
            return code
        for signum in source.wait(5.0):
            if signum != signal.SIGCHLD:
                _signals.send(child, signum)
