"""What the benchmarks need from the lab beyond ``mtlab.Lab``: emulation checks and counters,
removing the emulation for the datapath ceiling, and plain routing for the "direct" path."""

from __future__ import annotations

import contextlib
import json
import math
import socket
import statistics
import subprocess
from typing import Any

from mtlab import Lab, shaping, topology
from mtlab.lab import QUEUE_NUM
from mtlab.measure import ping_rtts
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from run_bench.results import percentile

RTT_TOLERANCE_MS = 1.0
LOSS_TOLERANCE_REL = 0.10
LOSS_PROBE_MIN_PCT = 0.5  # below this a probe cannot resolve ±10 % in seconds
LOSS_PROBE_COUNT = 3000
TC_ROOT = 0xFFFFFFFF


def link_ends(name: str) -> tuple[topology.End, topology.End]:
    """(cpe end, bgw end) of an access link."""
    w = topology.wire(name)
    return w.a, w.b


def link_rtt(lab: Lab, name: str, count: int = 20) -> list[float]:
    """RTTs (ms) of pings from the CPE to the BGW's address on that link (through the emulation)."""
    cpe, bgw = link_ends(name)
    dst = bgw.addrs[0].split("/")[0]
    return ping_rtts(lab, "cpe", dst, count=count, interval=0.05)


def drop_counter(lab: Lab, role: str, ifname: str) -> int:
    """Packets dropped so far by the lab's loss rule on ``ifname``'s ingress."""
    res = lab.exec(role, ["nft", "-j", "list", "chain", "netdev", shaping.NFT_TABLE, ifname])
    total = 0
    for item in json.loads(res.stdout).get("nftables", []):
        for expr in item.get("rule", {}).get("expr", []):
            if isinstance(expr, dict) and "counter" in expr:
                total += int(expr["counter"]["packets"])
    return total


def snapshot(lab: Lab) -> dict[str, dict[str, int]]:
    """Per link end: packets received (before the ingress hook) and dropped by the loss rule."""
    snap: dict[str, dict[str, int]] = {}
    for name in topology.ACCESS_LINKS:
        cpe, bgw = link_ends(name)
        # the cpe end receives the downlink (bgw -> cpe), the bgw end the uplink
        for end, direction in ((cpe, "down"), (bgw, "up")):
            stats = topology.link_stats(lab.ns(end.role), end.ifname)
            snap[f"{name}.{direction}"] = {
                "rx_packets": stats["rx_packets"],
                "dropped": drop_counter(lab, end.role, end.ifname),
            }
    return snap


def loss_between(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, float]]:
    """Measured loss per link direction between two snapshots (same rule in between)."""
    out: dict[str, dict[str, float]] = {}
    for key in after:
        rx = after[key]["rx_packets"] - before[key]["rx_packets"]
        dropped = after[key]["dropped"] - before[key]["dropped"]
        out[key] = {
            "packets": rx,
            "dropped": dropped,
            "loss_pct": round(100.0 * dropped / rx, 4) if rx > 0 else 0.0,
        }
    return out


def loss_ok(target_pct: float, dropped: int, packets: int) -> tuple[bool, str]:
    """Within ±10 % relative of the target, or (too few packets for that) within 3 sigma."""
    if packets <= 0:
        return target_pct == 0, "no packets"
    measured = 100.0 * dropped / packets
    if target_pct == 0:
        return dropped == 0, f"{measured:.4f} %"
    if abs(measured - target_pct) <= LOSS_TOLERANCE_REL * target_pct:
        return True, f"{measured:.4f} % (within ±10 %)"
    p = target_pct / 100.0
    sigma = math.sqrt(packets * p * (1 - p))
    if abs(dropped - packets * p) <= 3 * sigma and 3 * sigma > LOSS_TOLERANCE_REL * packets * p:
        return True, f"{measured:.4f} % (±10 % not resolvable with {packets} packets; within 3σ)"
    return False, f"{measured:.4f} % vs {target_pct} %"


