"""The Grafana dashboard in the repo only queries metrics the agent exports."""

import json
import re
from pathlib import Path

from mptcp_tunnel import metrics

DASHBOARD = Path(__file__).resolve().parents[3] / "grafana" / "mptcp-tunnel.json"


def test_dashboard_queries_only_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"mptcp_tunnel_\w+", e)}
    exported = set()
    for family in metrics.REGISTRY.collect():
        exported |= {s.name for s in family.samples} | {family.name}
    # label-less families export samples even before use; labelled ones by their family name
    missing = {m for m in used if m not in exported and m.removesuffix("_total") not in exported}
    assert not missing, f"dashboard queries metrics the agent does not export: {sorted(missing)}"
    assert len(used) >= 10


def test_dashboard_shows_the_cellular_cap() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for name in ("mptcp_tunnel_cap_used_bytes", "mptcp_tunnel_cap_limit_bytes", "mptcp_tunnel_cap_spent"):
        assert name in exprs, f"no panel shows {name}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
