"""The six scenarios of issue 4 (paper §6 plus our own datapath checks) and the runner table."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from mtlab import Lab, LabError
from mtlab.measure import IperfResult, iperf3, ping_rtts

from run_bench import linkctl
from run_bench.cap_bench import PHASES as CAP_PHASES
from run_bench.cap_bench import cap
from run_bench.contenders import (
    LINE_SHARE,
    SERVER,
    SHAPE_SHARE,
    Agents,
    bulk,
    congestion,
    link_settings,
    path_of,
    series,
    stream_mbps,
)
from run_bench.failover_bench import failover
from run_bench.fairness import fairness
from run_bench.fleet import fleet_scale
from run_bench.lockout import lockout
from run_bench.overflow_bench import overflow
from run_bench.pings import PING_INTERVAL_S, PingsDuring
from run_bench.results import Progress, ScenarioResult, jain, percentile, warn
from run_bench.security import fuzz, tls_handshakes
from run_bench.varying import fig9_varying

DEFAULT_LINKS = {
    "fixed": {"rate_mbit": 10.0, "delay_ms": 25.0, "loss_pct": 0.0},
    "cellular": {"rate_mbit": 5.0, "delay_ms": 25.0, "loss_pct": 0.0},
}


# The plain fixed path, the default agent and the queue-controlled setting (fq_codel with
# cpe.shape_share); the older settings (codel, fq, fq-cubic, fq-shaped) only when named.
LATENCY_CONTENDERS = (
    "fixed-only",
    "mptcp-tunnel",
    "mptcp-tunnel-fq-links",
)


@dataclass
class Settings:
    quick: bool = False
    reps: int = 3
    fig8_seconds: int = 30
    transfer_seconds: int = 30  # per run in Fig. 9/10 (~50 MB at the tunnel's rate)
    fig9_cell_rtts: list[float] = field(default_factory=lambda: [30, 40, 50, 60, 70, 80])
    fig10_fixed_losses: list[float] = field(
        default_factory=lambda: [0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 20.0]
    )
    fig9_contenders: list[str] = field(
        default_factory=lambda: ["mptcp-tunnel", "mptcp-tunnel-fq-links", "hya-1:1", "hya-2:1"]
    )
    fig10_contenders: list[str] = field(
        default_factory=lambda: ["mptcp-tunnel", "hya-1:1", "hya-2:1", "cellular-only"]
    )
    flows: list[int] = field(default_factory=lambda: [1, 8, 64])
    flows_contenders: list[str] = field(
        default_factory=lambda: ["mptcp-tunnel", "mptcp-tunnel-fq-links", "hya-2:1"]
    )
    flows_seconds: int = 20
    flows_ccs: list[str] = field(default_factory=lambda: ["cubic", "bbr"])
    udp_mbit: float = 1.0
    ceiling_seconds: int = 10
    latency_pings: int = 200
    latency_contenders: list[str] = field(default_factory=lambda: list(LATENCY_CONTENDERS))
    latency_flows: list[int] = field(default_factory=lambda: [1, 8])
    latency_ccs: list[str] = field(default_factory=lambda: ["cubic", "bbr"])
    ooo_timeout_ms: float = 10.0
    inseq_timeout_ms: float = 1.0
    inner_cc: str = "cubic"  # end hosts' TCP (the paper's hosts ran Linux 4.9's default, cubic)
    fleet_sizes: list[int] = field(default_factory=lambda: [1000, 10000])
    fleet_keepalive_s: float = 10.0
    fleet_idle_window_s: float = 30.0
    fleet_traffic_every: int = 100
    fleet_workers: int | None = None  # tunnel.workers / tunnel.offload: the agent's default
    fleet_offload: str | None = None
    fairness_seconds: int = 20
    fairness_pings: int = 200
    fairness_victim_mbit: float = 10.0
    fairness_delay_ms: float = 25.0
    varying_trace: str = "walk:seed=1,mean=5,min=2,max=10,step_ms=100-1000"  # fig9_varying
    shape_share: float = SHAPE_SHARE  # mptcp-tunnel-fq-shaped: its share of the links' rates
    line_share: float = LINE_SHARE  # mptcp-tunnel-fq-links: cpe.shape_share
    aqm_target_ms: float | None = None  # the fq_codel contenders' tunnel.aqm_target_ms (None: 5)
    latency_fixed_cut: bool = False  # latency on cellular alone: the fixed link blackholed
    failover_contender: str = "mptcp-tunnel"  # failover: the agents' setup (a tunnel contender)

    @classmethod
    def make(cls, quick: bool, reps: int | None) -> Settings:
        if not quick:
            return cls(reps=reps or 3)
        return cls(
            quick=True,
            reps=reps or 1,
            fig8_seconds=10,
            transfer_seconds=8,
            fig9_cell_rtts=[30, 80],
            fig10_fixed_losses=[0.01, 5.0],
            flows=[1, 8, 64],
            flows_contenders=["mptcp-tunnel", "mptcp-tunnel-fq-links"],
            flows_seconds=8,
            ceiling_seconds=5,
            latency_pings=60,
            latency_contenders=list(LATENCY_CONTENDERS),
            fleet_sizes=[1000],
            fleet_idle_window_s=20.0,
            fairness_seconds=10,
            fairness_pings=100,
        )

    def steps(self, scenario: str) -> int:
        r = self.reps
        return {
            "fig8_aggregation": 3 * r,
            "fig9_cell_rtt": len(self.fig9_cell_rtts) * len(self.fig9_contenders) * r,
            "fig9_varying": len(self.fig9_cell_rtts) * len(self.fig9_contenders) * r,
            "fig10_fixed_loss": len(self.fig10_fixed_losses) * len(self.fig10_contenders) * r,
            "many_flows": len(self.flows) * len(self.flows_contenders) * len(self.flows_ccs) * r,
            "datapath_ceiling": 4 * r,
            "latency": len(self.latency_contenders)
            * (1 + 4 * len(self.latency_flows) * len(self.latency_ccs)),
            "fleet_scale": len(self.fleet_sizes),
            "fairness": 2 * r,
            "fuzz": 2,
            "tls_handshakes": 1,
            "lockout": 1,
            "failover": 8 * r,
            "overflow": 4,
            "cap": len(CAP_PHASES),
        }[scenario]


Runner = Callable[
    [Lab, Agents, Settings, Progress, Callable[[ScenarioResult], None]], ScenarioResult
]


def reset_links(lab: Lab) -> None:
    for name, p in DEFAULT_LINKS.items():
        lab.set_link(name, **p)


def _links_record(lab: Lab, check: dict[str, Any]) -> dict[str, Any]:
    out = link_settings(lab)
    for name, settings in out.items():
        settings["measured_rtt_ms"] = check["links"].get(name, {}).get("measured_rtt_ms")
    return out


def _validate(lab: Lab, res: ScenarioResult, label: str, progress: Progress) -> dict[str, Any]:
    check = linkctl.validate(lab, label)
    res.validation.append(check)
    parts = []
    for name, info in check["links"].items():
        parts.append(
            f"{name} rtt {info['measured_rtt_ms']} ms (want {info['rtt_ms']:g})"
            + (f", loss ok={info['loss_ok']}" if info["loss_ok"] is not None else "")
        )
    progress.info(f"emulation check [{label}]: " + "; ".join(parts))
    if not check["ok"]:
        warn(f"{res.scenario} [{label}]: emulation outside tolerance, results flagged")
    return check


def _runs(
    lab: Lab,
    agents: Agents,
    contender: str,
    s: Settings,
    progress: Progress,
    label: str,
    seconds: int,
    omit: int = 0,
    parallel: int = 1,
) -> list[IperfResult]:
    out = []
    for rep in range(s.reps):
        try:
            r = bulk(lab, agents, contender, seconds, omit=omit, parallel=parallel, cc=s.inner_cc)
        except LabError as exc:
            progress.step(f"{label} {contender} rep {rep + 1}: FAILED ({exc})")
            continue
        if rep == 0 and congestion(r) not in (None, s.inner_cc):
            warn(f"{contender}: sender used {congestion(r)}, not {s.inner_cc}")
        out.append(r)
        progress.step(
            f"{label} {contender} rep {rep + 1}/{s.reps}: {r.mbps:.2f} Mbit/s"
            f" (retransmits {r.retransmits})"
        )
    return out


# ------------------------------------------------------------------ Fig. 8


def fig8_aggregation(
    lab: Lab,
    agents: Agents,
    s: Settings,
    progress: Progress,
    save: Callable[[ScenarioResult], None],
) -> ScenarioResult:
    """Fixed 10 Mbit/s 50 ms, cellular 5 Mbit/s 50 ms: each alone vs the tunnel, one flow."""
    res = ScenarioResult("fig8_aggregation", asdict(s))
    reset_links(lab)
    check = _validate(lab, res, "default links", progress)
    res.links = _links_record(lab, check)
    means: dict[str, float] = {}
    for contender in ("fixed-only", "cellular-only", "mptcp-tunnel"):
        runs = _runs(lab, agents, contender, s, progress, "fig8", s.fig8_seconds, omit=4)
        point = res.add_point(
            contender,
            [r.mbps for r in runs],
            series_mbps=[series(r) for r in runs],
            retransmits=[r.retransmits for r in runs],
            steady_state_from_s=4,
        )
        means[contender] = point["mean_mbps"] or 0.0
        save(res)
    total = means["fixed-only"] + means["cellular-only"]
    if total > 0:
        ratio = round(means["mptcp-tunnel"] / total, 4)
        res.points[-1]["ratio_to_sum"] = ratio
        res.notes.append(f"tunnel / (fixed-only + cellular-only) = {ratio} (target >= 0.95)")
    return res


# ------------------------------------------------------------------ Fig. 9 and 10


def _sweep(
    lab: Lab,
    agents: Agents,
    s: Settings,
    progress: Progress,
    save: Callable[[ScenarioResult], None],
    res: ScenarioResult,
    x_name: str,
    xs: list[float],
    contenders: list[str],
    apply: Callable[[float], None],
) -> None:
    for x in xs:
        apply(x)
        check = _validate(lab, res, f"{x_name}={x:g}", progress)
        if not res.links:
            res.links = _links_record(lab, check)
        before = linkctl.snapshot(lab)
        for contender in contenders:
            runs = _runs(lab, agents, contender, s, progress, f"{x_name}={x:g}", s.transfer_seconds)
            res.add_point(
                contender,
                [r.mbps for r in runs],
                x_name=x_name,
                x=x,
                retransmits=[r.retransmits for r in runs],
                links=_links_record(lab, check),
                emulation_ok=check["ok"],
            )
            save(res)
        loss = linkctl.loss_between(before, linkctl.snapshot(lab))
        check["measured_loss_during_runs"] = loss
        for point in res.points:
            if point.get("x") == x:
                for name in ("fixed", "cellular"):
                    point["links"][name]["measured_loss_pct"] = loss[f"{name}.down"]["loss_pct"]
        save(res)


def fig9_cell_rtt(
    lab: Lab,
    agents: Agents,
    s: Settings,
    progress: Progress,
    save: Callable[[ScenarioResult], None],
) -> ScenarioResult:
    """Cellular RTT 30..80 ms; fixed loss 0, cellular loss 0.01 %."""
    res = ScenarioResult("fig9_cell_rtt", asdict(s))
    reset_links(lab)
    lab.set_link("cellular", loss_pct=0.01)

    def apply(rtt: float) -> None:
        lab.set_link("cellular", delay_ms=rtt / 2)

    _sweep(
        lab,
        agents,
        s,
        progress,
        save,
        res,
        "cell_rtt_ms",
        s.fig9_cell_rtts,
        s.fig9_contenders,
        apply,
    )
    _ratio_note(res, s.fig9_cell_rtts[-1], "at the largest cellular RTT", 1.25)
    return res


def fig10_fixed_loss(
    lab: Lab,
    agents: Agents,
    s: Settings,
    progress: Progress,
    save: Callable[[ScenarioResult], None],
) -> ScenarioResult:
    """Fixed loss 0.01..20 %; cellular loss 0.01 %, both 50 ms RTT."""
    res = ScenarioResult("fig10_fixed_loss", asdict(s))
    reset_links(lab)
    lab.set_link("cellular", loss_pct=0.01)

    def apply(loss: float) -> None:
        lab.set_link("fixed", loss_pct=loss)

    _sweep(
        lab,
        agents,
        s,
        progress,
        save,
        res,
        "fixed_loss_pct",
        s.fig10_fixed_losses,
        s.fig10_contenders,
        apply,
    )
    x5 = 5.0 if 5.0 in s.fig10_fixed_losses else s.fig10_fixed_losses[-1]
    _ratio_note(res, x5, f"at {x5:g} % fixed loss", 2.0, against=("hya-1:1",))
    pts = {p["contender"]: p for p in res.points if p.get("x") == x5}
    if "mptcp-tunnel" in pts and "cellular-only" in pts:
        t, c = pts["mptcp-tunnel"]["mean_mbps"], pts["cellular-only"]["mean_mbps"]
        if t is not None and c:
            res.notes.append(
                f"at {x5:g} % fixed loss: tunnel / cellular-only = {t / c:.3f} (target >= 1)"
            )
    first = s.fig10_fixed_losses[0]
    for contender in ("mptcp-tunnel", "hya-1:1", "hya-2:1"):
        a = next(
            (p for p in res.points if p.get("x") == first and p["contender"] == contender), None
        )
        b = pts.get(contender)
        if a and b and a["mean_mbps"] and b["mean_mbps"] is not None:
            drop = 100 * (1 - b["mean_mbps"] / a["mean_mbps"])
            res.notes.append(
                f"{contender}: throughput decrease {first:g} % -> {x5:g} % fixed loss ="
                f" {drop:.1f} % (paper: HYA 1:1 82.6 %, tunnel 59.3 %)"
            )
    return res


def _ratio_note(
    res: ScenarioResult,
    x: float,
    where: str,
    target: float,
    against: tuple[str, ...] = ("hya-1:1", "hya-2:1"),
) -> None:
    pts = {p["contender"]: p for p in res.points if p.get("x") == x}
    tunnel = pts.get("mptcp-tunnel", {}).get("mean_mbps")
    rivals = [pts[c]["mean_mbps"] for c in against if c in pts and pts[c]["mean_mbps"]]
    if tunnel is None or not rivals:
        return
    best = max(rivals)
    res.notes.append(
        f"{where}: tunnel / best of {', '.join(against)} = {tunnel / best:.3f}"
        f" (target >= {target:g})"
    )


# ------------------------------------------------------------------ many flows


def many_flows(
    lab: Lab,
    agents: Agents,
    s: Settings,
    progress: Progress,
    save: Callable[[ScenarioResult], None],
) -> ScenarioResult:
    """1, 8, 64 parallel TCP downloads with cubic and with BBR end hosts, each with a 1 Mbit/s UDP
    flow alongside; throughput against the two links' goodputs measured alone in this run."""
    res = ScenarioResult("many_flows", asdict(s))
    reset_links(lab)
    check = _validate(lab, res, "default links", progress)
    res.links = _links_record(lab, check)
    link_sum = _link_sum(lab, agents, s)
    res.notes.append(f"link sum (fixed-only + cellular-only goodput, 8 s each): {link_sum:.2f}")
    for n, contender, cc in itertools.product(s.flows, s.flows_contenders, s.flows_ccs):
        runs: list[IperfResult] = []
        udp: list[dict[str, Any]] = []
        label = f"flows={n} {contender} {cc}"
        for rep in range(s.reps):
            udp_box: dict[str, Any] = {}
            thread = threading.Thread(
                target=_udp_alongside,
                args=(lab, s.flows_seconds + 2, s.udp_mbit, udp_box),
            )
            try:
                agents.ensure(path_of(contender).agents)
            except LabError as exc:
                progress.step(f"{label} rep {rep + 1}: FAILED ({exc})")
                continue
            thread.start()
            try:
                r = bulk(lab, agents, contender, s.flows_seconds, omit=2, parallel=n, cc=cc)
            except LabError as exc:
                progress.step(f"{label} rep {rep + 1}: FAILED ({exc})")
                continue
            finally:
                thread.join(s.flows_seconds + 60)
            runs.append(r)
            udp.append(udp_box)
            progress.step(
                f"{label} rep {rep + 1}/{s.reps}: {r.mbps:.2f} Mbit/s,"
                f" jain {jain(stream_mbps(r))}, udp loss {udp_box.get('lost_pct')} %"
            )
        mbps = [r.mbps for r in runs]
        res.add_point(
            contender,
            mbps,
            x_name="tcp_flows",
            x=n,
            cc=cc,
            to_link_sum=round(sum(mbps) / len(mbps) / link_sum, 3) if mbps and link_sum else None,
            jain=[jain(stream_mbps(r)) for r in runs],
            streams_mbps=[stream_mbps(r) for r in runs],
            udp=udp,
        )
        save(res)
    return res


