"""Link state from carrier events and probe answers (sans-I/O): when a link goes out and back in."""

import pytest

from mptcp_tunnel.linkstate import FailoverSettings, LinkEvent, LinkMonitor

S = FailoverSettings(probe_interval_s=0.1, down_after_s=0.5, up_after_probes=3)


def probe_for(
    mon: LinkMonitor, start: float, end: float, answer: bool, link: str = "fixed"
) -> list[LinkEvent]:
    """Probe every 0.1 s over [start, end); answered after 50 ms when ``answer``."""
    events: list[LinkEvent] = []
    t = start
    while t < end - 1e-9:
        mon.probe_sent(link, t)
        if answer:
            events += mon.probe_reply(link, t + 0.05)
        events += mon.poll(t + 0.05)
        t = round(t + 0.1, 6)
    return events


def test_carrier_loss_is_down_at_once_and_back_only_after_probes() -> None:
    mon = LinkMonitor(["fixed", "cellular"], S, 0.0)
    assert mon.carrier("fixed", False, 1.0) == [LinkEvent("fixed", False, "carrier lost")]
    assert mon.down == {"fixed"}
    assert mon.carrier("fixed", True, 2.0) == []  # carrier alone is not enough
    assert not mon.is_up("fixed")
    events = probe_for(mon, 2.0, 2.3, answer=True)
    assert events == [LinkEvent("fixed", True, "3 probes answered")]
    assert mon.down == frozenset()


def test_blackhole_with_carrier_goes_down_after_down_after() -> None:
    mon = LinkMonitor(["fixed"], S, 0.0)
    assert probe_for(mon, 0.0, 2.0, answer=True) == []
    events = probe_for(mon, 2.0, 3.0, answer=False)
    assert [e.up for e in events] == [False]
    assert "no probe answered" in events[0].reason
    # Down within down_after + one probe interval of the last answer (1.95 s).
    mon2 = LinkMonitor(["fixed"], S, 0.0)
    probe_for(mon2, 0.0, 2.0, answer=True)
    t = 2.0
    while mon2.is_up("fixed"):
        mon2.probe_sent("fixed", t)
        mon2.poll(t + 0.05)
        t += 0.1
    assert t - 1.95 <= 0.5 + 0.1 + 0.06


def test_a_lost_probe_while_coming_back_restarts_the_count() -> None:
    mon = LinkMonitor(["fixed"], S, 0.0)
    mon.carrier("fixed", False, 0.0)
    mon.carrier("fixed", True, 0.1)
    assert mon.probe_reply("fixed", 0.2) == []
    assert mon.probe_reply("fixed", 0.3) == []
    probe_for(mon, 0.4, 1.1, answer=False)  # a gap longer than down_after
    assert not mon.is_up("fixed")
    assert mon.probe_reply("fixed", 1.2) == [] and mon.probe_reply("fixed", 1.3) == []
    assert mon.probe_reply("fixed", 1.4) == [LinkEvent("fixed", True, "3 probes answered")]


def test_no_probes_means_no_verdict_and_resume_forgets_the_pause() -> None:
    mon = LinkMonitor(["fixed"], S, 0.0)
    assert mon.poll(100.0) == []  # nothing was probed: nothing is known to be lost
    mon.probe_sent("fixed", 100.0)
    mon.resume(200.0)  # e.g. a new session's loop: probing starts afresh
    mon.probe_sent("fixed", 200.0)
    assert mon.poll(200.2) == []


def test_without_probes_carrier_decides_alone() -> None:
    mon = LinkMonitor(["fixed"], FailoverSettings(probe_interval_s=0), 0.0)
    assert mon.carrier("fixed", False, 1.0)[0].up is False
    assert mon.carrier("fixed", True, 2.0) == [LinkEvent("fixed", True, "carrier back")]
    assert mon.carrier("fixed", True, 3.0) == []  # no change, no event


def test_links_are_independent() -> None:
    mon = LinkMonitor(["fixed", "cellular"], S, 0.0)
    probe_for(mon, 0.0, 1.0, answer=True, link="cellular")
    probe_for(mon, 0.0, 1.0, answer=False, link="fixed")
    assert mon.down == {"fixed"}


def test_every_link_down_removes_no_endpoint() -> None:
    mon = LinkMonitor(["fixed", "cellular"], S, 0.0)
    mon.carrier("fixed", False, 1.0)
    assert mon.excluded == {"fixed"}
    mon.carrier("cellular", False, 1.1)
    assert mon.down == {"fixed", "cellular"} and mon.excluded == frozenset()


def _silence(mon: LinkMonitor, start: float, stalled: frozenset[str], link: str = "fixed") -> float:
    """Probes go unanswered from ``start``; returns when the link went down (polling at each probe)."""
    t = start
    while mon.is_up(link):
        mon.probe_sent(link, t)
        asked = frozenset(mon.suspects(t)) & stalled  # the caller only asks about suspects
        mon.poll(t, asked)
        t = round(t + 0.1, 6)
        assert t < start + 5, "never went down"
    return round(t - 0.1 - start, 6)


def test_a_stalled_subflow_cuts_the_time_to_down() -> None:
    probes_only = LinkMonitor(["fixed"], S, 0.0)
    probe_for(probes_only, 0.0, 2.0, answer=True)
    both = LinkMonitor(["fixed"], S, 0.0)
    probe_for(both, 0.0, 2.0, answer=True)
    assert _silence(probes_only, 2.0, frozenset()) == 0.5
    assert _silence(both, 2.0, frozenset({"fixed"})) == 0.2
    assert S.stalled_after_s == 0.2


def test_a_verdict_between_two_probes_is_due_on_time() -> None:
    mon = LinkMonitor(["fixed", "cellular"], FailoverSettings(down_after_s=0.6), 0.0)
    assert mon.due(0.0) is None  # nothing unanswered: nothing can fall due
    mon.probe_sent("cellular", 1.0)
    mon.probe_reply("cellular", 1.05)
    mon.probe_sent("fixed", 1.0)  # unanswered from here on
    assert mon.due(1.0) == pytest.approx(1.24)  # 0.4 of 0.6 s: when its subflow may confirm it
    assert mon.due(1.3) == pytest.approx(1.6)  # then the probes' own limit
    assert mon.due(1.6) is None
    mon.poll(1.6)
    assert mon.down == {"fixed"} and mon.due(1.7) is None  # a down link is not waited for


def test_a_stalled_subflow_alone_is_not_down() -> None:
    mon = LinkMonitor(["fixed", "cellular"], S, 0.0)
    for t in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
        for link in ("fixed", "cellular"):
            mon.probe_sent(link, t)
            mon.probe_reply(link, t + 0.05)
        # probes answered: the subflow's silence (e.g. a long RTO on a healthy link) does not count
        assert mon.suspects(t + 0.06) == []
        assert mon.poll(t + 0.06, {"fixed", "cellular"}) == []
    assert mon.down == frozenset()


def test_only_links_with_unanswered_probes_are_suspects() -> None:
    mon = LinkMonitor(["fixed", "cellular"], S, 0.0)
    t = 0.0
    while t < 0.3:
        mon.probe_sent("fixed", t)
        mon.probe_sent("cellular", t)
        mon.probe_reply("cellular", t + 0.05)
        t = round(t + 0.1, 6)
    assert mon.suspects(0.3) == ["fixed"]
    events = mon.poll(0.3, {"fixed"})
    assert [(e.link, e.up) for e in events] == [("fixed", False)]
    assert "unacknowledged" in events[0].reason
    assert mon.suspects(0.4) == []  # down links are no suspects
