"""The BGW's ``status``: each session's subflows as its worker last read them, in JSON and the table."""

from __future__ import annotations

import json

from mptcp_tunnel import metrics, status
from mptcp_tunnel.mptcp import SubflowInfo


def _subflow(local: str, remote: str, rtt_us: int, sent: int) -> SubflowInfo:
    return SubflowInfo(
        local=local,
        remote=remote,
        state="established",
        rtt_us=rtt_us,
        cwnd=40,
        bytes_sent=sent,
        bytes_received=1_000,
        bytes_retrans=3_000,
        total_retrans=2,
        unacked=0,
        backoff=0,
    )


def test_bgw_status_shows_each_sessions_subflows() -> None:
    metrics.SESSION_UP.labels("cpe-st").set(1)
    metrics.SUBFLOWS.labels("cpe-st").set(2)
    metrics.SESSION_UP.labels("cpe-idle").set(1)
    rows = [
        status.subflow_row(_subflow("10.1.0.2", "10.1.0.1", 52_340, 3_000_000)),
        status.subflow_row(_subflow("10.2.0.2", "10.2.0.1", 81_000, 1_500_000)),
    ]
    views = {"cpe-st": (100.0, rows), "not-configured": (100.0, rows)}
    snap = json.loads(json.dumps(status.bgw_snapshot(views, now=103.0)))  # what --json prints
    by_id = {c["id"]: c for c in snap["cpes"]}
    assert "not-configured" not in by_id  # a view alone does not make a CPE
    st = by_id["cpe-st"]
    assert st["subflows"] == 2 and st["subflows_age_s"] == 3.0
    assert [(r["local"], r["rtt_ms"], r["bytes_sent"], r["retransmits"]) for r in st["subflow_details"]] == [
        ("10.1.0.2", 52.3, 3_000_000, 2),
        ("10.2.0.2", 81.0, 1_500_000, 2),
    ]
    assert "subflow_details" not in by_id["cpe-idle"]  # never read: no rows, not empty ones
    text = status.render(snap)
    lines = [line for line in text.splitlines() if line.startswith("cpe-st ") and "->" in line]
    assert len(lines) == 2, text
    assert "10.1.0.2 -> 10.1.0.1" in lines[0] and "established" in lines[0] and "52.3" in lines[0]
    assert "MiB" in lines[0] and lines[0].rstrip().endswith("3 s")
