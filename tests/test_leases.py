"""LeaseTable: create, refresh, release, TTL expiry with stale heap entries ignored."""

from __future__ import annotations

import pytest

from sidecar.leases import LEASE_ID, LeaseTable, TooManyLeasesError


def test_acquire_reports_new_then_refresh():
    table = LeaseTable(10)
    assert table.acquire("a", None, 0.0, 100.0) is True
    assert table.acquire("a", None, 1.0, 101.0) is False
    assert len(table) == 1
    assert table.leases()[0].since_wall == 100.0


def test_refresh_moves_the_ttl_deadline_and_old_deadlines_are_ignored():
    table = LeaseTable(10)
    table.acquire("a", 10.0, 0.0, 0.0)
    table.acquire("a", 10.0, 8.0, 8.0)
    assert table.expire(10.0) == []
    assert table.next_expiry() == 18.0
    assert table.expire(18.0) == ["a"]
    assert table.next_expiry() is None


def test_a_refresh_without_a_ttl_keeps_the_leases_ttl():
    """A heartbeat that names no TTL restarts the one the lease has; it never makes the
    lease permanent."""
    table = LeaseTable(10)
    table.acquire("a", 5.0, 0.0, 0.0)
    table.acquire("a", None, 3.0, 3.0)
    lease = table.leases()[0]
    assert (lease.ttl, lease.expires, lease.expires_wall) == (5.0, 8.0, 8.0)
    assert table.expire(7.9) == []
    assert table.expire(8.0) == ["a"]


def test_a_refresh_naming_a_ttl_replaces_it():
    table = LeaseTable(10)
    table.acquire("a", 5.0, 0.0, 0.0)
    table.acquire("a", 30.0, 1.0, 1.0)
    assert table.next_expiry() == 31.0


def test_a_lease_without_a_ttl_stays_without_one_when_refreshed():
    table = LeaseTable(10)
    table.acquire("a", None, 0.0, 0.0)
    table.acquire("a", None, 1.0, 1.0)
    assert table.next_expiry() is None
    assert table.leases()[0].ttl is None


def test_release_and_clear():
    table = LeaseTable(10)
    table.acquire("a", 5.0, 0.0, 0.0)
    table.acquire("b", None, 0.0, 0.0)
    assert table.release("a") is True
    assert table.release("a") is False
    assert table.expire(10.0) == []  # the released lease's deadline is stale
    assert table.clear() == 1
    assert len(table) == 0


def test_capacity_bounds_new_leases_only():
    table = LeaseTable(1)
    table.acquire("a", None, 0.0, 0.0)
    with pytest.raises(TooManyLeasesError):
        table.acquire("b", None, 0.0, 0.0)
    table.acquire("a", None, 1.0, 1.0)


@pytest.mark.parametrize(
    ("lease", "ok"),
    [
        ("default", True),
        ("job-1.2_3:x", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("a b", False),
        ("a/b", False),
        ("é", False),
    ],
)
def test_lease_id_syntax(lease, ok):
    assert bool(LEASE_ID.fullmatch(lease)) is ok


def test_heartbeats_do_not_grow_the_expiry_heap_without_bound():
    """One long lease at the top of the heap pins nothing: 200k heartbeats of another
    lease leave a heap the size of the live leases, not of the heartbeats."""
    table = LeaseTable(10)
    table.acquire("long", 10_000.0, 0.0, 0.0)
    for beat in range(200_000):
        table.acquire("worker", 60.0, beat * 0.001, beat * 0.001)
    assert table.heap_size <= 2 * len(table) + 64
    # Expiry still works after compaction: the worker goes first, the long lease later.
    assert table.expire(300.0) == ["worker"]
    assert table.next_expiry() == 10_000.0
    assert table.expire(10_000.0) == ["long"]
