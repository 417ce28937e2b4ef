"""Bounds on open connections, in all and per peer address, so that no client can take
every file descriptor and lock the app out.

In host network mode (and bridge mode with a published port) every process on the
instance can connect, token or not: a neighbour holding connections open, headers never
finished, would otherwise exhaust the descriptors until accept() fails and the app's
own /busy cannot get through, so its job runs unprotected.

How connections are shed, each time one is accepted:

- its peer address now holds more than `per_peer`: that peer's oldest idle connection
  is closed (the new one itself when all the others are handling a request);
- else, more than `total` are open: the oldest idle connection of the peer holding the
  most is closed (the new one when that peer has no idle connection).

Idle means not handling a request: opened and headers not yet complete, or kept alive
between requests. A request being handled (a /busy waiting for confirmation) is never
cut. The oldest goes first because an honest client sends its request at once, so a
connection that has said nothing for longest is the least likely to be the app's; in
host mode, where every peer is 127.0.0.1, this still lets a new connection in.
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
    # Connections the kernel queues, and asyncio accepts in one go before any of them
    # can be shed: up to two such batches are open on top of `total` at a peak.
    backlog: int


def bounds_for(descriptor_limit: int) -> Bounds:
    """Bounds for a process allowed `descriptor_limit` open files: the total leaves room
    for two accept batches and everything else; one peer may hold a quarter of it."""
    backlog = max(4, min(MAX_BACKLOG, descriptor_limit // 8))
    room = descriptor_limit - RESERVED_DESCRIPTORS - 2 * backlog
    total = max(4, min(MAX_CONNECTIONS, room, descriptor_limit // 2))
    return Bounds(total, max(1, total // 4), backlog)


@dataclass(eq=False, slots=True)
class Connection:
    peer: str
    close: Callable[[], None]  # closes it now
    active: bool = False  # handling a request
    requests: int = 0  # begun so far
    open: bool = field(default=True)


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

    @property
    def count(self) -> int:
        return self._count

    def admit(self, conn: Connection) -> None:
        """A connection was accepted: register it, then shed one if a bound is passed."""
        peers = self._peers.setdefault(conn.peer, {})
        peers[conn] = None
        self._count += 1
        if len(peers) > self.per_peer:
            self._shed_from(conn.peer, conn, "per address")
        elif self._count > self.total:
            busiest = max(self._peers, key=lambda peer: len(self._peers[peer]))
            self._shed_from(busiest, conn, "in all")

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

    def _shed_from(self, peer: str, newest: Connection, bound: str) -> None:
        connections = self._peers[peer]
        held = len(connections)
        victim = next((c for c in connections if not c.active), newest)
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