def _link_sum(lab: Lab, agents: Agents, s: Settings) -> float:
    """fixed-only + cellular-only goodput (8 s each after 2 s): the reference for aggregation."""
    return sum(
        bulk(lab, agents, alone, 8, omit=2, cc=s.inner_cc).mbps
        for alone in ("fixed-only", "cellular-only")
    )


def _udp_alongside(lab: Lab, seconds: int, mbit: float, box: dict[str, Any]) -> None:
    try:
        r = iperf3(
            lab,
            "client",
            "server",
            SERVER,
            seconds=seconds,
            omit=0,
            reverse=True,
            udp=True,
            bitrate=f"{mbit}M",
            length=200,
        )
        box["offered_mbps"] = mbit
        box["mbps"] = round(r.mbps, 3)
        box["lost_pct"] = round(r.lost_pct or 0.0, 3)
        box["jitter_ms"] = round(float(r.raw["end"]["sum"].get("jitter_ms", 0.0)), 3)
    except (LabError, KeyError) as exc:
        box["error"] = str(exc)


# ------------------------------------------------------------------ datapath ceiling


def datapath_ceiling(
    lab: Lab,
    agents: Agents,
    s: Settings,
    progress: Progress,
    save: Callable[[ScenarioResult], None],
) -> ScenarioResult:
    """No emulation at all: raw MPTCP between the proxies vs the tunnel, same run."""
    res = ScenarioResult("datapath_ceiling", asdict(s))
    reset_links(lab)
    for name in ("fixed", "cellular"):
        linkctl.unshape(lab, name)
    res.links = {name: {"rate_mbit": None, "rtt_ms": None, "loss_pct": 0.0} for name in lab.links}
    res.notes.append(
        "no tbf, no delay, no loss on either access link (veth pairs, and the link routers'"
        " forwarding hop when the lab has them)"
    )
    try:
        means = {}
        contenders = (
            "raw-mptcp",
            "mptcp-tunnel-perpacket",
            "mptcp-tunnel-offload",
            "mptcp-tunnel-offload-tls",
        )
        for contender in contenders:
            runs, cpu = [], []
            for rep in range(s.reps):
                agents.ensure(path_of(contender).agents)
                before = agents.cpu_seconds()
                try:
                    r = bulk(lab, agents, contender, s.ceiling_seconds, omit=2, cc=s.inner_cc)
                except LabError as exc:
                    progress.step(f"ceiling {contender} rep {rep + 1}: FAILED ({exc})")
                    continue
                after = agents.cpu_seconds()
                runs.append(r)
                # GB carried in the whole run (omitted seconds included) = mean rate x duration.
                gb = r.mbps * (s.ceiling_seconds + 2) / 8 / 1000
                used = {role: after[role] - before[role] for role in after}
                cpu.append({role: round(sec / gb, 2) for role, sec in used.items()} if gb else {})
                progress.step(f"ceiling {contender} rep {rep + 1}: {r.mbps:.0f} Mbit/s")
            extra: dict[str, Any] = {"retransmits": [r.retransmits for r in runs]}
            if contender != "raw-mptcp":
                extra["cpu_s_per_gb"] = cpu
            if contender.startswith("mptcp-tunnel-offload"):  # idle RTT, to see what TLS adds
                agents.ensure(path_of(contender).agents)
                idle = ping_rtts(lab, "client", SERVER, count=100, interval=0.02)
                extra["idle_p50_ms"] = percentile(idle, 50)
                extra["idle_p99_ms"] = percentile(idle, 99)
            p = res.add_point(contender, [r.mbps for r in runs], **extra)
            means[contender] = p["mean_mbps"]
            if means.get("raw-mptcp") and p["mean_mbps"] is not None and contender != "raw-mptcp":
                p["ratio_to_raw"] = round(p["mean_mbps"] / means["raw-mptcp"], 4)
                res.notes.append(f"{contender} / raw MPTCP = {p['ratio_to_raw']}")
            save(res)
        tls_p = next((p for p in res.points if p["contender"] == "mptcp-tunnel-offload-tls"), None)
        plain = next((p for p in res.points if p["contender"] == "mptcp-tunnel-offload"), None)
        if tls_p and plain and tls_p.get("idle_p50_ms") and plain.get("idle_p50_ms"):
            added = round(tls_p["idle_p50_ms"] - plain["idle_p50_ms"], 3)
            res.notes.append(f"idle RTT p50 added by TLS: {added} ms (target <= 0.3 ms)")
        if tls_p and plain and tls_p["mean_mbps"] and plain["mean_mbps"]:
            ratio = round(tls_p["mean_mbps"] / plain["mean_mbps"], 3)
            res.notes.append(f"offload with TLS / without = {ratio}")
    finally:
        for name in ("fixed", "cellular"):
            linkctl.reshape(lab, name)
    return res


