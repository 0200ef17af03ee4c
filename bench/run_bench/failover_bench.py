"""Scenario ``failover`` (issue 9): time to recover from a fixed-link failure and to fail back.

One bulk flow through the tunnel (the end hosts' congestion control, ``--cc``), measured at the
receiver in 0.1 s bins (``mtlab.failover``); the
fixed link is broken after 8 s (``cut``: a blackhole with the carrier up; ``carrier``: both
interfaces down) and repaired 8 s later. Per failure kind, direction and policy one point with
``recover_s`` (to >= 90 % of the cellular-only rate), ``failback_s`` (to the cellular rate plus a
quarter of what the fixed link added) and ``fixed_back_s`` (the fixed link itself carrying half its
rate before the failure again), the worst over the repetitions, every run kept.
"""

from __future__ import annotations

from collections.abc import Callable

from mtlab import Lab, LabError
from mtlab.failover import measure

from run_bench.contenders import Agents, link_settings, path_of
from run_bench.results import Progress, ScenarioResult, warn

KINDS = ("cut", "carrier")
DIRECTIONS = ("down", "up")
POLICIES = ("aggregate", "backup")


def _worst(times: list[float | None]) -> float | None:
    """The slowest of the runs' times; None when any run never got there."""
    return None if None in times else max(t for t in times if t is not None)


def _start(lab: Lab, agents: Agents, policy: str, contender: str) -> None:
    """The contender's configuration (the shipped one for mptcp-tunnel) with ``cpe.policy`` set
    (later scenarios get a restart)."""
    mode = path_of(contender).agents
    cfg = agents.config("cpe", mode) or lab.agent_config("cpe")
    cfg["cpe"]["policy"] = policy
    agents.start_cpe_config(cfg, f"{mode}-policy-{policy}", agents.config("bgw", mode))
    agents.wait_subflows()


def failover(
    lab: Lab,
    agents: Agents,
    s: object,
    progress: Progress,
    save: Callable[[ScenarioResult], None],
) -> ScenarioResult:
    reps: int = getattr(s, "reps", 1)
    quick: bool = getattr(s, "quick", False)
    timing = {"before_s": 6.0, "down_s": 6.0, "after_s": 8.0} if quick else {}
    # The end hosts' congestion control, as every other scenario sets it (``--cc``, default cubic),
    # not the lab host's default (BBR here): the figures must say which end hosts they are for.
    cc: str = getattr(s, "inner_cc", "cubic")
    contender: str = getattr(s, "failover_contender", "mptcp-tunnel")
    res = ScenarioResult(
        "failover", {"reps": reps, "bin_s": 0.1, "inner_cc": cc, "contender": contender, **timing}
    )
    res.links = link_settings(lab)
    for policy in POLICIES:
        _start(lab, agents, policy, contender)
        for kind in KINDS:
            for direction in DIRECTIONS:
                runs = []
                for rep in range(reps):
                    label = f"{policy} {kind} {direction} rep {rep + 1}/{reps}"
                    try:
                        run = measure(lab, kind, direction, cc=cc, **timing)
                    except LabError as exc:
                        progress.step(f"{label}: FAILED ({exc})")
                        continue
                    runs.append(run)
                    progress.step(
                        f"{label}: recover {run.recover_s} s, failback {run.failback_s} s,"
                        f" fixed back {run.fixed_back_s} s,"
                        f" worst after repair {run.worst_after_repair_mbps:.1f} Mbit/s"
                    )
                if not runs:
                    warn(f"failover {policy} {kind} {direction}: no run succeeded")
                    continue
                rec = [r.recover_s for r in runs]
                back = [r.failback_s for r in runs]
                fixed = [r.fixed_back_s for r in runs]
                res.add_point(
                    contender,
                    [r.cell_mbps for r in runs],  # the cellular-only rate during the failure
                    kind=kind,
                    direction=direction,
                    policy=policy,
                    recover_s=_worst(rec),
                    failback_s=_worst(back),
                    recover_s_runs=rec,
                    failback_s_runs=back,
                    fixed_back_s=_worst(fixed),
                    fixed_back_s_runs=fixed,
                    fixed_before_mbps=[round(r.fixed_before_mbps, 2) for r in runs],
                    before_mbps=[round(r.before_mbps, 2) for r in runs],
                    worst_after_repair_mbps=[round(r.worst_after_repair_mbps, 2) for r in runs],
                    series_mbps=[[round(x, 2) for _, x in r.bins] for r in runs[:1]],
                    series_t0_s=runs[0].bins[0][0] if runs[0].bins else None,
                )
                save(res)
    res.notes.append(
        "runs_mbps: the cellular-only rate during the failure; recover_s/failback_s/fixed_back_s:"
        " worst run"
    )
    return res
