"""The connection bounds, on their own: who is shed when a bound is passed."""

from __future__ import annotations

import logging

from sidecar.connections import MAX_CONNECTIONS, Bounds, Connection, ConnectionGuard, bounds_for


class Opened:
    """Connections made through a guard, and the ones it closed."""

    def __init__(self, total: int, per_peer: int) -> None:
        self.guard = ConnectionGuard(total, per_peer, lambda: 0.0)
        self.closed: list[str] = []

    def open(self, name: str, peer: str, *, active: bool = False) -> Connection:
        conn = Connection(peer, lambda: self.closed.append(name))
        self.guard.admit(conn)
        conn.active = active and conn.open
        return conn


def test_a_peer_past_its_bound_loses_its_oldest_idle_connection():
    opened = Opened(total=100, per_peer=3)
    opened.open("waiting", "127.0.0.2", active=True)  # a /busy being handled: never cut
    opened.open("old", "127.0.0.2")
    opened.open("newer", "127.0.0.2")
    opened.open("app", "127.0.0.1")
    opened.open("newest", "127.0.0.2")
    assert opened.closed == ["old"]
    assert opened.guard.count == 4


def test_a_peer_whose_connections_are_all_handling_requests_gets_the_new_one_refused():
    opened = Opened(total=100, per_peer=2)
    opened.open("a", "10.0.0.5", active=True)
    opened.open("b", "10.0.0.5", active=True)
    opened.open("c", "10.0.0.5")
    assert opened.closed == ["c"]


def test_past_the_total_the_busiest_peer_loses_its_oldest_idle_connection():
    opened = Opened(total=5, per_peer=4)
    opened.open("x1", "127.0.0.3")
    opened.open("x2", "127.0.0.3")
    opened.open("y1", "127.0.0.4")
    opened.open("app1", "127.0.0.1")
    opened.open("x3", "127.0.0.3")
    opened.open("app2", "127.0.0.1")  # the sixth: 127.0.0.3 holds the most
    assert opened.closed == ["x1"]
    assert opened.guard.count == 5


def test_a_closed_connection_frees_its_place(caplog):
    caplog.set_level(logging.WARNING)
    opened = Opened(total=100, per_peer=1)
    first = opened.open("first", "127.0.0.2")
    opened.guard.forget(first)
    opened.guard.forget(first)  # closed twice (shed, then lost): counted once
    opened.open("second", "127.0.0.2")
    assert opened.closed == []
    opened.open("third", "127.0.0.2")
    assert opened.closed == ["second"]
    [line] = caplog.records
    assert (line.event, line.peer, line.shed) == ("connections_shed", "127.0.0.2", 1)  # type: ignore[attr-defined]


def test_shedding_is_logged_once_per_burst(caplog):
    caplog.set_level(logging.WARNING)
    opened = Opened(total=100, per_peer=1)
    for n in range(50):
        opened.open(f"c{n}", "127.0.0.2")
    assert len(opened.closed) == 49
    assert len(caplog.records) == 1


def test_bounds_leave_room_for_the_rest_of_the_process():
    assert bounds_for(256) == Bounds(total=128, per_peer=32, backlog=32)
    assert bounds_for(1024) == Bounds(total=512, per_peer=128, backlog=128)
    assert bounds_for(1 << 20) == Bounds(MAX_CONNECTIONS, MAX_CONNECTIONS // 4, 128)
    for limit in (16, 64, 100, 256, 1024, 65536):
        bounds = bounds_for(limit)
        assert bounds.per_peer < bounds.total
        assert bounds.total + 2 * bounds.backlog < max(limit, 64)
