"""Bounds on open connections, in all and per peer address, so that no client can take
every file descriptor and lock the app out.

In host network mode (and bridge mode with a published port) every process on the
instance can connect, token or not: a neighbour holding connections open, headers never
finished, would otherwise exhaust the descriptors until accept() fails and the app's
own /busy cannot get through, so its job runs unprotected.

A connection is registered when it is accepted (admit()); the bounds are enforced a
moment later (enforce(), which the server runs once the event loop has read what the
connections just accepted sent). The event loop accepts connections in batches: shedding
on each accept would close a connection of the app in its own batch, before its request
(sent at once, whole) was read, and a neighbour that reopens every shed connection from
the app's own address (host mode) would fail every /busy of the app that way.

What enforce() sheds, until within the bounds:

- a peer holding more than `per_peer`: its oldest idle connection;
- then, while more than `total` are open: the oldest idle connection of the peer
  holding the most.

Idle means neither handling a request nor holding a whole request not yet handled:
opened with headers not complete, a body still trickling in, or kept alive between
requests. Of those, the ones that never got an answer go before the ones kept alive
after one: the app's client reuses its connection for the next call (the /idle right
after a job, a heartbeat), and a neighbour that never sends a whole request must not
push it out. The oldest goes first because an honest client sends its request at once,
so a connection that has said nothing for longest is the least likely to be the app's.
When a peer has no idle connection, its newest one that is not being answered goes (a
whole request that came in the same moment: the one a bound refuses). A request being
handled (a /busy waiting for confirmation) is never cut.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("sidecar.connections")

# Open connections in all, whatever the descriptor limit: each costs memory too.
MAX_CONNECTIONS = 2048
# Descriptors kept back from clients: the listening socket, the event loop's own, the
# backend's and the metadata endpoint's connections, logs.
RESERVED_DESCRIPTORS = 64
MAX_BACKLOG = 128  # aiohttp's own default
LOG_EVERY_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Bounds:
    total: int  # open connections in all
    per_peer: int  # open connections from one address
    # Connections asyncio accepts in one go, each turn of the loop: up to four such
    # batches are open on top of `total` at a peak (accepted, their connection_made()
    # not run yet; then admitted, and shed only on the loop's next turn).
    backlog: int


def bounds_for(descriptor_limit: int) -> Bounds:
    """Bounds for a process allowed `descriptor_limit` open files: the total leaves room
    for four accept batches and everything else; one peer may hold a quarter of it."""
    backlog = max(4, min(MAX_BACKLOG, descriptor_limit // 16))
    room = descriptor_limit - RESERVED_DESCRIPTORS - 4 * backlog
    total = max(4, min(MAX_CONNECTIONS, room, descriptor_limit // 2))
    return Bounds(total, max(1, total // 4), backlog)


@dataclass(eq=False, slots=True)
class Connection:
    peer: str
    close: Callable[[], None]  # closes it now
    active: bool = False  # handling a request
    ready: bool = False  # a whole request has come, not yet handled
    requests: int = 0  # begun so far
    answered: int = 0  # answers written: a client that speaks HTTP
    open: bool = field(default=True)

    @property
    def idle(self) -> bool:
        return not (self.active or self.ready)


class ConnectionGuard:
    def __init__(self, total: int, per_peer: int, clock: Callable[[], float]) -> None:
        self.total = total
        self.per_peer = per_peer
        self._clock = clock
        # Per peer, its connections in the order they were opened: the oldest first.
        self._peers: dict[str, dict[Connection, None]] = {}
        self._count = 0
        self.shed = 0  # connections closed to keep the bounds, in all
        self._unlogged = 0
        self._logged_at = -math.inf
        self._enforce_due = False  # admit() passed a bound; enforce() has not run since

    @property
    def count(self) -> int:
        return self._count

    def admit(self, conn: Connection) -> bool:
        """A connection was accepted: register it. True when a bound is passed and no
        enforce() is due yet: the caller runs enforce() once what came has been read."""
        peers = self._peers.setdefault(conn.peer, {})
        peers[conn] = None
        self._count += 1
        if self._enforce_due or (len(peers) <= self.per_peer and self._count <= self.total):
            return False
        self._enforce_due = True
        return True

    def enforce(self) -> None:
        """Shed connections until within the bounds (see the module's docstring)."""
        self._enforce_due = False
        for peer in [peer for peer, held in self._peers.items() if len(held) > self.per_peer]:
            while len(self._peers.get(peer, ())) > self.per_peer:
                if not self._shed_from(peer, "per address"):
                    break
        while self._count > self.total:
            busiest = max(self._peers, key=lambda peer: len(self._peers[peer]))
            if not self._shed_from(busiest, "in all"):
                break

    def forget(self, conn: Connection) -> None:
        """The connection is closed (by either side)."""
        if not conn.open:
            return
        conn.open = False
        peers = self._peers[conn.peer]
        del peers[conn]
        self._count -= 1
        if not peers:
            del self._peers[conn.peer]

    def _shed_from(self, peer: str, bound: str) -> bool:
        """Close one connection of `peer`; False when every one is being answered."""
        connections = self._peers[peer]
        held = len(connections)
        victim = next((c for c in connections if c.idle and not c.answered), None)
        if victim is None:
            victim = next((c for c in connections if c.idle), None)
        if victim is None:
            victim = next((c for c in reversed(connections) if not c.active), None)
        if victim is None:
            # Each is being answered: the waits are bounded on their own (web.py), and
            # a request being handled is never cut.
            return False
        self.forget(victim)
        victim.close()
        self.shed += 1
        self._unlogged += 1
        now = self._clock()
        if now - self._logged_at >= LOG_EVERY_SECONDS:  # one line per burst, not per socket
            log.warning(
                "closed %d idle connection(s) to stay within %d connections %s "
                "(%d per address, %d in all); %s held %d",
                self._unlogged,
                self.per_peer if bound == "per address" else self.total,
                bound,
                self.per_peer,
                self.total,
                peer,
                held,
                extra={"event": "connections_shed", "peer": peer, "shed": self._unlogged},
            )
            self._logged_at = now
            self._unlogged = 0
        return True
