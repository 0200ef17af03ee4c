"""The ``overflow`` policy's decision (sans-I/O): should the cellular links carry data now?

Fixed first: cellular links keep the backup flag (the BGW sends nothing on them, nor does the CPE's
scheduler while a non-backup subflow works). When the demand - the tunnel's rate over every link, in
the busier direction - stays at or above ``join_at`` of the fixed links' declared capacity for
``join_after_s``, cellular joins (its backup flag is cleared, which sends MP_PRIO). When the demand
stays below ``leave_at`` for ``leave_after_s`` it leaves again. ``leave_at`` < ``join_at`` and the
longer leave time are the hysteresis: a demand near the fixed capacity does not flip the flag back
and forth. Only the default MPTCP scheduler exists in mainline kernels, hence the flag.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OverflowSettings:
    join_at: float = 0.85  # demand / fixed capacity
    join_after_s: float = 2.0
    leave_at: float = 0.6
    leave_after_s: float = 10.0


@dataclass(frozen=True)
class Decision:
    cellular_active: bool
    reason: str


class OverflowPolicy:
    def __init__(self, settings: OverflowSettings, fixed_capacity_bps: float) -> None:
        self.settings = settings
        self.capacity = fixed_capacity_bps
        self.active = False
        self._since: float | None = None  # when the demand first crossed the current threshold
        self._last: tuple[float, int, int] | None = None  # (time, bytes up, bytes down)
        self.demand_bps = 0.0

    def sample(self, now: float, bytes_up: int, bytes_down: int) -> Decision | None:
        """Feed the tunnel's byte counters (all links, monotonic); a Decision when the state changes."""
        last, self._last = self._last, (now, bytes_up, bytes_down)
        if last is None or now <= last[0]:
            return None
        dt = now - last[0]
        self.demand_bps = 8 * max(bytes_up - last[1], bytes_down - last[2], 0) / dt
        util = self.demand_bps / self.capacity if self.capacity > 0 else 0.0
        s = self.settings
        crossing = util < s.leave_at if self.active else util >= s.join_at
        if not crossing:
            self._since = None
            return None
        if self._since is None:
            self._since = last[0]  # the whole interval was above (or below) the threshold
        hold = s.leave_after_s if self.active else s.join_after_s
        if now - self._since < hold - 1e-9:
            return None
        self.active = not self.active
        self._since = None
        verb = "joins" if self.active else "leaves"
        return Decision(
            self.active,
            f"cellular {verb}: demand {self.demand_bps / 1e6:.1f} Mbit/s = {util:.0%} of the fixed"
            f" capacity for {hold:g} s",
        )
