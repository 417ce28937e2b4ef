"""Bounds on open connections, in all and per peer address, so that no client can take
every file descriptor and lock the app out.

In host network mode (and bridge mode with a published port) every process on the
instance can connect, token or not: a neighbour holding connections open, headers never
finished, would otherwise exhaust the descriptors until accept() fails and the app's
own /busy cannot get through, so its job runs unprotected.

When a bound is passed, idle connections are shed until it holds again:

- a peer address holding more than `per_peer` loses its own;
- past `total` in all, the peer holding the most (among those with an idle one) does.

Idle means not handling a request: waiting for a request's headers, for the body of
one whose headers came, or for the peer to read its answer. A request whose headers and
body have come is never cut while the peer reads. Kept-alive connections that have had
their answers go first, the oldest first; then connections that have not yet sent a
whole request, the oldest first: an honest client sends its request at once, so the
one that has said nothing for longest is the least likely to be the app's.

Shedding waits for the event loop's next turn (`defer`). A connection is accepted before
its first bytes are read: judged at once, the app's new connection would look no
different from a neighbour's that never finishes its headers, and in host mode, where
every peer is 127.0.0.1, a neighbour opening connections as fast as they are shed would
have it shed before its request was read. A turn later the request is read, and its
connection is no longer idle. Until then the accepted batch stays open on top of the
bounds; the descriptors are planned for it (`Bounds.backlog`). Past one batch more (a
neighbour keeping all its connections busy with requests, pipelined or one after
another, so that none is idle) one connection is cut at once, so that accept() never
runs out: see _cut_one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
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
    # Connections asyncio accepts in one go. At a peak up to four such batches are open
    # on top of `total`: two accepted and not yet counted (a connection is counted two
    # turns after its accept), one counted past `total` before the guard cuts at once,
    # and one closed whose descriptors come back on the next turn.
    backlog: int


def bounds_for(descriptor_limit: int) -> Bounds:
    """Bounds for a process allowed `descriptor_limit` open files: the total leaves room
    for four accept batches and everything else; one peer may hold a quarter of it."""
    backlog = max(4, min(MAX_BACKLOG, descriptor_limit // 16))
    room = descriptor_limit - RESERVED_DESCRIPTORS - 4 * backlog
    total = max(4, min(MAX_CONNECTIONS, room, descriptor_limit // 2))
    return Bounds(total, max(1, total // 4), backlog)


def _never() -> bool:
    return False


@dataclass(eq=False, slots=True)
class Connection:
    peer: str
    close: Callable[[], None]  # closes it now
    # Whether it is idle now (may be shed): asked of the protocol handler, which knows
    # whether a request has come whole.
    idle: Callable[[], bool] = _never
    # Whether a request's handler is running on it now: never cut, not even for the
    # last descriptors.
    handling: Callable[[], bool] = _never
    requests: int = 0  # begun so far: kept-alive connections are shed before new ones
    open: bool = True


def _shed_order(conn: Connection) -> int:
    return 0 if conn.requests else 1


class ConnectionGuard:
    def __init__(
        self,
        total: int,
        per_peer: int,
        clock: Callable[[], float],
        *,
        defer: Callable[[Callable[[], None]], object],
        batch: int,
    ) -> None:
        """`defer(f)` calls f on the event loop's next turn (after the reads that are
        ready); `batch` connections may be accepted at once (Bounds.backlog)."""
        self.total = total
        self.per_peer = per_peer
        self._clock = clock
        self._defer = defer
        self._batch = batch
        self._enforcing = False  # an enforce() is scheduled
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
        """A connection was accepted: register it; past a bound, shed a turn later."""
        self._peers.setdefault(conn.peer, {})[conn] = None
        self._count += 1
        if self._count > self.total + self._batch:
            # Another batch would run out of descriptors: no waiting for the next turn.
            victim = self._cut_one(conn)
            self._close(victim, victim.peer, "in all")
            return
        if not self._enforcing and (
            self._count > self.total or len(self._peers[conn.peer]) > self.per_peer
        ):
            self._enforcing = True
            self._defer(self.enforce)

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

    def enforce(self) -> None:
        """Shed idle connections until the bounds hold, or no idle one is left (all the
        others are requests being handled)."""
        self._enforcing = False
        # Each peer's idle connections in the order they go: asked once per turn.
        candidates = {peer: self._idle(peer) for peer in self._peers}
        for peer, idle in candidates.items():
            excess = len(self._peers[peer]) - self.per_peer
            while excess > 0 and idle:
                self._close(idle.pop(0), peer, "per address")
                excess -= 1
        while self._count > self.total:
            peers = [peer for peer, idle in candidates.items() if idle and peer in self._peers]
            if not peers:
                break
            busiest = max(peers, key=lambda peer: len(self._peers[peer]))
            self._close(candidates[busiest].pop(0), busiest, "in all")

    def _cut_one(self, newest: Connection) -> Connection:
        """No room left, now, before this turn's reads: which connection goes.

        First one that has had a request and is idle again (kept alive, its body
        stalled, or its answer unread), then one with a request read but not begun (its
        client had no answer and may send it again), then one that has not sent a whole
        request yet, else the newest. The busiest peer's oldest first in each. Never a
        request whose handler runs while its peer reads."""
        best: tuple[int, Connection] | None = None
        for peer in sorted(self._peers, key=lambda peer: -len(self._peers[peer])):
            for conn in self._peers[peer]:
                if conn is newest:
                    continue
                if conn.requests and conn.idle():
                    return conn
                # Not yet judged "idle" by the deferred shedding for a reason: this
                # turn may not have read the request that arrived on it.
                rank = 1 if conn.requests and not conn.handling() else 2 if conn.idle() else 3
                if rank < 3 and (best is None or rank < best[0]):
                    best = (rank, conn)
        return newest if best is None else best[1]

    def _idle(self, peer: str) -> list[Connection]:
        """The peer's idle connections, the first to shed first (see the docstring)."""
        idle = [conn for conn in self._peers[peer] if conn.idle()]  # oldest first
        return sorted(idle, key=_shed_order)  # stable: oldest first in each kind

    def _close(self, victim: Connection, peer: str, bound: str) -> None:
        held = len(self._peers[peer])
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
