"""Markdown tables (``RESULTS.md``) and PNG plots from the result JSON files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from run_bench.results import SCENARIOS, load

PAPER = {
    "fig10": "Paper (Fig. 10): from 0.01 % to 5 % fixed loss HYA 1:1 loses 82.6 % of its "
    "throughput, MPTCP Tunnel 59.3 %.",
    "fig9": "Paper (Fig. 9): the tunnel's decrease is 25.5 % / 12.5 % of HYA's as RTT grows.",
}
# Curves of the trace plot: at most this many seconds of the first repetition's trace.
TRACE_PLOT_S = 60
ORDER = ("fixed-only", "cellular-only", "raw-mptcp", "mptcp-tunnel", "hya-1:1", "hya-2:1")


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _contenders(points: list[dict[str, Any]]) -> list[str]:
    seen = {p["contender"] for p in points}
    return [c for c in ORDER if c in seen] + sorted(seen - set(ORDER))


def _header(data: dict[str, Any]) -> list[str]:
    links = data.get("links", {})
    parts = []
    for name, link in links.items():
        if link.get("rate_mbit") is None:
            parts.append(f"{name}: unshaped")
            continue
        rate = (
            f"rate trace `{link['rate_trace']}`"
            if link.get("rate_trace")
            else f"{link['rate_mbit']:g} Mbit/s"
        )
        parts.append(
            f"{name} {rate}, RTT {link['rtt_ms']:g} ms"
            f" (measured {_fmt(link.get('measured_rtt_ms'), 1)}), loss {link['loss_pct']:g} %"
        )
    s = data.get("settings", {})
    bad = [v["label"] for v in data.get("validation", []) if not v.get("ok", True)]
    lines = [
        f"_{data['started']}, kernel {data['kernel']}, {data['machine'].get('cpus')} CPUs,"
        f" {s.get('reps')} repetition(s){' (quick run)' if s.get('quick') else ''}._",
        "",
        "Links: " + "; ".join(parts) + ".",
    ]
    if bad:
        lines.append(f"**Emulation outside tolerance at: {', '.join(bad)}** (see JSON).")
    return lines


def _sweep_table(data: dict[str, Any]) -> list[str]:
    points = data["points"]
    contenders = _contenders(points)
    xs = sorted({p["x"] for p in points})
    x_name = points[0]["x_name"] if points else "x"
    traced = any("trace_mean_mbps" in p for p in points)
    lines = [
        f"| {x_name} | "
        + " | ".join(f"{c} (Mbit/s)" for c in contenders)
        + (" | cellular trace mean (Mbit/s) |" if traced else " |"),
        "|---:|" + "---:|" * (len(contenders) + traced),
    ]
    for x in xs:
        row = [f"{x:g}"]
        for c in contenders:
            p = next((q for q in points if q["x"] == x and q["contender"] == c), None)
            row.append(
                "–"
                if p is None or p["mean_mbps"] is None
                else f"{p['mean_mbps']:.2f} ± {p['std_mbps']:.2f}"
            )
        if traced:
            means = [
                m
                for q in points
                if q["x"] == x
                for m in q.get("trace_mean_mbps_runs", [])
                if m is not None
            ]
            row.append(_fmt(sum(means) / len(means) if means else None))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _paired_ratios(data: dict[str, Any]) -> list[str]:
    """Tunnel / best HYA per repetition: repetition k of every contender met the same trace."""
    lines = []
    for x in sorted({p["x"] for p in data["points"]}):
        pts = {p["contender"]: p for p in data["points"] if p["x"] == x}
        tunnel = pts.get("mptcp-tunnel", {})
        hyas = [pts[c] for c in ("hya-1:1", "hya-2:1") if c in pts]
        if not tunnel or not hyas:
            continue
        ratios = []
        for k, spec in enumerate(tunnel.get("trace_specs", [])):
            rivals = [
                h["runs_mbps"][h["trace_specs"].index(spec)]
                for h in hyas
                if spec in h.get("trace_specs", [])
            ]
            if k < len(tunnel["runs_mbps"]) and rivals and max(rivals) > 0:
                ratios.append(f"{tunnel['runs_mbps'][k] / max(rivals):.2f}")
        if ratios:
            lines.append(
                f"- Tunnel / best HYA on the same trace, per repetition, at {x:g} ms:"
                f" {', '.join(ratios)}."
            )
        lows = []
        for c in _contenders(list(pts.values())):
            runs = [min(ys[1:]) for ys in pts[c].get("series_mbps", []) if len(ys) > 1]
            if runs:
                lows.append(f"{c} {', '.join(f'{v:.1f}' for v in runs)}")
        if lows:
            lines.append(
                f"- Lowest 1 s goodput after the first second, per repetition, at {x:g} ms"
                f" (Mbit/s): {'; '.join(lows)}."
            )
    return lines


def _simple_table(data: dict[str, Any], extra: list[tuple[str, str]]) -> list[str]:
    head = ["contender", *[h for h, _ in extra], "Mbit/s (mean ± sd)", "runs"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for p in data["points"]:
        cells = [p["contender"], *[_fmt(p.get(k)) for _, k in extra]]
        mean = p.get("mean_mbps")
        cells.append("–" if mean is None else f"{mean:.2f} ± {p['std_mbps']:.2f}")
        cells.append(", ".join(f"{v:.2f}" for v in p.get("runs_mbps", [])) or "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# Scenarios whose points are not throughput: the fields worth a column.
SECURITY_COLUMNS = {
    "fuzz": ("frames", "frames_per_s", "frame_errors", "handshakes", "handshakes_per_s", "crashes"),
    "tls_handshakes": ("handshakes", "bgw_handshakes_per_core_s", "bgw_cpu_ms_per_handshake"),
    "lockout": (
        "addresses",
        "attacker_open_max",
        "p50_connect_s",
        "max_connect_s",
        "failed_attempts",
        "bgw_alive",
    ),
}


def _field_table(data: dict[str, Any], fields: tuple[str, ...]) -> list[str]:
    lines = ["| contender | " + " | ".join(fields) + " |", "|---|" + "---:|" * len(fields)]
    for p in data["points"]:
        lines.append(
            "| " + " | ".join([p["contender"], *(str(p.get(f, "–")) for f in fields)]) + " |"
        )
    return lines


FLEET_COLUMNS = (
    ("sessions", "sessions", 0),
    ("setup_per_s", "setup /s", 0),
    ("rss_mib", "RSS MiB", 0),
    ("pss_mib", "PSS MiB", 0),
    ("fds", "fds", 0),
    ("idle_cpu_pct", "idle CPU %", 1),
    ("traffic_cpu_pct", "CPU % with sample pings", 1),
    ("reload_s", "reload s", 2),
    ("reload_dropped", "dropped by reload", 0),
    ("storm_s", "storm s", 1),
    ("stop_s", "stop s", 1),
    ("bgw_start_s", "start s", 1),
)


def _fleet_table(data: dict[str, Any]) -> list[str]:
    lines = [
        "| CPEs | " + " | ".join(h for _, h, _ in FLEET_COLUMNS) + " | missed targets |",
        "|---:|" + "---:|" * len(FLEET_COLUMNS) + "---|",
    ]
    for p in data["points"]:
        missed = [k for k, ok in (p.get("targets_met") or {}).items() if ok is False]
        cells = [
            _fmt(p.get(k), nd) if isinstance(p.get(k), float) else _fmt(p.get(k))
            for k, _, nd in FLEET_COLUMNS
        ]
        note = ", ".join(missed) or "none"
        if p.get("error"):
            note += f"; error: {p['error'][:120]}"
        lines.append(f"| {p['x']} | " + " | ".join(cells) + f" | {note} |")
    return lines


def markdown(out_dir: Path) -> str:
    lines = ["# Benchmark results", ""]
    lines.append(
        "Generated by `python -m run_bench` (bench/run_bench). One JSON per scenario next to this"
        " file holds every repetition and the measured link emulation."
    )
    for scenario in SCENARIOS:
        data = load(out_dir, scenario)
        lines += ["", f"## {scenario}", ""]
        if data is None:
            lines.append("_not run_")
            continue
        lines += _header(data)
        lines.append("")
        if scenario in ("fig9_cell_rtt", "fig9_varying", "fig10_fixed_loss"):
            lines += _sweep_table(data)
        elif scenario == "many_flows":
            lines += [
                "| flows | contender | end hosts | Mbit/s (mean ± sd) | / link sum | Jain |"
                " UDP 1 Mbit/s loss % | UDP jitter ms |",
                "|---:|---|---|---:|---:|---:|---:|---:|",
            ]
            for p in data["points"]:
                udp = [u for u in p.get("udp", []) if "lost_pct" in u]
                jains = [j for j in p.get("jain", []) if j is not None]
                lines.append(
                    f"| {p['x']:g} | {p['contender']} | {p.get('cc', '–')} |"
                    f" {_fmt(p['mean_mbps'])} ±"
                    f" {_fmt(p['std_mbps'])} | {_fmt(p.get('to_link_sum'), 3)} |"
                    f" {_fmt(min(jains) if jains else None, 3)} |"
                    f" {_fmt(max((u['lost_pct'] for u in udp), default=None))} |"
                    f" {_fmt(max((u['jitter_ms'] for u in udp), default=None))} |"
                )
        elif scenario == "latency":
            lines += [
                "| contender | condition | p50 ms | p99 ms | p99 / idle p50 | min ms |"
                " bulk Mbit/s | bulk / link sum |",
                "|---|---|---:|---:|---:|---:|---:|---:|",
            ]
            for p in data["points"]:
                lines.append(
                    f"| {p['contender']} | {p.get('condition')} | {_fmt(p.get('p50_ms'))} |"
                    f" {_fmt(p.get('p99_ms'))} | {_fmt(p.get('p99_to_idle'), 2)} |"
                    f" {_fmt(p.get('min_ms'))} | {_fmt(p.get('mean_mbps'))} |"
                    f" {_fmt(p.get('to_link_sum'), 3)} |"
                )
        elif scenario == "fleet_scale":
            lines += _fleet_table(data)
        elif scenario in SECURITY_COLUMNS:
            lines += _field_table(data, SECURITY_COLUMNS[scenario])
        elif scenario == "overflow":
            lines += [
                "| demand | tunnel Mbit/s | fixed MB | cellular MB | cellular share |"
                " policy events |",
                "|---|---:|---:|---:|---:|---|",
            ]
            for p in data["points"]:
                lines.append(
                    f"| {p.get('demand')} | {_fmt(p['mean_mbps'])} | {p['fixed_bytes'] / 1e6:.2f} |"
                    f" {p['cellular_bytes'] / 1e6:.2f} | {p['cellular_share']:.1%} |"
                    f" {'; '.join(p.get('policy_events', [])) or '-'} |"
                )
        elif scenario == "cap":
            lines += [
                "| phase | tunnel Mbit/s | fixed MB | cellular MB | cellular share |"
                " cap used MB | spent |",
                "|---|---:|---:|---:|---:|---:|---|",
            ]
            for p in data["points"]:
                lines.append(
                    f"| {p.get('phase')} | {_fmt(p['mean_mbps'])} | {p['fixed_bytes'] / 1e6:.2f} |"
                    f" {p['cellular_bytes'] / 1e6:.2f} | {p['cellular_share']:.1%} |"
                    f" {p['cap_used_bytes'] / 1e6:.2f} | {'yes' if p['cap_spent'] else 'no'} |"
                )
        elif scenario == "failover":
            lines += [
                "| policy | failure | direction | recover s (runs) | failback s (runs) |"
                " fixed link back s (runs) | cellular Mbit/s | lowest 1 s after repair Mbit/s |",
                "|---|---|---|---:|---:|---:|---:|---:|",
            ]
            for p in data["points"]:
                worst = [w for w in p.get("worst_after_repair_mbps", []) if w is not None]
                rec = ", ".join(map(str, p.get("recover_s_runs", [])))
                back = ", ".join(map(str, p.get("failback_s_runs", [])))
                fixed = ", ".join(map(str, p.get("fixed_back_s_runs", [])))  # absent before 29 Nov
                lines.append(
                    f"| {p.get('policy')} | {p.get('kind')} | {p.get('direction')} |"
                    f" {_fmt(p.get('recover_s'))} ({rec}) | {_fmt(p.get('failback_s'))} ({back}) |"
                    f" {_fmt(p.get('fixed_back_s'))} ({fixed}) |"
                    f" {_fmt(p.get('mean_mbps'))} | {_fmt(min(worst) if worst else None)} |"
                )
        elif scenario == "fairness":
            lines += [
                "| condition | victim Mbit/s (mean ± sd) | ping p50 ms | ping p99 ms |"
                " hog Mbit/s | BGW CPU % |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for p in data["points"]:
                hogs = [h for h in p.get("hog_mbps", []) if h is not None]
                cpus = [c for c in p.get("bgw_cpu_pct", []) if c is not None]
                hog = max(hogs) if hogs else None
                cpu = max(cpus) if cpus else None
                lines.append(
                    f"| {p.get('condition')} | {_fmt(p['mean_mbps'])} ± {_fmt(p['std_mbps'])} |"
                    f" {_fmt(p.get('p50_ms'))} | {_fmt(p.get('p99_ms'))} |"
                    f" {_fmt(hog, 0)} | {_fmt(cpu, 0)} |"
                )
        else:
            lines += _simple_table(data, [])
        if scenario == "fig9_varying":
            lines += ["", *_paired_ratios(data)]
        if data.get("notes"):
            lines.append("")
            lines += [f"- {n}" for n in data["notes"]]
        png = out_dir / f"{scenario}.png"
        if png.exists():
            lines += ["", f"![{scenario}]({png.name})"]
    return "\n".join(lines) + "\n"


def plots(out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[Path] = []
    fig8 = load(out_dir, "fig8_aggregation")
    if fig8:
        fig, ax = plt.subplots(figsize=(7, 4))
        for p in fig8["points"]:
            if p.get("series_mbps"):
                ys = p["series_mbps"][0]
                ax.plot(range(1, len(ys) + 1), ys, marker=".", label=p["contender"])
        ax.set_xlabel("time (s)")
        ax.set_ylabel("throughput (Mbit/s)")
        ax.set_title("Fig. 8: fixed 10 Mbit/s + cellular 5 Mbit/s, one TCP flow")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
        made.append(_save(fig, out_dir / "fig8_aggregation.png", plt))
    for scenario, xlabel, title, logx in (
        ("fig9_cell_rtt", "cellular RTT (ms)", "Fig. 9: throughput vs cellular RTT", False),
        ("fig10_fixed_loss", "fixed-link loss (%)", "Fig. 10: throughput vs fixed loss", True),
    ):
        data = load(out_dir, scenario)
        if not data:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        _sweep_lines(ax, data["points"])
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("throughput (Mbit/s)")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
        made.append(_save(fig, out_dir / f"{scenario}.png", plt))
    varying = load(out_dir, "fig9_varying")
    if varying:
        made.append(_varying_plot(varying, out_dir, plt))
    flows = load(out_dir, "many_flows")
    if flows:
        fig, ax = plt.subplots(figsize=(7, 4))
        for p in flows["points"]:  # one bar per contender and end-host congestion control
            p["series"] = f"{p['contender']} {p.get('cc', '')}".strip()
        contenders = list(dict.fromkeys(p["series"] for p in flows["points"]))
        xs = sorted({p["x"] for p in flows["points"]})
        width = 0.8 / max(len(contenders), 1)
        for i, c in enumerate(contenders):
            vals = []
            for x in xs:
                p = next((q for q in flows["points"] if q["x"] == x and q["series"] == c), None)
                vals.append((p or {}).get("mean_mbps") or 0.0)
            ax.bar([j + i * width for j in range(len(xs))], vals, width, label=c)
        ax.set_xticks([j + width * (len(contenders) - 1) / 2 for j in range(len(xs))])
        ax.set_xticklabels([f"{x:g} flows" for x in xs])
        ax.set_ylabel("aggregate throughput (Mbit/s)")
        ax.set_title("Parallel TCP flows (plus 1 Mbit/s UDP)")
        ax.legend()
        made.append(_save(fig, out_dir / "many_flows.png", plt))
    lat = load(out_dir, "latency")
    if lat:
        fig, ax = plt.subplots(figsize=(max(7, 0.6 * len(lat["points"])), 4.5))
        labels = [f"{p['contender']}\n{p.get('condition')}" for p in lat["points"]]
        p50 = [p.get("p50_ms") or 0 for p in lat["points"]]
        p99 = [p.get("p99_ms") or 0 for p in lat["points"]]
        pos = list(range(len(labels)))
        ax.bar([x - 0.2 for x in pos], p50, 0.4, label="p50")
        ax.bar([x + 0.2 for x in pos], p99, 0.4, label="p99")
        ax.set_xticks(pos)
        ax.set_xticklabels(labels, fontsize=6, rotation=90)
        ax.set_ylabel("RTT client -> server (ms)")
        ax.set_title("Latency, idle and under 1 and 8 bulk flows (down/up, cubic/BBR)")
        ax.legend()
        made.append(_save(fig, out_dir / "latency.png", plt))
    return made


def _varying_plot(data: dict[str, Any], out_dir: Path, plt: Any) -> Path:
    """Top: the cellular rate trace each contender met (first repetition, largest RTT) and what
    each got; bottom: mean throughput vs cellular RTT, as Fig. 9."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7))
    points = data["points"]
    xs = sorted({p["x"] for p in points})
    if xs:
        at = [p for p in points if p["x"] == xs[-1]]
        drawn = False
        for p in at:
            if not drawn and p.get("trace_series_mbps"):
                ts = p["trace_series_mbps"][0][:TRACE_PLOT_S]
                top.step(
                    range(1, len(ts) + 1), ts, where="pre", color="k", label="cellular (1 s means)"
                )
                top.axhline(10.0, color="grey", lw=0.8, ls=":", label="fixed (static)")
                drawn = True
            if p.get("series_mbps"):
                ys = p["series_mbps"][0][:TRACE_PLOT_S]
                top.plot(range(1, len(ys) + 1), ys, marker=".", lw=1, label=p["contender"])
        top.set_title(f"First repetition at cellular RTT {xs[-1]:g} ms (per second)")
        top.set_xlabel("time (s)")
        top.set_ylabel("Mbit/s")
        top.set_ylim(bottom=0)
        top.grid(alpha=0.3)
        top.legend(fontsize=7, ncol=3)
    _sweep_lines(bottom, points)
    bottom.set_xlabel("cellular RTT (ms)")
    bottom.set_ylabel("throughput (Mbit/s)")
    bottom.set_title("Fig. 9 with the cellular rate on a trace")
    bottom.set_ylim(bottom=0)
    bottom.grid(alpha=0.3)
    bottom.legend()
    return _save(fig, out_dir / "fig9_varying.png", plt)


def _sweep_lines(ax: Any, points: list[dict[str, Any]]) -> None:
    """One line per contender: mean throughput against x, the standard deviation as error bars."""
    for c in _contenders(points):
        pts = sorted(
            (p for p in points if p["contender"] == c and p["mean_mbps"] is not None),
            key=lambda p: p["x"],
        )
        ax.errorbar(
            [p["x"] for p in pts],
            [p["mean_mbps"] for p in pts],
            yerr=[p["std_mbps"] for p in pts],
            marker="o",
            capsize=3,
            label=c,
        )


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(out_dir: Path) -> Path:
    plots(out_dir)
    path = out_dir / "RESULTS.md"
    path.write_text(markdown(out_dir))
    return path
