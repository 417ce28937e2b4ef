"""A command that records every signal it gets: one number a line in the file argv[1].

Every signal that can be caught is blocked and taken with sigwaitinfo(), so that each
is recorded the moment it is taken (a Python-level handler would run once for two
deliveries that came before it ran) and none stops or ends it, except SIGTERM
(recorded, then exit 0). SIGUSR2 also leaves an orphan: a background `sleep` whose
shell exits at once, so that it is re-parented to the nearest subreaper; its pid is
recorded as "orphan PID". Writes "ready" once every signal is blocked.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1
# It takes every signal but SIGKILL: should its supervisor be killed (a failed test),
# the kernel ends it too instead of leaving it behind.
ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

out = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
caught = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}
signal.pthread_sigmask(signal.SIG_BLOCK, caught)


def record(text: str) -> None:
    os.write(out, f"{text}\n".encode())


record("ready")
while True:
    signum = signal.sigwaitinfo(caught).si_signo
    record(str(signum))
    if signum == signal.SIGTERM:
        os._exit(0)
    if signum == signal.SIGUSR2:
        shell = ["sh", "-c", "sleep 0.2 & echo $!"]
        orphan = subprocess.run(shell, capture_output=True, text=True, check=True)
        record(f"orphan {orphan.stdout.strip()}")
