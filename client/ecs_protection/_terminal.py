"""The terminal a supervisor hands to CMD, so that a key like Ctrl-C reaches CMD once.

A terminal sends the signals of its keys (Ctrl-C, Ctrl-\\, Ctrl-Z) and of a resize to
its whole foreground process group. With CMD in the supervisor's group, CMD would get
each of them twice: once from the terminal, once forwarded. So, as tini does, CMD gets
a process group of its own and that group becomes the terminal's foreground group;
the supervisor keeps forwarding what is sent to it alone. The supervisor ignores
SIGTTOU, so it can take the terminal back (and write to it) from the background.
"""

from __future__ import annotations

import contextlib
import os
import signal


class Terminal:
    """The controlling terminal, open while it is handed to CMD's process group."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._given: int | None = None

    @classmethod
    def in_foreground(cls) -> Terminal | None:
        """The controlling terminal when this process is in its foreground group.

        None without one, or from the background: a job started with `&` must not
        take the terminal from the shell.
        """
        try:
            fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
        except OSError:
            return None
        try:
            if os.tcgetpgrp(fd) == os.getpgrp():
                return cls(fd)
        except OSError:
            pass
        os.close(fd)
        return None

    def give(self, pgid: int) -> None:
        with contextlib.suppress(OSError):  # CMD may be gone already
            os.tcsetpgrp(self._fd, pgid)
            self._given = pgid

    def stopped(self, pgid: int, stopsig: int) -> None:
        """CMD's group `pgid` was stopped by `stopsig` while it may have the terminal.

        A SIGTTIN/SIGTTOU stop while it has the terminal is stale: CMD starts before
        the terminal is handed over (posix_spawn runs no code in the child), and a read
        or write in that moment stops it; it is continued. Any other stop (Ctrl-Z) is
        the job's: the terminal comes back here and this process stops too, so that the
        shell sees its job stopped; when the shell continues it (`fg`), CMD gets the
        terminal back and is continued. As PID 1 this process cannot stop itself, and
        CMD is simply continued.
        """
        try:
            if self._given != pgid or os.tcgetpgrp(self._fd) != pgid:
                return  # stopped in the background: its own business
            if stopsig not in (signal.SIGTTIN, signal.SIGTTOU):
                os.tcsetpgrp(self._fd, os.getpgrp())
                os.kill(os.getpid(), signal.SIGSTOP)  # returns once continued
                if os.tcgetpgrp(self._fd) == os.getpgrp():
                    os.tcsetpgrp(self._fd, pgid)
            os.killpg(pgid, signal.SIGCONT)
        except OSError:
            return  # the terminal or CMD went away meanwhile

    def take_back(self) -> None:
        """CMD ended: the terminal goes back to this process's group, and is closed."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            if self._given is not None and os.tcgetpgrp(self._fd) == self._given:
                os.tcsetpgrp(self._fd, os.getpgrp())
        os.close(self._fd)
        self._fd = -1
