"""Entry point: `ecs-protection-sidecar` or `python -m sidecar`.

Exit codes: 0 drained cleanly, 1 could not serve (e.g. port in use, or a background
task such as stop detection failed), 2 invalid configuration, 3 drain timeout with
leases still held, 128+N forced by a second signal N (143 for SIGTERM, 130 for SIGINT).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

# Nothing slow before this import: the signal handlers go in before anything else.
from sidecar.drain import SignalInbox

if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_CONFIG = 2
# At exit, how long the queued log lines and EMF records may take to be written.
EXIT_FLUSH_SECONDS = 2.0


def main(argv: Sequence[str] | None = None) -> int:
    # First thing: from here on a SIGTERM drains (once the loop runs) and any other
    # signal is logged and ignored, even one that comes while aiohttp is still importing.
    signals = SignalInbox()
    signals.install()
    # The slow imports (aiohttp, the backends) come after the handlers, on purpose.
    import asyncio  # noqa: PLC0415

    from sidecar import logs  # noqa: PLC0415
    from sidecar.app import serve  # noqa: PLC0415
    from sidecar.config import Config, ConfigError  # noqa: PLC0415

    try:
        config = Config.from_environ(os.environ, sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        sys.stderr.write(f"ecs-protection-sidecar: invalid configuration: {exc}\n")
        return EXIT_CONFIG
    logs.setup(config.log_format, config.log_level)
    try:
        # The handlers stay installed after serve(): a signal in the last moments before
        # the process ends is kept, not allowed to turn a clean exit into a kill.
        return asyncio.run(serve(config, signals=signals))
    except ConfigError as exc:
        sys.stderr.write(f"ecs-protection-sidecar: invalid configuration: {exc}\n")
        return EXIT_CONFIG
    finally:
        # The last lines (the exit's) go out, unless nobody reads them: then the exit
        # does not wait for a reader that may never come.
        from sidecar import emf  # noqa: PLC0415

        emf.flush(EXIT_FLUSH_SECONDS)
        logs.flush(EXIT_FLUSH_SECONDS)


def run() -> None:
    """The console script: exit with main()'s code."""
    sys.exit(main())


if __name__ == "__main__":
    run()