# ------------------------------------------------------------------ latency


FAILOVER_WAIT_S = 3.0  # --latency-fixed-cut: the agents find the blackhole within 1 s (issue 9)


def latency(
    lab: Lab,
    agents: Agents,
    s: Settings,
    progress: Progress,
    save: Callable[[ScenarioResult], None],
) -> ScenarioResult:
    """Ping client -> server idle and during 1 and 8 bulk flows, each direction, cubic and BBR end
    hosts; direct routing over the fixed link vs the tunnel (with its AQM and without).

    One method for every latency figure: 20 pings/s from the client, started 3 s into the bulk
    transfer, percentiles by ``results.percentile``; the throughput of the same transfer after
    the same 3 s is compared with the two links' goodputs measured alone in this run (their sum is
    the reference).
    """
    res = ScenarioResult("latency", {**asdict(s), "reps": 1})  # one measurement per condition
    reset_links(lab)
    check = _validate(lab, res, "default links", progress)
    res.links = _links_record(lab, check)
    res.notes.append(
        "fixed-only here = plain IPv4 routing client <-> server over the fixed link, no agents"
    )
    cut = s.latency_fixed_cut
    if cut:  # the tunnel on cellular alone: its goodput alone is the reference
        link_sum = bulk(lab, agents, "cellular-only", 8, omit=2, cc=s.inner_cc).mbps
        res.notes.append(
            "fixed link blackholed (mtlab cut) once the agents run, restored after each contender;"
            f" reference = cellular-only goodput (8 s): {link_sum:.2f} (column to_link_sum)"
        )
    else:
        link_sum = _link_sum(lab, agents, s)
        res.notes.append(f"link sum (fixed-only + cellular-only goodput, 8 s each): {link_sum:.2f}")
    for contender in s.latency_contenders:
        direct = contender == "fixed-only"
        if direct and cut:
            warn("latency: fixed-only has no path with the fixed link cut; skipped")
            continue
        if direct:
            agents.stop()
            linkctl.direct_routes(lab, add=True)
        try:
            if not direct:
                agents.ensure(path_of(contender).agents)
            if cut:
                lab.cut("fixed")
                threading.Event().wait(FAILOVER_WAIT_S)
            _latency_points(lab, res, s, progress, contender, link_sum, save)
        finally:
            if direct:
                linkctl.direct_routes(lab, add=False)
            if cut:
                lab.restore("fixed")
                agents.wait_subflows(20)
    return res


