"""`ecs-protection` with the portable signal source forced (set_wakeup_fd + flags).

On Linux the CLI takes signals with sigtimedwait(); this runs the fallback that other
platforms use, so that it is tested too.
"""

from __future__ import annotations

import sys

from ecs_protection import _cli, _signals

_cli._signals.signal_source = _signals.WakeupSignals  # type: ignore[assignment]
sys.exit(_cli.main())
