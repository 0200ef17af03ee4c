"""The overflow policy's decision: cellular joins after a sustained high demand, leaves with hysteresis."""

from mptcp_tunnel.overflow import OverflowPolicy, OverflowSettings

S = OverflowSettings(join_at=0.9, join_after_s=2.0, leave_at=0.7, leave_after_s=5.0)
MBIT = 1e6 / 8  # bytes per second at 1 Mbit/s


def run(
    policy: OverflowPolicy, start: float, seconds: int, mbps: float, down: int
) -> tuple[list[float], int]:
    """Feed one sample a second at ``mbps`` downstream; returns the times of decisions."""
    changes = []
    for i in range(1, seconds + 1):
        down += int(mbps * MBIT)
        d = policy.sample(start + i, 0, down)
        if d is not None:
            changes.append(start + i)
    return changes, down


def test_demand_below_the_fixed_capacity_never_joins() -> None:
    p = OverflowPolicy(S, 10e6)
    p.sample(0.0, 0, 0)
    changes, _ = run(p, 0.0, 60, 8.5, 0)  # 85 %: below join_at
    assert changes == [] and not p.active


def test_sustained_demand_joins_after_the_hold_and_leaves_with_hysteresis() -> None:
    p = OverflowPolicy(S, 10e6)
    p.sample(0.0, 0, 0)
    changes, down = run(p, 0.0, 10, 12.0, 0)
    assert changes == [2.0] and p.active  # above 90 % from t=0: joins after 2 s
    # 8 Mbit/s (80 %) is between leave_at and join_at: stays joined
    changes, down = run(p, 10.0, 20, 8.0, down)
    assert changes == [] and p.active
    changes, down = run(p, 30.0, 10, 3.0, down)
    assert changes == [35.0] and not p.active  # below 70 % for 5 s


def test_a_short_burst_does_not_join() -> None:
    p = OverflowPolicy(S, 10e6)
    p.sample(0.0, 0, 0)
    changes, down = run(p, 0.0, 1, 20.0, 0)
    changes2, _ = run(p, 1.0, 10, 5.0, down)
    assert changes == changes2 == [] and not p.active


def test_upstream_demand_counts_too() -> None:
    p = OverflowPolicy(S, 10e6)
    p.sample(0.0, 0, 0)
    up = 0
    decisions = []
    for t in range(1, 4):
        up += int(11 * MBIT)
        decisions.append(p.sample(float(t), up, 0))
    d = decisions[1]
    assert decisions[0] is None and decisions[2] is None
    assert d is not None and d.cellular_active and "cellular joins" in d.reason