def _latency_points(
    lab: Lab,
    res: ScenarioResult,
    s: Settings,
    progress: Progress,
    contender: str,
    link_sum: float,
    save: Callable[[ScenarioResult], None],
) -> None:
    """The idle RTT, then every loaded condition against it."""
    idle = ping_rtts(lab, "client", SERVER, count=s.latency_pings, interval=PING_INTERVAL_S)
    idle_p50 = percentile(idle, 50)
    res.add_point(
        contender,
        [],
        condition="idle",
        rtts_ms_count=len(idle),
        p50_ms=idle_p50,
        p99_ms=percentile(idle, 99),
        min_ms=min(idle, default=None),
    )
    progress.step(f"latency {contender} idle: p50 {idle_p50} ms")
    for flows, direction, cc in itertools.product(s.latency_flows, ("down", "up"), s.latency_ccs):
        _loaded_point(lab, res, s, progress, contender, flows, direction, cc, idle_p50, link_sum)
        save(res)


def _loaded_point(
    lab: Lab,
    res: ScenarioResult,
    s: Settings,
    progress: Progress,
    contender: str,
    flows: int,
    direction: str,
    cc: str,
    idle_p50: float | None,
    link_sum: float,
) -> None:
    cond = f"{flows} flow{'s' if flows > 1 else ''} {direction} {cc}"
    loaded, box = ping_during_bulk(
        lab, contender, s.latency_pings, PING_INTERVAL_S, cc, direction == "down", flows
    )
    p99 = percentile(loaded, 99)
    mbps = box.get("mbps")
    res.add_point(
        contender,
        [mbps] if mbps is not None else [],
        condition=cond,
        flows=flows,
        direction=direction,
        cc=cc,
        rtts_ms_count=len(loaded),
        p50_ms=percentile(loaded, 50),
        p99_ms=p99,
        min_ms=min(loaded, default=None),
        p99_to_idle=round(p99 / idle_p50, 3) if p99 and idle_p50 else None,
        to_link_sum=round(mbps / link_sum, 3) if mbps and link_sum else None,
        error=box.get("error"),
    )
    progress.step(
        f"latency {contender} {cond}: p50 {percentile(loaded, 50)} ms, p99 {p99} ms,"
        f" bulk {mbps} Mbit/s"
    )


