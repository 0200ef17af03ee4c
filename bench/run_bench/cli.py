"""``python -m run_bench [--quick] [--reps N] [--only A,B] [--out DIR] [--report-only]``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from run_bench.results import RESULTS_DIR, SCENARIOS, STANDALONE, Progress, ScenarioResult, warn

# Run order: the ceiling removes the link emulation, so it goes last among the lab scenarios;
# the standalone ones (own namespaces, no netns lab) run after the lab is down.
ORDER = (
    "fig8_aggregation",
    "fig9_cell_rtt",
    "fig9_varying",
    "fig10_fixed_loss",
    "many_flows",
    "latency",
    "failover",
    "overflow",
    "cap",
    "datapath_ceiling",
    "fleet_scale",
    "fairness",
    "fuzz",
    "tls_handshakes",
    "lockout",
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="short run (fewer points, 1 repetition)")
    p.add_argument("--reps", type=int, default=None, help="repetitions per point")
    p.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="result directory")
    p.add_argument("--report-only", action="store_true", help="rebuild tables/plots from JSON")
    p.add_argument(
        "--seconds", type=int, default=None, help="seconds per run in Fig. 9/10 (default 30)"
    )
    p.add_argument("--cc", default="cubic", help="end hosts' TCP congestion control (iperf3 -C)")
    p.add_argument(
        "--shape-share",
        type=float,
        default=None,
        help="mptcp-tunnel-fq-shaped: the shaper's share of the links' rates (0.9)",
    )
    p.add_argument(
        "--line-share",
        type=float,
        default=None,
        help="mptcp-tunnel-fq-links: its cpe.shape_share, a share of the line (0.98)",
    )
    p.add_argument(
        "--aqm-target-ms",
        type=float,
        default=None,
        help="fq_codel contenders (fq, fq-cubic, fq-shaped, fq-links): tunnel.aqm_target_ms (5)",
    )
    p.add_argument(
        "--failover-contender",
        default=None,
        help="failover: the tunnel contender whose agents it runs (default mptcp-tunnel)",
    )
    p.add_argument(
        "--latency-fixed-cut",
        action="store_true",
        help="latency: blackhole the fixed link once the agents run (cellular alone carries it)",
    )
    p.add_argument(
        "--trace",
        default=None,
        help="fig9_varying: the cellular rate trace (mtlab.trace spec: walk:... or file:PATH,...)",
    )
    p.add_argument(
        "--flows-contenders",
        default=None,
        help="many_flows: comma-separated contenders (e.g. mptcp-tunnel,mptcp-tunnel-fq)",
    )
    p.add_argument(
        "--fig9-contenders",
        default=None,
        help="fig9_cell_rtt, fig9_varying: comma-separated contenders (e.g. mptcp-tunnel-fq-links)",
    )
    p.add_argument(
        "--latency-contenders",
        default=None,
        help="latency: comma-separated contenders (e.g. fixed-only,mptcp-tunnel-fq-shaped)",
    )
    p.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards")
    p.add_argument(
        "--fleet-sizes", default=None, help="fleet_scale: comma-separated N (default 1000,10000)"
    )
    p.add_argument("--fleet-workers", type=int, default=None, help="fleet_scale: tunnel.workers")
    p.add_argument("--fleet-offload", default=None, help="fleet_scale: tunnel.offload")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from run_bench import report

    if args.report_only:
        print(f"wrote {report.write(args.out)}")
        return 0
    chosen = [s for s in args.only.split(",") if s] or list(ORDER)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        print(
            f"run_bench: unknown scenario {unknown[0]!r} (have: {', '.join(SCENARIOS)})",
            file=sys.stderr,
        )
        return 2
    if args.reps is not None and args.reps < 1:
        print("run_bench: --reps must be >= 1", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("run_bench: needs root (network namespaces, tc, nftables)", file=sys.stderr)
        return 2

    from mtlab import Lab, LabError

    from run_bench.contenders import Agents, path_of
    from run_bench.scenarios import RUNNERS, STANDALONE_RUNNERS, Settings

    settings = Settings.make(args.quick, args.reps)
    settings.inner_cc = args.cc
    if args.shape_share is not None:
        if not 0.1 <= args.shape_share <= 1.0:
            print("run_bench: --shape-share must be between 0.1 and 1.0", file=sys.stderr)
            return 2
        settings.shape_share = args.shape_share
    if args.line_share is not None:
        if not 0.5 <= args.line_share <= 1.0:
            print("run_bench: --line-share must be between 0.5 and 1.0", file=sys.stderr)
            return 2
        settings.line_share = args.line_share
    if args.aqm_target_ms is not None:
        if not 0.5 <= args.aqm_target_ms <= 50.0:
            print("run_bench: --aqm-target-ms must be between 0.5 and 50", file=sys.stderr)
            return 2
        settings.aqm_target_ms = args.aqm_target_ms
    settings.latency_fixed_cut = args.latency_fixed_cut
    if args.failover_contender is not None:
        try:
            tunnel = path_of(args.failover_contender).agents.startswith("mptcp")
        except ValueError as exc:
            print(f"run_bench: --failover-contender: {exc}", file=sys.stderr)
            return 2
        if not tunnel or args.failover_contender == "raw-mptcp":
            print("run_bench: --failover-contender: not an mptcp-tunnel contender", file=sys.stderr)
            return 2
        settings.failover_contender = args.failover_contender
    if args.seconds is not None:
        if args.seconds < 2:
            print("run_bench: --seconds must be >= 2", file=sys.stderr)
            return 2
        settings.transfer_seconds = args.seconds
    if args.fleet_sizes:
        try:
            settings.fleet_sizes = [int(x) for x in args.fleet_sizes.split(",") if x]
        except ValueError:
            print("run_bench: --fleet-sizes takes integers, e.g. 1000,10000", file=sys.stderr)
            return 2
    if args.trace is not None:
        import dataclasses

        from mtlab.trace import FileSpec, TraceError, parse_spec

        try:
            spec = parse_spec(args.trace)
        except TraceError as exc:
            print(f"run_bench: --trace: {exc}", file=sys.stderr)
            return 2
        if spec is None:
            print("run_bench: --trace: fig9_varying needs a trace, not 'none'", file=sys.stderr)
            return 2
        if isinstance(spec, FileSpec):
            spec = dataclasses.replace(spec, path=spec.path.resolve())
        settings.varying_trace = spec.text()
    for option, attr in (
        ("fig9", "fig9_contenders"),
        ("flows", "flows_contenders"),
        ("latency", "latency_contenders"),
    ):
        value = getattr(args, f"{option}_contenders")
        if value is None:
            continue
        wanted = _contenders(value, f"--{option}-contenders")
        if wanted is None:
            return 2
        setattr(settings, attr, wanted)
    settings.fleet_workers = args.fleet_workers
    settings.fleet_offload = args.fleet_offload
    chosen = [s for s in ORDER if s in chosen]
    progress = Progress(sum(settings.steps(s) for s in chosen))
    lab_scenarios = [s for s in chosen if s not in STANDALONE]
    lab = Lab()
    print(
        f"run_bench: {'quick' if settings.quick else 'full'} run, {settings.reps} repetition(s),"
        f" end-host TCP {settings.inner_cc}, scenarios {', '.join(chosen)};"
        f" lab prefix {lab.prefix}; results in {args.out}",
        flush=True,
    )
    t0 = time.monotonic()
    failed: list[str] = []

    def save(res: ScenarioResult) -> None:
        res.write(args.out)

    def finish(res: ScenarioResult) -> None:
        path = res.write(args.out)
        for note in res.notes:
            progress.info(note)
        progress.info(f"wrote {path}")

    try:
        if lab_scenarios:
            try:
                lab.up(agents=False)
                agents = Agents(
                    lab,
                    settings.ooo_timeout_ms,
                    settings.inseq_timeout_ms,
                    settings.shape_share,
                    settings.line_share,
                    settings.aqm_target_ms,
                )
                for scenario in lab_scenarios:
                    print(f"== {scenario}", flush=True)
                    try:
                        res = RUNNERS[scenario](lab, agents, settings, progress, save)
                    except LabError as exc:
                        warn(f"{scenario} failed: {exc}")
                        failed.append(scenario)
                        continue
                    finish(res)
            finally:
                if not args.keep_lab:
                    lab.down()
        for scenario in (s for s in chosen if s in STANDALONE):
            print(f"== {scenario}", flush=True)
            try:
                res = STANDALONE_RUNNERS[scenario](settings, progress, save)
            except (LabError, OSError, RuntimeError) as exc:
                warn(f"{scenario} failed: {exc}")
                failed.append(scenario)
                continue
            finish(res)
    except KeyboardInterrupt:
        warn("interrupted")
        return 130
    except LabError as exc:
        warn(str(exc))
        return 1
    print(f"wrote {report.write(args.out)} ({time.monotonic() - t0:.0f} s)", flush=True)
    if failed:
        warn(f"failed scenarios: {', '.join(failed)}")
        return 1
    return 0


def _contenders(value: str, option: str) -> list[str] | None:
    """A comma-separated contender list, or None after saying what is wrong with it."""
    from run_bench.contenders import CONTENDERS

    wanted = [c for c in value.split(",") if c]
    bad = [c for c in wanted if c not in CONTENDERS]
    if bad or not wanted:
        print(
            f"run_bench: {option}: unknown {bad[0] if bad else 'empty list'!r}"
            f" (have: {', '.join(CONTENDERS)})",
            file=sys.stderr,
        )
        return None
    return wanted
