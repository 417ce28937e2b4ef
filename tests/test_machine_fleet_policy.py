"""The renewal spread that keeps a fleet started together from renewing together.

Driven on the fake clock by the harness; the machine's injected `rand` picks the phase.
"""

from __future__ import annotations

import pytest

from sidecar.machine import Op, Policy
from tests.harness import Harness

ENABLE, DISABLE = Op.ENABLE, Op.DISABLE
PERIOD = Policy().period
MARGIN = Policy().renew_margin
CYCLE = PERIOD - MARGIN  # 56 minutes between renewals
SPREAD = Policy().renew_spread


def enables(h: Harness) -> list[float]:
    return [m.at for m in h.made if m.op is ENABLE]


def busy_from_start(rand: float, policy: Policy | None = None) -> Harness:
    """A sidecar whose first job arrives as it starts, as in a deployment."""
    h = Harness(policy=policy or Policy(), rand=rand)
    h.busy()
    return h


def test_the_default_spreads_the_first_renewal_over_nine_tenths_of_the_cycle():
    """The default window: from 5.6 to 56 minutes after the first enable."""
    assert SPREAD == 0.9
    assert Policy().renew_window == pytest.approx(0.9 * CYCLE)


@pytest.mark.parametrize(
    ("rand", "first_renewal"),
    [(1.0, CYCLE), (0.5, CYCLE - 0.5 * SPREAD * CYCLE), (0.0, CYCLE - SPREAD * CYCLE)],
)
def test_first_renewal_after_start_comes_at_the_phase_rand_picks(rand, first_renewal):
    """rand 1 keeps the usual moment; lower values renew earlier, never later."""
    h = busy_from_start(rand)
    h.run_for(first_renewal + 1, check=True)
    assert enables(h) == [0.0, pytest.approx(first_renewal)]


def test_later_renewals_keep_the_phase_the_first_one_picked():
    """After the first renewal each comes a full cycle after the previous, never sooner."""
    h = busy_from_start(0.0)
    h.run_for(3 * 3600, check=True)
    first = CYCLE - SPREAD * CYCLE
    assert enables(h) == pytest.approx([0.0, *(first + k * CYCLE for k in range(4))])


def test_only_the_first_protection_after_start_is_spread():
    """A later busy period starts at a moment of its own: its renewal is not moved earlier."""
    h = busy_from_start(0.0)
    h.run_for(60)
    h.idle()
    h.run_for(600)  # past the grace: protection is disabled
    assert [m.op for m in h.made] == [ENABLE, DISABLE]
    h.busy()
    second_enable = h.now
    h.run_for(CYCLE + 1, check=True)
    assert enables(h)[1:] == pytest.approx([second_enable, second_enable + CYCLE])


def test_adopted_protection_counts_as_the_first():
    """A restarted sidecar spreads the renewal of the protection it adopted, within bounds."""
    h = Harness(rand=0.5)
    h.ecs_expires_wall = h.clock.wall() + PERIOD
    h.settle()  # reads the protection in force
    h.busy()
    h.run_for(PERIOD, check=True)
    renewal = enables(h)[0]
    assert renewal == pytest.approx(CYCLE - 0.5 * SPREAD * CYCLE)


def test_no_spread_when_turned_off():
    """renew_spread 0: the first renewal comes the margin before expiry, whatever rand says."""
    h = busy_from_start(0.0, Policy(renew_spread=0.0))
    h.run_for(CYCLE + 1, check=True)
    assert enables(h) == [0.0, CYCLE]


def test_a_fleet_started_together_renews_spread_over_the_window():
    """Tasks enabled in the same second renew across 41 minutes, not in the same one."""
    renewals = []
    for i in range(100):
        h = busy_from_start((i + 0.5) / 100)
        h.run_for(CYCLE + 1, check=True)
        renewals.append(enables(h)[1])
    assert min(renewals) >= CYCLE - SPREAD * CYCLE
    assert max(renewals) <= CYCLE  # never closer to expiry than the margin
    per_minute = [0] * 60
    for at in renewals:
        per_minute[int(at // 60)] += 1
    assert max(per_minute) <= 4  # 100 renewals over 41 minutes: about 2.4 a minute


def test_the_spread_never_renews_within_the_renew_gap():
    """Even a window longer than the time left (short expiry) keeps the floor between calls."""
    h = busy_from_start(0.0, Policy(expires_minutes=1))
    h.run_for(60, check=True)
    gaps = [b - a for a, b in zip(enables(h), enables(h)[1:], strict=False)]
    assert gaps
    assert min(gaps) >= h.policy.min_renew_gap