def validate(lab: Lab, label: str) -> dict[str, Any]:
    """Check every access link's emulated RTT (±1 ms) and, where resolvable, loss (±10 %)."""
    entry: dict[str, Any] = {"label": label, "links": {}, "ok": True}
    for name in topology.ACCESS_LINKS:
        p = lab.links[name]
        want_rtt = 2 * p.delay_ms
        rtts: list[float] = []
        for _attempt in range(2):  # the delayer shares two busy cores: one retry
            rtts = link_rtt(lab, name)
            if rtts and abs(statistics.median(rtts) - want_rtt) <= RTT_TOLERANCE_MS:
                break
        med = round(statistics.median(rtts), 3) if rtts else None
        info: dict[str, Any] = {
            "rate_mbit": p.rate_mbit,
            "rtt_ms": want_rtt,
            "loss_pct": p.loss_pct,
            "measured_rtt_ms": med,
            "measured_rtt_p99_ms": percentile(rtts, 99),
            "rtt_ok": med is not None and abs(med - want_rtt) <= RTT_TOLERANCE_MS,
        }
        if p.loss_pct >= LOSS_PROBE_MIN_PCT:
            before = snapshot(lab)
            cpe, bgw = link_ends(name)
            lab.exec(
                "cpe",
                ["ping", "-q", "-n", "-i", "0.002", "-s", "16", "-W", "1"]
                + ["-c", str(LOSS_PROBE_COUNT), bgw.addrs[0].split("/")[0]],
                check=False,
                timeout=60,
            )
            loss = loss_between(before, snapshot(lab))
            probes = {}
            ok = True
            for direction in ("up", "down"):
                m = loss[f"{name}.{direction}"]
                good, why = loss_ok(p.loss_pct, int(m["dropped"]), int(m["packets"]))
                probes[direction] = {**m, "ok": good, "check": why}
                ok = ok and good
            info["measured_loss_probe"] = probes
            info["loss_ok"] = ok
        else:
            info["loss_ok"] = None  # checked on the run's own packets (see each point)
        entry["links"][name] = info
        if not info["rtt_ok"] or info["loss_ok"] is False:
            entry["ok"] = False
    return entry


# ------------------------------------------------------------------ no emulation (ceiling)


def unshape(lab: Lab, name: str) -> None:
    """Remove rate, delay and loss emulation from an access link (both ends, and its router: the
    packets still cross the router's forwarding hop)."""
    for ns, ifname in lab.rate_stages(name):
        with IPRoute(netns=ns) as ipr:
            idx = ipr.link_lookup(ifname=ifname)[0]
            with contextlib.suppress(NetlinkError):
                ipr.tc("del", index=idx, handle="1:", parent=TC_ROOT)
    for end in link_ends(name):
        ns = lab.ns(end.role)
        for tool in ("iptables", "ip6tables"):
            subprocess.run(
                ["ip", "netns", "exec", ns, tool, "-w", "-t", "mangle", "-D", "PREROUTING"]
                + ["-i", end.ifname, "-j", "NFQUEUE", "--queue-num", str(QUEUE_NUM[name])],
                check=False,
                capture_output=True,
                timeout=30,
            )
        shaping.set_ingress_drop(ns, end.ifname, 0.0, False)


def reshape(lab: Lab, name: str) -> None:
    """Put the emulation of ``unshape`` back (the delayer processes kept running)."""
    p = lab.links[name]
    for ns, ifname in lab.rate_stages(name):
        shaping.set_rate(ns, ifname, p.rate_mbit, p.queue_ms)
        if lab.delay_mode == "netem":
            shaping.set_netem_delay(ns, ifname, p.delay_ms)
    for end in link_ends(name):
        ns = lab.ns(end.role)
        if lab.delay_mode != "netem":
            shaping.nfqueue_rule(ns, end.ifname, QUEUE_NUM[name])
        shaping.set_ingress_drop(ns, end.ifname, p.loss_pct, p.cut)


# ------------------------------------------------------------------ direct routing (no tunnel)

DIRECT_ROUTES = (
    ("cpe", "172.16.0.0/24", "10.1.0.2"),
    ("bgw", "192.168.10.0/24", "10.1.0.1"),
)
# The fixed link's router sends everything it has no host route for towards the BGW: the replies
# to the client's LAN need their own route back through the CPE side.
ROUTER_DIRECT_ROUTE = ("192.168.10.0/24", "10.1.0.1", topology.ROUTER_CPE_IF)


def direct_routes(lab: Lab, add: bool) -> None:
    """Plain IPv4 routing client <-> server over the fixed link (agents must be stopped)."""
    routes: list[tuple[str, dict[str, Any]]] = [
        (role, {"dst": dst, "gateway": gw}) for role, dst, gw in DIRECT_ROUTES
    ]
    if lab.link_routers:
        router = topology.LINK_ROUTERS["fixed"]
        dst, gw, dev = ROUTER_DIRECT_ROUTE
        with IPRoute(netns=lab.ns(router)) as ipr:
            oif = ipr.link_lookup(ifname=dev)[0]
        onlink = topology.RTNH_F_ONLINK
        routes.append((router, {"dst": dst, "gateway": gw, "oif": oif, "flags": onlink}))
    for role, spec in routes:
        with IPRoute(netns=lab.ns(role)) as ipr:
            try:
                ipr.route("replace" if add else "del", family=socket.AF_INET, **spec)
            except NetlinkError:
                if add:
                    raise
