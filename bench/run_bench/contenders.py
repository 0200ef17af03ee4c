"""The contenders (DESIGN.md names) and how one bulk TCP measurement runs for each.

- ``fixed-only`` / ``cellular-only``: plain TCP between CPE and BGW over that link alone.
- ``mptcp-tunnel``: client -> server through both agents in MPTCP mode.
- ``hya-1:1`` / ``hya-2:1``: client -> server through both agents in HYA mode (UDP per link,
  proportional scheduler with that fixed:cellular ratio, JUGGLER-style reorder buffer).
- ``raw-mptcp``: ``mptcpize run iperf3`` between the CPE and BGW (no tunnel, no TUN): the
  MPTCP connection the tunnel rides on, as a reference.

Traffic is a download (server -> client, iperf3 ``-R``), as in the paper.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from mtlab import Lab, LabError, procs
from mtlab.measure import IperfResult, iperf3

SERVER = "172.16.0.2"
CLIENT = "192.168.10.2"
HYA_LINKS = (("10.1.0.1", "10.1.0.2"), ("10.2.0.1", "10.2.0.2"))  # (cpe, bgw) per link

CONTENDERS = (
    "fixed-only",
    "cellular-only",
    "mptcp-tunnel",
    "mptcp-tunnel-perpacket",
    "mptcp-tunnel-offload",
    "mptcp-tunnel-offload-tls",
    "mptcp-tunnel-codel",
    "mptcp-tunnel-fq",
    "mptcp-tunnel-fq-cubic",
    "mptcp-tunnel-fq-shaped",
    "mptcp-tunnel-fq-links",
    "hya-1:1",
    "hya-2:1",
    "raw-mptcp",
)
# Datapath variants: the agent's tunnel.offload setting each one runs with.
# Datapath variants say what is on: offload on/off without TLS, offload with TLS ("mptcp-tunnel",
# the shipped default, has TLS and offload auto).
OFFLOAD_OF = {
    "mptcp-tunnel-perpacket": "off",
    "mptcp-tunnel-offload": "on",
    "mptcp-tunnel-offload-tls": "on-tls",
}
# opt-in tunnel.aqm variants ("mptcp-tunnel" runs the default: the byte bound alone)
# ("+cc": the tunnel's subflows on that congestion control; else the lab's CPE and BGW default,
# cubic, as on Debian)
AQM_OF = {
    "mptcp-tunnel-codel": "codel",
    "mptcp-tunnel-fq": "fq_codel+bbr",
    "mptcp-tunnel-fq-cubic": "fq_codel+cubic",
}
# fq_codel + a shaper; cubic subflows. fq-shaped: a fixed stream rate on both agents
# (tunnel.shape_mbit), this share of the links' rates
SHAPE_SHARE = 0.9
# fq-links: the CPE's cpe.shape_share, this share of the line of the links that carry traffic, the
# BGW told by the CPE (0.97 until the links had their own limits: latency 28 Nov, 0.97 / 0.98 / 0.99
# gave p99 <= 1.41 / 1.48 / 1.71 x idle at >= 0.889 / 0.898 / 0.908 of the link sum)
LINE_SHARE = 0.98
# ... and cpe.link_share: a tbf on each of the CPE's links at this share of the link's rate
LINK_SHARE = 0.99


@dataclass(frozen=True)
class Path:
    """Where an iperf3 client and server run for a contender, and what agents it needs."""

    client_ns: str
    server_ns: str
    server_addr: str
    bind: str | None
    agents: str  # "any", "mptcp", "hya-1:1", "hya-2:1"
    wrap: tuple[str, ...] = ()


def path_of(contender: str) -> Path:
    if contender == "fixed-only":
        return Path("cpe", "bgw", "10.1.0.2", "10.1.0.1", "any")
    if contender == "cellular-only":
        return Path("cpe", "bgw", "10.2.0.2", "10.2.0.1", "any")
    if contender == "mptcp-tunnel":
        return Path("client", "server", SERVER, None, "mptcp")
    if contender in AQM_OF:  # an opt-in tunnel.aqm on both agents
        return Path("client", "server", SERVER, None, f"mptcp-aqm-{AQM_OF[contender]}")
    if contender == "mptcp-tunnel-fq-shaped":
        return Path("client", "server", SERVER, None, "mptcp-shaped")
    if contender == "mptcp-tunnel-fq-links":
        return Path("client", "server", SERVER, None, "mptcp-links")
    if contender in OFFLOAD_OF:
        return Path("client", "server", SERVER, None, f"mptcp-offload-{OFFLOAD_OF[contender]}")
    if contender in ("hya-1:1", "hya-2:1"):
        return Path("client", "server", SERVER, None, contender)
    if contender == "raw-mptcp":
        return Path("cpe", "bgw", "10.1.0.2", "10.1.0.1", "mptcp", ("mptcpize", "run"))
    raise ValueError(f"unknown contender {contender!r} (have: {', '.join(CONTENDERS)})")


def hya_config(lab: Lab, role: str, ratio: str, ooo_ms: float, inseq_ms: float) -> dict[str, Any]:
    cfg = lab.agent_config(role)
    cfg["mode"] = "hya"
    pairs = HYA_LINKS if role == "cpe" else tuple((b, a) for a, b in HYA_LINKS)
    cfg["hya"] = {
        "ratio": ratio,
        "ooo_timeout_ms": ooo_ms,
        "inseq_timeout_ms": inseq_ms,
        "links": [{"local": a, "remote": b} for a, b in pairs],
    }
    return cfg


class Agents:
    """Keeps the lab's agents in the mode the next contender needs (restarting only on change)."""

    def __init__(
        self,
        lab: Lab,
        ooo_ms: float = 10.0,
        inseq_ms: float = 1.0,
        shape_share: float = SHAPE_SHARE,
        line_share: float = LINE_SHARE,
        aqm_target_ms: float | None = None,
    ) -> None:
        self.lab = lab
        self.aqm_target_ms = aqm_target_ms
        self.shape_share = shape_share
        self.line_share = line_share
        self.mode = "none"
        self.ooo_ms = ooo_ms
        self.inseq_ms = inseq_ms

    def ensure(self, mode: str) -> None:
        if mode == "any":
            return
        if mode == self.mode and all(self.lab.agent_alive(r) for r in ("bgw", "cpe")):
            return
        self.stop()
        for role in ("bgw", "cpe"):
            self.lab.start_agent(role, self.config(role, mode))
        self.lab.wait_tunnel(30)
        if mode.startswith("mptcp"):
            self.wait_subflows()
        self.mode = mode
        time.sleep(0.5)

    def config(self, role: str, mode: str) -> dict[str, Any] | None:
        """The agent config of ``role`` for an agent ``mode`` (None: the lab's own)."""
        cfg = None
        if mode.startswith("hya-"):
            cfg = hya_config(self.lab, role, mode[4:], self.ooo_ms, self.inseq_ms)
        elif mode.startswith("mptcp-offload-"):
            cfg = self.lab.agent_config(role)
            offload, *tls = mode[len("mptcp-offload-") :].split("-")
            cfg.setdefault("tunnel", {})["offload"] = offload
            cfg["tunnel"]["encryption"] = "tls" if tls else "none"
        elif mode.startswith("mptcp-aqm-"):
            cfg = self.lab.agent_config(role)
            aqm, _, cc = mode[len("mptcp-aqm-") :].partition("+")
            cfg.setdefault("tunnel", {})["aqm"] = aqm
            if cc:
                cfg["tunnel"]["congestion_control"] = cc
        elif mode == "mptcp-shaped":
            cfg = self.lab.agent_config(role)
            cfg.setdefault("tunnel", {}).update(
                aqm="fq_codel",
                shape_mbit=shape_rate(self.lab, self.shape_share),
                congestion_control="cubic",
            )
        elif mode == "mptcp-links":
            cfg = self.lab.agent_config(role)
            cfg.setdefault("tunnel", {}).update(aqm="fq_codel", congestion_control="cubic")
            if role == "cpe":
                cfg["cpe"]["shape_share"] = self.line_share
                cfg["cpe"]["link_share"] = LINK_SHARE
                for link in cfg["cpe"]["links"]:  # the rates the operator sells
                    link["rate_mbit"] = self.lab.links[link["name"]].rate_mbit
        elif mode != "mptcp":
            raise ValueError(f"unknown agent mode {mode!r}")
        if cfg is not None and self.aqm_target_ms is not None and cfg.get("tunnel", {}).get("aqm"):
            cfg["tunnel"]["aqm_target_ms"] = self.aqm_target_ms
        return cfg

    def wait_subflows(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                m = self.lab.metrics("cpe")
            except LabError:
                m = {}
            if any(k.startswith("mptcp_tunnel_subflows") and v >= 2 for k, v in m.items()):
                return
            time.sleep(0.2)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each agent, its worker processes included."""
        out = {}
        for role in ("cpe", "bgw"):
            pid = self.lab.pid(f"agent-{role}")
            out[role] = process_tree_cpu(pid) if pid is not None else 0.0
        return out

    def stop(self) -> None:
        for role in ("cpe", "bgw"):
            self.lab.stop_agent(role)
        self.mode = "none"

    def start_cpe_config(
        self, cfg: dict[str, Any], mode: str, bgw: dict[str, Any] | None = None
    ) -> None:
        """The BGW (``bgw``, else the shipped one) and a CPE with ``cfg``, tunnel up. ``mode`` names
        the setup; it is not one ``ensure`` knows, so the next scenario restarts the agents."""
        self.stop()
        self.lab.start_agent("bgw", bgw)
        self.lab.start_agent("cpe", cfg)
        self.mode = mode
        self.lab.wait_tunnel(30)


def shape_rate(lab: Lab, share: float = SHAPE_SHARE) -> float:
    """The shaped contender's rate: a share of the links' emulated rates, as an operator sets
    it from the rates it sells (CAKE's bandwidth)."""
    return round(share * sum(p.rate_mbit or 0.0 for p in lab.links.values()), 2)


def link_settings(lab: Lab) -> dict[str, dict[str, Any]]:
    """Each link's emulation settings, as a scenario records them."""
    return {
        name: {"rate_mbit": p.rate_mbit, "rtt_ms": 2 * p.delay_ms, "loss_pct": p.loss_pct}
        for name, p in lab.links.items()
    }


def bulk(
    lab: Lab,
    agents: Agents,
    contender: str,
    seconds: int,
    omit: int = 0,
    parallel: int = 1,
    retries: int = 1,
    cc: str | None = None,
) -> IperfResult:
    """One download measurement for ``contender`` (retried once if iperf3 itself fails).

    ``cc`` sets the end hosts' TCP congestion control (iperf3 ``-C``, both ends).
    """
    p = path_of(contender)
    agents.ensure(p.agents)
    extra = ["-P", str(parallel)] if parallel > 1 else []
    if cc:
        extra += ["-C", cc]
    for attempt in range(retries + 1):
        try:
            return iperf3(
                lab,
                p.client_ns,
                p.server_ns,
                p.server_addr,
                bind=p.bind,
                seconds=seconds,
                omit=omit,
                reverse=True,
                extra=extra,
                wrap=list(p.wrap) or None,
            )
        except LabError:
            if attempt == retries:
                raise
            agents.ensure(p.agents)
            time.sleep(1)
    raise AssertionError("unreachable")


def process_tree_cpu(pid: int) -> float:
    """utime + stime of ``pid`` and its living descendants, in seconds (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in procs.process_tree([pid]):
        try:
            with open(f"/proc/{member}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def congestion(result: IperfResult) -> str | None:
    """The congestion control the sender used (iperf3 reports it in ``end``)."""
    end = result.raw.get("end", {})
    cc = end.get("sender_tcp_congestion")
    return str(cc) if cc else None


def series(result: IperfResult) -> list[float]:
    """Per-second goodput (Mbit/s) from iperf3's intervals, omitted seconds included."""
    return [round(iv["sum"]["bits_per_second"] / 1e6, 3) for iv in result.raw.get("intervals", [])]


def stream_mbps(result: IperfResult) -> list[float]:
    """Receiver goodput of each parallel stream (Mbit/s)."""
    out = []
    for s in result.raw.get("end", {}).get("streams", []):
        recv = s.get("receiver") or s.get("udp") or {}
        out.append(round(recv.get("bits_per_second", 0.0) / 1e6, 3))
    return out
