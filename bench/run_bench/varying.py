"""``fig9_varying``: Fig. 9 again with the cellular rate following a trace (issue 9).

The paper's Fig. 9 ran over real LTE, whose rate varied; over a constant 5 Mbit/s a 2:1 HYA
scheduler matches the 10:5 capacities exactly, so our ``fig9_cell_rtt`` does not reproduce it.
Here the cellular tbf follows ``Settings.varying_trace`` (default: the seeded random walk
2-10 Mbit/s around 5, a new rate every 100 ms-1 s; ``--trace`` takes any ``mtlab.trace`` spec).
Every run starts the trace from its beginning right before its download, so every contender
sees the same rates at the same time into its run; repetition ``k`` of a walk uses seed
``seed + k`` (the same seeds for every contender). Each run records the trace's mean rate over
its measured window (the player's log), so a point says what capacity it actually had.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from mtlab import Lab, LabError
from mtlab.measure import ping_rtts
from mtlab.trace import WalkSpec, mean_rate, parse_spec, per_second

from run_bench import linkctl
from run_bench.contenders import SERVER, Agents, bulk, congestion, path_of
from run_bench.pings import PING_INTERVAL_S, PingsDuring
from run_bench.results import Progress, ScenarioResult, percentile, warn

SETUP_S = 0.15  # iperf3 connection setup before its first measured second (50-80 ms RTT)
FIXED_MBIT = 10.0
TBF_BURST_BYTES = 16 * 1024  # each rate change refills tbf's bucket (kernel tbf_change)
# Latency on the varying link: pings client -> server every PING_INTERVAL_S from PING_AFTER_S into
# each download until PING_BEFORE_END_S before its end (the latency scenario's method), and
# IDLE_PINGS before a contender's runs for the idle RTT.
PING_AFTER_S = 2.0
PING_BEFORE_END_S = 1.0
IDLE_PINGS = 20


def _spec_for_rep(text: str, rep: int) -> str:
    spec = parse_spec(text)
    if spec is None:
        raise LabError("fig9_varying needs a rate trace (not 'none')")
    if isinstance(spec, WalkSpec):
        spec = dataclasses.replace(spec, seed=spec.seed + rep)
    return spec.text()


def fig9_varying(
    lab: Lab,
    agents: Agents,
    s: Any,
    progress: Progress,
    save: Callable[[ScenarioResult], None],
) -> ScenarioResult:
    """Cellular RTT sweep as Fig. 9 (cellular loss 0.01 %) with the cellular rate on a trace."""
    from run_bench.scenarios import _links_record, _ratio_note, _validate, reset_links

    res = ScenarioResult("fig9_varying", asdict(s))
    lab.stop_trace("cellular")
    reset_links(lab)
    lab.set_link("cellular", loss_pct=0.01)
    base = parse_spec(s.varying_trace)
    seeds_note = (
        f"repetition k uses seed {base.seed} + k"
        if isinstance(base, WalkSpec)
        else "every repetition plays the same file from its start"
    )
    res.notes.append(f"cellular rate trace: {s.varying_trace} ({seeds_note}); fixed link static")
    try:
        for rtt in s.fig9_cell_rtts:
            lab.set_link("cellular", delay_ms=rtt / 2)
            label = f"cell_rtt_ms={rtt:g}"
            check = _validate(lab, res, label, progress)  # static rate: RTT and loss checks
            links = _links_record(lab, check)
            links["cellular"]["rate_trace"] = s.varying_trace
            if not res.links:
                res.links = links
            before = linkctl.snapshot(lab)
            for contender in s.fig9_contenders:
                _point(lab, agents, s, progress, res, contender, rtt, label, links, check["ok"])
                save(res)
            loss = linkctl.loss_between(before, linkctl.snapshot(lab))
            check["measured_loss_during_runs"] = loss
            for point in res.points:
                if point.get("x") == rtt:
                    for name in ("fixed", "cellular"):
                        point["links"][name]["measured_loss_pct"] = loss[f"{name}.down"]["loss_pct"]
            save(res)
    finally:
        lab.stop_trace("cellular")
    _ratio_note(res, s.fig9_cell_rtts[-1], "at the largest cellular RTT", 1.25)
    for rtt in s.fig9_cell_rtts:
        pts = [p for p in res.points if p.get("x") == rtt]
        shares = ", ".join(
            f"{p['contender']} {p['share_of_capacity']:.3f}"
            for p in pts
            if p.get("share_of_capacity") is not None
        )
        if shares:
            res.notes.append(
                f"cell RTT {rtt:g} ms: goodput / (fixed + trace mean) x 0.955 tbf efficiency:"
                f" {shares}"
            )
        pings = ", ".join(
            f"{p['contender']} p50 {p['ping_p50_ms']} / p99 {p['ping_p99_ms']} ms"
            f" ({p['p99_to_idle']} x idle {p['idle_p50_ms']})"
            for p in pts
            if p.get("p99_to_idle") is not None
        )
        if pings:
            res.notes.append(f"cell RTT {rtt:g} ms, pings during the downloads: {pings}")
    return res


def _point(
    lab: Lab,
    agents: Agents,
    s: Any,
    progress: Progress,
    res: ScenarioResult,
    contender: str,
    rtt: float,
    label: str,
    links: dict[str, Any],
    emulation_ok: bool,
) -> None:
    runs: list[float] = []
    retransmits: list[int | None] = []
    trace_means: list[float | None] = []
    changes: list[int] = []
    specs: list[str] = []
    series: list[list[float]] = []
    trace_series: list[list[float]] = []
    loaded: list[float] = []
    idle: list[float] = []
    for rep in range(s.reps):
        spec = _spec_for_rep(s.varying_trace, rep)
        try:
            agents.ensure(path_of(contender).agents)  # before the trace: a restart takes seconds
            if not idle:
                idle = ping_rtts(lab, "client", SERVER, count=IDLE_PINGS, interval=PING_INTERVAL_S)
            lab.start_trace("cellular", spec)
            t_call = time.monotonic()
            window = s.transfer_seconds - PING_AFTER_S - PING_BEFORE_END_S
            pinger = PingsDuring(lab, PING_AFTER_S, max(1, int(window / PING_INTERVAL_S)))
            try:
                r = bulk(lab, agents, contender, s.transfer_seconds, retries=0, cc=s.inner_cc)
            finally:
                lab.stop_trace("cellular")
                try:
                    loaded += pinger.rtts()
                except LabError as exc:
                    warn(f"fig9_varying pings: {exc}")
        except LabError as exc:
            progress.step(f"{label} {contender} rep {rep + 1}: FAILED ({exc})")
            continue
        if rep == 0 and congestion(r) not in (None, s.inner_cc):
            warn(f"{contender}: sender used {congestion(r)}, not {s.inner_cc}")
        record = lab.trace_record("cellular")
        t0 = t_call + SETUP_S
        mean = mean_rate(record, t0, t0 + s.transfer_seconds)
        runs.append(r.mbps)
        retransmits.append(r.retransmits)
        trace_means.append(round(mean, 3) if mean is not None else None)
        changes.append(sum(1 for t, _ in record[1:-1] if t0 < t < t0 + s.transfer_seconds))
        specs.append(spec)
        series.append(
            [round(iv["sum"]["bits_per_second"] / 1e6, 3) for iv in r.raw.get("intervals", [])]
        )
        trace_series.append(per_second(record, t0, s.transfer_seconds))
        progress.step(
            f"{label} {contender} rep {rep + 1}/{s.reps}: {r.mbps:.2f} Mbit/s"
            f" (trace mean {mean if mean is None else round(mean, 2)} Mbit/s,"
            f" retransmits {r.retransmits})"
        )
    known = [m for m in trace_means if m is not None]
    trace_mean = round(sum(known) / len(known), 3) if known else None
    point = res.add_point(
        contender,
        runs,
        x_name="cell_rtt_ms",
        x=rtt,
        retransmits=retransmits,
        trace_specs=specs,
        trace_mean_mbps_runs=trace_means,
        trace_mean_mbps=trace_mean,
        trace_changes_runs=changes,
        # at most this much more than the trace: a full bucket after every change, if backlogged
        burst_bonus_max_mbps=round(
            (sum(changes) / max(len(changes), 1)) * TBF_BURST_BYTES * 8 / s.transfer_seconds / 1e6,
            3,
        ),
        series_mbps=series,
        trace_series_mbps=trace_series,
        idle_p50_ms=percentile(idle, 50),
        ping_count=len(loaded),
        ping_p50_ms=percentile(loaded, 50),
        ping_p99_ms=percentile(loaded, 99),
        links=links,
        emulation_ok=emulation_ok,
    )
    if point["mean_mbps"] is not None and trace_mean is not None:
        point["share_of_capacity"] = round(
            point["mean_mbps"] / (0.955 * (FIXED_MBIT + trace_mean)), 4
        )
    if point.get("ping_p99_ms") and point.get("idle_p50_ms"):
        point["p99_to_idle"] = round(point["ping_p99_ms"] / point["idle_p50_ms"], 3)
