"""The connection bounds, on their own: who is shed when a bound is passed."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sidecar.connections import MAX_CONNECTIONS, Bounds, Connection, ConnectionGuard, bounds_for

if TYPE_CHECKING:
    from collections.abc import Callable


class Opened:
    """Connections made through a guard, the ones it closed, and the event loop's turns
    (the guard sheds on the turn after accepting)."""

    def __init__(self, total: int, per_peer: int, batch: int = 100) -> None:
        self.deferred: list[Callable[[], None]] = []
        self.guard = ConnectionGuard(
            total, per_peer, lambda: 0.0, defer=self.deferred.append, batch=batch
        )
        self.closed: list[str] = []
        self.idle: dict[str, bool] = {}
        self.handling: set[str] = set()  # their handlers run

    def open(self, name: str, peer: str, *, active: bool = False) -> Connection:
        """Accepted; `active` once its request is read (before the next turn)."""
        self.idle[name] = not active
        conn = Connection(
            peer,
            lambda: self.closed.append(name),
            lambda: self.idle[name],
            lambda: name in self.handling,
        )
        if active:
            self.handling.add(name)
        self.guard.admit(conn)
        return conn

    def turn(self) -> None:
        deferred = list(self.deferred)
        self.deferred.clear()
        for call in deferred:
            call()


def test_a_peer_past_its_bound_loses_its_oldest_idle_connection():
    opened = Opened(total=100, per_peer=3)
    opened.open("waiting", "127.0.0.2", active=True)  # a /busy being handled: never cut
    opened.open("old", "127.0.0.2")
    opened.open("newer", "127.0.0.2")
    opened.open("app", "127.0.0.1")
    opened.open("newest", "127.0.0.2")
    assert opened.closed == []  # not on accepting: on the next turn
    opened.turn()
    assert opened.closed == ["old"]
    assert opened.guard.count == 4


def test_a_connection_whose_request_came_by_the_next_turn_is_not_the_one_shed():
    """Host mode: the app's connection comes from the neighbour's address, among newer
    ones. Its request has been read by the time the guard sheds, so it is not idle."""
    opened = Opened(total=100, per_peer=2)
    opened.open("n1", "127.0.0.1")
    opened.open("app", "127.0.0.1")
    opened.open("n2", "127.0.0.1")
    opened.open("n3", "127.0.0.1")
    opened.idle["app"] = False  # its request was read on this turn
    opened.turn()
    assert opened.closed == ["n1", "n2"]
    assert len(opened.deferred) == 0


def test_kept_alive_connections_go_before_ones_that_have_not_sent_a_request():
    opened = Opened(total=100, per_peer=2)
    fresh = opened.open("fresh", "127.0.0.1")
    answered = opened.open("answered", "127.0.0.1")
    answered.requests = 1  # answered, now waiting for its next request
    opened.open("new", "127.0.0.1")
    opened.turn()
    assert opened.closed == ["answered"]
    assert fresh.open


def test_a_peer_whose_connections_are_all_handling_requests_keeps_them():
    opened = Opened(total=100, per_peer=2)
    opened.open("a", "10.0.0.5", active=True)
    opened.open("b", "10.0.0.5", active=True)
    opened.open("c", "10.0.0.5")
    opened.turn()
    assert opened.closed == ["c"]
    opened.open("d", "10.0.0.5", active=True)
    opened.turn()
    assert opened.closed == ["c"]  # nothing idle: a request being handled is never cut
    assert opened.guard.count == 3


def test_past_the_total_the_busiest_peer_loses_its_oldest_idle_connection():
    opened = Opened(total=5, per_peer=4)
    opened.open("x1", "127.0.0.3")
    opened.open("x2", "127.0.0.3")
    opened.open("y1", "127.0.0.4")
    opened.open("app1", "127.0.0.1")
    opened.open("x3", "127.0.0.3")
    opened.open("app2", "127.0.0.1")  # the sixth: 127.0.0.3 holds the most
    opened.turn()
    assert opened.closed == ["x1"]
    assert opened.guard.count == 5


def test_past_the_total_a_busiest_peer_with_nothing_idle_passes_it_on():
    opened = Opened(total=4, per_peer=4)
    for name in ("x1", "x2", "x3"):
        opened.open(name, "127.0.0.3", active=True)
    opened.open("y1", "127.0.0.4")
    opened.open("y2", "127.0.0.4")
    opened.turn()
    assert opened.closed == ["y1"]
    assert opened.guard.count == 4


def test_one_batch_past_the_total_idle_ones_are_shed_at_once():
    opened = Opened(total=2, per_peer=10, batch=2)
    opened.open("idle", "10.0.0.5")
    for name in ("a", "b", "c"):
        opened.open(name, "10.0.0.5", active=True)
    opened.open("app", "10.0.0.5", active=True)
    assert opened.closed == ["idle"]
    assert opened.guard.count == 4


def test_one_batch_past_the_total_the_cut_spares_what_may_be_the_apps_unread_request():
    """No waiting for the turn's reads: a connection that looks idle may have the app's
    request still unread. First goes one answered before and idle again, then one whose
    request is read but not begun (pipelined: it had answers, and may send it again),
    and only then one that has not sent a whole request."""
    opened = Opened(total=2, per_peer=10, batch=2)
    opened.open("unread", "127.0.0.1")
    answered = opened.open("answered", "127.0.0.1")
    answered.requests = 1  # kept alive: idle
    pipelined = opened.open("pipelined", "127.0.0.1", active=True)
    pipelined.requests = 5
    opened.handling.discard("pipelined")  # its next request waits for its turn
    opened.open("a", "127.0.0.1", active=True)
    opened.open("new", "127.0.0.1")
    assert opened.closed == ["answered"]
    opened.open("newer", "127.0.0.1")
    assert opened.closed == ["answered", "pipelined"]
    opened.open("newest", "127.0.0.1")
    assert opened.closed == ["answered", "pipelined", "unread"]


def test_one_batch_past_the_total_the_newest_is_cut_at_once():
    """Requests being handled are not shed, but the descriptors are planned for one
    accepted batch beyond the total: past that, no waiting for a turn."""
    opened = Opened(total=2, per_peer=10, batch=2)
    for name in ("a", "b", "c", "d"):
        opened.open(name, "10.0.0.5", active=True)
    assert opened.closed == []
    opened.open("e", "10.0.0.5", active=True)
    assert opened.closed == ["e"]
    opened.turn()
    assert opened.closed == ["e"]
    assert opened.guard.count == 4


def test_one_shedding_per_turn_however_many_are_accepted():
    opened = Opened(total=100, per_peer=1)
    for n in range(10):
        opened.open(f"c{n}", "127.0.0.2")
    assert len(opened.deferred) == 1
    opened.turn()
    assert opened.closed == [f"c{n}" for n in range(9)]
    opened.open("c10", "127.0.0.2")
    assert len(opened.deferred) == 1


def test_a_closed_connection_frees_its_place(caplog):
    caplog.set_level(logging.WARNING)
    opened = Opened(total=100, per_peer=1)
    first = opened.open("first", "127.0.0.2")
    opened.guard.forget(first)
    opened.guard.forget(first)  # closed twice (shed, then lost): counted once
    opened.open("second", "127.0.0.2")
    opened.turn()
    assert opened.closed == []
    opened.open("third", "127.0.0.2")
    opened.turn()
    assert opened.closed == ["second"]
    [line] = caplog.records
    assert (line.event, line.peer, line.shed) == ("connections_shed", "127.0.0.2", 1)  # type: ignore[attr-defined]


def test_shedding_is_logged_once_per_burst(caplog):
    caplog.set_level(logging.WARNING)
    opened = Opened(total=100, per_peer=1)
    for n in range(50):
        opened.open(f"c{n}", "127.0.0.2")
        opened.turn()
    assert len(opened.closed) == 49
    assert len(caplog.records) == 1


def test_bounds_leave_room_for_the_rest_of_the_process():
    assert bounds_for(256) == Bounds(total=128, per_peer=32, backlog=16)
    assert bounds_for(1024) == Bounds(total=512, per_peer=128, backlog=64)
    assert bounds_for(1 << 20) == Bounds(MAX_CONNECTIONS, MAX_CONNECTIONS // 4, 128)
    for limit in (16, 64, 100, 256, 1024, 65536):
        bounds = bounds_for(limit)
        assert bounds.per_peer < bounds.total
        assert bounds.total + 4 * bounds.backlog < max(limit, 64)