# Seconds of a loaded transfer before pings and throughput count: slow start and the first loss
# are not what a steady load looks like (iperf3's cross-checks omit 4 s, many_flows 2).
WARM_UP_S = 3


def ping_during_bulk(
    lab: Lab,
    label: str,
    pings: int,
    interval: float,
    cc: str,
    download: bool = True,
    flows: int = 1,
) -> tuple[list[float], dict[str, Any]]:
    """Ping client -> server while ``flows`` bulk TCP flows run (server -> client unless not
    ``download``). Returns the RTTs (ms) and ``{"mbps": ...}`` or ``{"error": ...}``.

    The pings start ``WARM_UP_S`` into the transfer and iperf3 omits the same seconds, so the
    throughput is that of the seconds the pings measured (and 3 s after them), not of slow start."""
    seconds = int(pings * interval) + 3
    box: dict[str, Any] = {}
    pinger = PingsDuring(lab, WARM_UP_S, pings, interval)  # let the transfer fill the queues
    _bulk(lab, label, seconds, box, cc, download, flows)
    return pinger.rtts(), box


def _bulk(
    lab: Lab, label: str, seconds: int, box: dict[str, Any], cc: str, download: bool, flows: int = 1
) -> None:
    try:
        r = iperf3(
            lab,
            "client",
            "server",
            SERVER,
            seconds=seconds,
            omit=WARM_UP_S,
            reverse=download,
            extra=["-C", cc, "-P", str(flows)],
        )
        box["mbps"] = round(r.mbps, 3)
    except LabError as exc:
        box["error"] = str(exc)
        warn(f"bulk transfer during pings ({label}): {exc}")


RUNNERS: dict[str, Runner] = {
    "fig8_aggregation": fig8_aggregation,
    "fig9_cell_rtt": fig9_cell_rtt,
    "fig9_varying": fig9_varying,
    "fig10_fixed_loss": fig10_fixed_loss,
    "many_flows": many_flows,
    "latency": latency,
    "datapath_ceiling": datapath_ceiling,
    "failover": failover,
    "overflow": overflow,
    "cap": cap,
}


# Scenarios with their own namespaces (no netns lab): run after the lab is down.
StandaloneRunner = Callable[[Settings, Progress, Callable[[ScenarioResult], None]], ScenarioResult]
STANDALONE_RUNNERS: dict[str, StandaloneRunner] = {
    "fleet_scale": fleet_scale,
    "fairness": fairness,
    "fuzz": fuzz,
    "tls_handshakes": tls_handshakes,
    "lockout": lockout,
}
