"""Is each access link usable? A sans-I/O decision from carrier events and probe replies.

Why the agent decides this itself: the kernel only learns that a subflow is dead from its own
retransmission timer, which backs off exponentially. Measured in the lab, a blackholed fixed link took
its subflow's RTO to 8 s and more; when the link came back, the next retransmission (and so the
revival of the subflow) came only ~7 s later, and the peer's subflow, revived by that packet but still
backed off itself, held data the receiver needed for 4-5 s more: the whole tunnel stalled. So a link
that is down has its endpoint removed (the subflow closes at once, its data is re-sent on the other
links) and a link that is back gets a fresh subflow.

Inputs: carrier changes (netlink), probes sent and answered (ICMP echo over the link), the links
whose subflow holds data the peer has not acknowledged for a while (TCP_INFO), time.
Output: ``LinkEvent``s, one per change of a link's state, with the reason.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class FailoverSettings:
    probe_interval_s: float = 0.1  # 0 disables probes: only the carrier counts
    down_after_s: float = 0.5  # no probe answered for this long: the link is down
    up_after_probes: int = 3  # consecutive answers before a down link is used again

    @property
    def stalled_after_s(self) -> float:
        """Down after 0.4 of ``down_after_s`` (200 ms of 500) when the link's own subflow agrees (``poll``):
        a blackhole under a download is over sooner, and the inner flows lose less to the queue that
        builds in front of the survivors meanwhile."""
        return self.down_after_s * 0.4


@dataclass(frozen=True)
class LinkEvent:
    link: str
    up: bool
    reason: str


class _State:
    __slots__ = ("carrier", "up", "last_reply", "replies", "first_probe")

    def __init__(self, now: float) -> None:
        self.carrier = True
        self.up = True
        self.last_reply = now
        self.replies = 0  # consecutive answers since the link went down
        self.first_probe: float | None = None  # first probe sent since the last answer


class LinkMonitor:
    def __init__(self, links: list[str], settings: FailoverSettings, now: float) -> None:
        self.settings = settings
        self._links = {name: _State(now) for name in links}

    def is_up(self, link: str) -> bool:
        return self._links[link].up

    def has_carrier(self, link: str) -> bool:
        return self._links[link].carrier

    def resume(self, now: float) -> None:
        """Probing starts (again) now: time without probes is not time without answers."""
        for st in self._links.values():
            st.first_probe = None
            if st.up:
                st.last_reply = now

    @property
    def down(self) -> frozenset[str]:
        return frozenset(name for name, s in self._links.items() if not s.up)

    @property
    def excluded(self) -> frozenset[str]:
        """Links whose endpoints go out: the down ones, unless that is every link.

        With nothing left to fail over to, removing endpoints would only close the last subflows
        (seen when the whole host stalled and every probe came late): then the kernel keeps trying.
        """
        down = self.down
        return frozenset() if len(down) == len(self._links) else down

    def carrier(self, link: str, present: bool, now: float) -> list[LinkEvent]:
        st = self._links[link]
        if present == st.carrier:
            return []
        st.carrier = present
        if not present:
            st.replies = 0
            if st.up:
                st.up = False
                return [LinkEvent(link, False, "carrier lost")]
            return []
        # Carrier back: usable once probes answer again (routes and the far end may lag behind).
        st.last_reply = now
        st.first_probe = None
        if self.settings.probe_interval_s <= 0 and not st.up:
            st.up = True
            return [LinkEvent(link, True, "carrier back")]
        return []

    def probe_sent(self, link: str, now: float) -> None:
        st = self._links[link]
        if st.first_probe is None:
            st.first_probe = now

    def probe_reply(self, link: str, now: float) -> list[LinkEvent]:
        st = self._links[link]
        st.last_reply = now
        st.first_probe = None
        if st.up or not st.carrier:
            return []
        st.replies += 1
        if st.replies >= self.settings.up_after_probes:
            st.up = True
            st.replies = 0
            return [LinkEvent(link, True, f"{self.settings.up_after_probes} probes answered")]
        return []

    def suspects(self, now: float) -> list[str]:
        """Up links whose probes have gone unanswered for ``stalled_after_s``: the caller then asks
        their subflows (the question costs a syscall, so it is only asked when it can matter)."""
        early = self.settings.stalled_after_s
        return [name for name, st in self._links.items() if st.up and self._waiting(st, now, early)]

    def due(self, now: float) -> float | None:
        """The next moment after ``now`` at which ``poll`` could take an up link down, if a probe is
        unanswered. The caller polls then too, not only when it probes: ``stalled_after_s`` may fall
        between two probes (with other settings than 500 and 100 ms), and polling at the probes alone
        acted up to one interval late."""
        times = [
            start + limit
            for st in self._links.values()
            if st.up and st.first_probe is not None
            for start in (max(st.first_probe, st.last_reply),)
            for limit in (self.settings.stalled_after_s, self.settings.down_after_s)
            if start + limit > now
        ]
        return min(times, default=None)

    def poll(self, now: float, stalled: Collection[str] = ()) -> list[LinkEvent]:
        """Time passes: links whose probes went unanswered for ``down_after_s`` go down, and so do
        links in ``stalled`` after ``stalled_after_s`` (0.4 of it).

        ``stalled``: links whose subflow holds data that has had no acknowledgement for
        ``stalled_after_s``. Two independent signals agreeing (the probes and the subflow's own ACK
        clock) are as strong as the probes alone for longer, and under an upload, or a download
        whose ACKs go up the tunnel, a blackhole is found in 0.4 of the time.
        """
        out = []
        limit = self.settings.down_after_s
        early = self.settings.stalled_after_s
        for name, st in self._links.items():
            if not st.up:
                if st.first_probe is not None and now - st.first_probe >= limit:
                    st.replies = 0  # a lost probe restarts the count: a flapping link stays out
                continue
            if self._waiting(st, now, limit):
                also = ""
            elif name in stalled and self._waiting(st, now, early):
                also = ", its subflow's data unacknowledged"
            else:
                continue
            st.up = False
            st.replies = 0
            out.append(LinkEvent(name, False, f"no probe answered for {now - st.last_reply:.1f} s{also}"))
        return out

    @staticmethod
    def _waiting(st: _State, now: float, limit: float) -> bool:
        # Unanswered means: a probe was sent at least ``limit`` ago and nothing came back since (so
        # an agent that stopped probing for a while never declares a link dead).
        return st.first_probe is not None and now - st.first_probe >= limit and now - st.last_reply >= limit
