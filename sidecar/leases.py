"""LeaseTable: who says the task is busy, and until when. Pure: time is passed in."""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass

LEASE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
DEFAULT_LEASE = "default"


class TooManyLeasesError(Exception):
    """A new lease would exceed the table's capacity."""


@dataclass(slots=True)
class Lease:
    id: str
    since_wall: float  # first acquired, for people
    ttl: float | None
    expires: float | None  # monotonic deadline, None without a TTL
    expires_wall: float | None  # the same deadline for people
    generation: int  # bumped on every refresh, so stale heap entries are recognised


class LeaseTable:
    """Leases by id, with TTL expiry in O(log n) per change.

    Expiry uses a heap with lazy deletion: a refresh pushes a new entry and the old one
    is skipped when it surfaces, so a heartbeat costs one push, never a scan.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._leases: dict[str, Lease] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._generation = 0

    def __len__(self) -> int:
        return len(self._leases)

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._leases

    def holds(self, lease_id: str, now: float) -> bool:
        """Whether the lease is held at `now`: present, and its TTL not passed."""
        lease = self._leases.get(lease_id)
        return lease is not None and (lease.expires is None or lease.expires > now)

    def leases(self) -> list[Lease]:
        return list(self._leases.values())

    def acquire(self, lease_id: str, ttl: float | None, now: float, wall: float) -> bool:
        """Create or refresh a lease; return True when it is new.

        A refresh without a TTL restarts the lease's own: a heartbeat that omits it must
        not turn a lease that a crashed worker would lose into one it holds forever.
        """
        lease = self._leases.get(lease_id)
        if lease is None and len(self._leases) >= self.capacity:
            raise TooManyLeasesError(lease_id)
        if lease is not None and ttl is None:
            ttl = lease.ttl
        self._generation += 1
        expires = None if ttl is None else now + ttl
        expires_wall = None if ttl is None else wall + ttl
        created = lease is None
        if lease is None:
            lease = Lease(lease_id, wall, ttl, expires, expires_wall, self._generation)
            self._leases[lease_id] = lease
        else:
            lease.ttl, lease.expires, lease.expires_wall = ttl, expires, expires_wall
            lease.generation = self._generation
        if expires is not None:
            heapq.heappush(self._heap, (expires, self._generation, lease_id))
            self._compact()
        return created

    def _compact(self) -> None:
        """Drop stale heap entries once they outnumber the live ones.

        Entries are only popped from the top, so one long-lived lease at the top keeps
        every refresh of the others below it: without this, memory grows with every
        heartbeat. Rebuilding at twice the live size keeps it O(1) amortised.
        """
        if len(self._heap) <= 2 * len(self._leases) + 64:
            return
        self._heap = [
            (lease.expires, lease.generation, lease.id)
            for lease in self._leases.values()
            if lease.expires is not None
        ]
        heapq.heapify(self._heap)

    def release(self, lease_id: str) -> bool:
        return self._leases.pop(lease_id, None) is not None

    @property
    def heap_size(self) -> int:
        """Entries in the expiry heap, stale ones included (bounded by _compact)."""
        return len(self._heap)

    def clear(self) -> int:
        count = len(self._leases)
        self._leases.clear()
        self._heap.clear()
        return count

    def expire(self, now: float) -> list[str]:
        """Drop every lease whose TTL has passed; return their ids."""
        expired: list[str] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, generation, lease_id = heapq.heappop(heap)
            lease = self._leases.get(lease_id)
            if lease is not None and lease.generation == generation:
                del self._leases[lease_id]
                expired.append(lease_id)
        return expired

    def next_expiry(self) -> float | None:
        """The earliest TTL deadline still live, discarding stale heap entries on the way."""
        heap = self._heap
        while heap:
            expires, generation, lease_id = heap[0]
            lease = self._leases.get(lease_id)
            if lease is not None and lease.generation == generation:
                return expires
            heapq.heappop(heap)
        return None
