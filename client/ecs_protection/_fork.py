"""Fork safety: a forked child must not share its parent's connections, locks or counts.

A prefork pool (Celery, gunicorn, multiprocessing) forks after the parent may have
used a client. The child inherits the parent's keep-alive socket: requests from both
processes would then interleave on one connection and read each other's answers. So
in the child every client drops its session (a new one is made on first use) and the
module state that only made sense in the parent (locks, job counts) starts afresh.
"""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable


class Resettable(Protocol):
    def _after_fork(self) -> None: ...


_clients: weakref.WeakSet[Resettable] = weakref.WeakSet()
_hooks: list[Callable[[], None]] = []


def track(client: Resettable) -> None:
    """Reset `client` in every forked child (held weakly: it may be garbage collected)."""
    _clients.add(client)


def on_fork(hook: Callable[[], None]) -> None:
    """Run `hook` in every forked child, before the clients are reset."""
    _hooks.append(hook)


def _after_fork_in_child() -> None:
    for hook in _hooks:
        hook()
    for client in list(_clients):
        client._after_fork()  # noqa: SLF001  (the protocol's own method)


if hasattr(os, "register_at_fork"):  # POSIX; there is no fork elsewhere
    os.register_at_fork(after_in_child=_after_fork_in_child)
