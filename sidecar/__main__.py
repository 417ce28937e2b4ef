"""Entry point: `ecs-protection-sidecar` or `python -m sidecar`.

Exit codes: 0 drained cleanly, 1 could not serve (e.g. port in use), 2 invalid
configuration, 3 drain timeout with leases still held, 128+N forced by a second
signal N (143 for SIGTERM, 130 for SIGINT).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING

from sidecar import logs
from sidecar.app import serve
from sidecar.config import Config, ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = Config.from_environ(os.environ, sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        sys.stderr.write(f"ecs-protection-sidecar: invalid configuration: {exc}\n")
        return EXIT_CONFIG
    logs.setup(config.log_format, config.log_level)
    try:
        return asyncio.run(serve(config))
    except ConfigError as exc:
        sys.stderr.write(f"ecs-protection-sidecar: invalid configuration: {exc}\n")
        return EXIT_CONFIG
    except KeyboardInterrupt:  # SIGINT before the signal handlers were in place
        return 128 + signal.SIGINT


def run() -> None:
    """The console script: exit with main()'s code."""
    sys.exit(main())


if __name__ == "__main__":
    run()
