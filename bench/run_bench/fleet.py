"""``fleet_scale``: one BGW, N CPE sessions played by ``run_bench.loadgen`` (issue 7).

Per N, in its own pair of namespaces (``mtlab.fleetlab``; not the netns lab):
1. the BGW starts with N CPEs configured (``bgw_start_s``: until it logs "listening");
2. the generator connects all N (``setup_per_s`` = N / seconds until the last is up);
3. the BGW's process tree is read from /proc (``rss_mib``, ``pss_mib``, ``fds``, threads);
4. ``idle_cpu_pct``: the BGW's CPU over a window with every session keepaliving and no traffic;
   ``traffic_cpu_pct`` over a second window with every ``traffic_every``-th CPE pinging the BGW
   once a second through its session;
5. ``reload_s``: the config gains one CPE, SIGHUP, until the log says "config reloaded" (and
   ``reload_tun_s`` until its TUN exists); no session may drop, and the new CPE must come up;
6. ``storm_s``: every connection is reset at once, until all N are back (the CPEs reconnect
   after the agent's first backoff, 0.25-0.5 s);
7. ``stop_s``: SIGTERM with all sessions up, until the BGW exits (target: the unit's
   ``TimeoutStopSec``).
A phase that fails records ``error`` and the point keeps what was measured before it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mtlab import LabError
from mtlab.fleetlab import FleetLab

from run_bench.loadgen import LoadGen, bgw_config, bgw_usage, fleet, idle_and_traffic_cpu
from run_bench.results import Progress, ScenarioResult, warn

ROLE = Path(__file__).resolve().parents[2] / "roles/mptcp_tunnel"
UNIT = ROLE / "templates/mptcp-tunnel.service.j2"
DEFAULTS = ROLE / "defaults/main.yml"
PORT = 7440
TARGETS = {
    "setup_per_s": (">=", 500.0),
    "rss_mib": ("<=", 1024.0),
    "idle_cpu_pct": ("<=", 5.0),
    "storm_s": ("<=", 30.0),
    "reload_s": ("<=", 2.0),
    "reload_dropped": ("<=", 0),
}


def unit_stop_timeout_s(default: float = 90.0) -> float:
    """``TimeoutStopSec`` of the agent's systemd unit (the role's template, or the role default
    it names), else systemd's default 90 s."""
    try:
        m = re.search(r"^TimeoutStopSec=\s*(.+?)\s*$", UNIT.read_text(), re.MULTILINE)
        if m is None:
            return default
        value = m.group(1)
        var = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", value)
        if var:
            found = re.search(rf"^{var.group(1)}:\s*(\d+)", DEFAULTS.read_text(), re.MULTILINE)
            return float(found.group(1)) if found else default
        return float(value)
    except (OSError, ValueError):
        return default


def targets(point: dict[str, Any], stop_timeout: float) -> dict[str, bool | None]:
    checks = dict(TARGETS, stop_s=("<=", stop_timeout))
    out: dict[str, bool | None] = {}
    for key, (op, limit) in checks.items():
        v = point.get(key)
        out[key] = None if v is None else (v >= limit if op == ">=" else v <= limit)
    if point.get("sessions") is not None:
        out["all_up"] = point["sessions"] == point["x"]
    return out


def _cpu_self() -> float:
    t = os.times()
    return t.user + t.system


def measure(
    n: int,
    *,
    keepalive_s: float = 10.0,
    idle_window_s: float = 30.0,
    traffic_every: int = 100,
    workers: int | None = None,
    offload: str | None = None,
    offer_offload: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One fleet_scale point for ``n`` CPEs (see the module docstring)."""
    point: dict[str, Any] = {"x_name": "cpes", "x": n, "contender": "mptcp-tunnel"}
    point |= {"sessions": None, "setup_per_s": None, "rss_mib": None, "idle_cpu_pct": None}
    point |= {"storm_s": None, "reload_s": None, "stop_s": None}
    cpes = fleet(n)
    extra = fleet(1, start=n)
    cfg_args: dict[str, Any] = {"port": PORT, "keepalive_s": keepalive_s}
    cfg_args |= {"workers": workers, "offload": offload}
    with FleetLab() as fl:
        fl.start_bgw(bgw_config(cpes, fl.bgw_addr, **cfg_args), nofile=max(65536, 4 * n + 4096))
        point["bgw_nofile"] = fl.bgw_nofile
        lg = LoadGen(
            cpes,
            (fl.bgw_addr, PORT),
            netns=fl.ns_gen,
            keepalive_s=keepalive_s,
            traffic_every=traffic_every,
            max_inflight=256,
            offer_offload=offer_offload,
        )
        try:
            try:
                point["bgw_start_s"] = fl.wait_bgw_ready(max(120.0, 0.05 * n))
                log(f"fleet {n}: BGW ready in {point['bgw_start_s']} s")
            except LabError as exc:
                point["error"] = f"BGW start: {exc}"
                return point
            lg.start()
            try:
                setup_s = lg.wait_all_up(max(60.0, n / 50))
                point["setup_s"] = round(setup_s, 3)
                point["setup_per_s"] = round(n / setup_s, 1)
                log(f"fleet {n}: all up in {setup_s:.1f} s ({point['setup_per_s']}/s)")
            except TimeoutError as exc:
                point["error"] = f"setup: {exc}"
            finally:
                point["sessions"] = lg.n_up
            usage = bgw_usage(fl.bgw_pids())
            point["rss_mib"], point["pss_mib"] = usage["rss_mib"], usage["pss_mib"]
            point |= {k: usage[k] for k in ("fds", "max_fds_one_process", "processes", "threads")}
            if lg.n_up:
                point["pss_kib_per_session"] = round(usage["pss_mib"] * 1024 / lg.n_up, 1)
            if not fl.bgw_alive():
                point.setdefault("error", "BGW exited")
                return point
            if "error" not in point:
                _steady(fl, lg, point, cpes, extra, cfg_args, keepalive_s, idle_window_s, log)
            point["loadgen"] = lg.stats()
            point["stop_s"], point["stop_rc"] = fl.stop_bgw(timeout=max(60.0, 0.02 * n))
            log(f"fleet {n}: SIGTERM -> exit in {point['stop_s']} s (rc {point['stop_rc']})")
        finally:
            lg.stop()
            point.setdefault("loadgen", lg.stats())
            point["bgw_log_tail"] = fl.tail(8).splitlines()
    return point


def _steady(
    fl: FleetLab,
    lg: LoadGen,
    point: dict[str, Any],
    cpes: list[Any],
    extra: list[Any],
    cfg_args: dict[str, Any],
    keepalive_s: float,
    idle_window_s: float,
    log: Callable[[str], None],
) -> None:
    """With all sessions up: idle window, reload, storm."""
    n = len(cpes)
    drops0, cpu0, t0 = sum(lg.drops.values()), _cpu_self(), time.monotonic()
    point |= idle_and_traffic_cpu(lg, fl.bgw_pids(), idle_window_s)
    point["idle_window_s"] = idle_window_s
    point["loadgen_cpu_pct"] = round(100 * (_cpu_self() - cpu0) / (time.monotonic() - t0), 1)
    point["idle_drops"] = sum(lg.drops.values()) - drops0
    log(
        f"fleet {n}: idle BGW CPU {point['idle_cpu_pct']} % of one core,"
        f" {point['traffic_cpu_pct']} % with the sample pings"
    )
    _reload(fl, lg, point, cpes, extra, cfg_args, keepalive_s, log)
    try:
        point["storm_s"] = round(lg.storm(max(120.0, n / 50)), 3)
        log(f"fleet {n}: storm: all back in {point['storm_s']} s")
    except TimeoutError as exc:
        point["error"] = f"storm: {exc}"
    point["storm_sessions"] = lg.n_up


def _reload(
    fl: FleetLab,
    lg: LoadGen,
    point: dict[str, Any],
    cpes: list[Any],
    extra: list[Any],
    cfg_args: dict[str, Any],
    keepalive_s: float,
    log: Callable[[str], None],
) -> None:
    """Add one CPE to the config, SIGHUP, time it; no session may drop; the new CPE comes up."""
    n = len(cpes)
    offset = fl.log_size()
    fl.write_bgw_config(bgw_config(cpes + extra, fl.bgw_addr, **cfg_args))
    drops0 = sum(lg.drops.values())
    tun = f"mt-{extra[0].id}"
    t0 = time.monotonic()
    fl.sighup()
    deadline = t0 + max(60.0, n / 100)
    reload_s = tun_s = None
    turn = 0
    while time.monotonic() < deadline and (reload_s is None or tun_s is None):
        if reload_s is None and "config reloaded" in fl.log_from(offset):
            reload_s = round(time.monotonic() - t0, 3)
        if tun_s is None and turn % 5 == 0 and fl.has_link(tun):  # a process each: not too often
            tun_s = round(time.monotonic() - t0, 3)
        if not fl.bgw_alive():
            break
        turn += 1
        time.sleep(0.02)
    point["reload_s"], point["reload_tun_s"] = reload_s, tun_s
    if reload_s is None:
        point["error"] = f"reload: no 'config reloaded' within {deadline - t0:.0f} s"
    # sessions that the reload broke show up within a keepalive period at most
    time.sleep(min(keepalive_s, 5.0) + 1)
    point["reload_dropped"] = sum(lg.drops.values()) - drops0 + (n - lg.n_up)
    with LoadGen(extra, lg.target, netns=fl.ns_gen, keepalive_s=keepalive_s) as one:
        try:
            one.wait_all_up(20)
            point["reload_new_cpe_up"] = True
        except TimeoutError:
            point["reload_new_cpe_up"] = False
    log(
        f"fleet {n}: reload +1 CPE: {reload_s} s (TUN after {tun_s} s),"
        f" dropped {point['reload_dropped']}, new CPE up {point['reload_new_cpe_up']}"
    )


def fleet_scale(
    s: Any, progress: Progress, save: Callable[[ScenarioResult], None]
) -> ScenarioResult:
    res = ScenarioResult("fleet_scale", asdict(s))
    res.links = {"veth": {"rate_mbit": None, "rtt_ms": None, "loss_pct": 0.0}}
    stop_timeout = unit_stop_timeout_s()
    res.notes.append(
        f"BGW and load generator in two namespaces over one unshaped veth; keepalive"
        f" {s.fleet_keepalive_s:g} s; idle CPU: {s.fleet_idle_window_s:g} s of keepalives only;"
        f" then as long with every {s.fleet_traffic_every}th CPE pinging through its session once"
        f" a second; stop target = the unit's TimeoutStopSec ({stop_timeout:g} s)"
    )
    for n in s.fleet_sizes:
        try:
            point = measure(
                n,
                keepalive_s=s.fleet_keepalive_s,
                idle_window_s=s.fleet_idle_window_s,
                traffic_every=s.fleet_traffic_every,
                workers=s.fleet_workers,
                offload=s.fleet_offload,
                log=progress.info,
            )
        except (LabError, OSError, RuntimeError) as exc:
            warn(f"fleet_scale {n}: {exc}")
            point = {"x_name": "cpes", "x": n, "contender": "mptcp-tunnel", "error": str(exc)}
        point["targets_met"] = targets(point, stop_timeout)
        res.points.append(point)
        failed = [k for k, ok in point["targets_met"].items() if ok is False]
        progress.step(
            f"fleet_scale N={n}: sessions {point.get('sessions')}, setup"
            f" {point.get('setup_per_s')}/s, RSS {point.get('rss_mib')} MiB, idle CPU"
            f" {point.get('idle_cpu_pct')} %, reload {point.get('reload_s')} s, storm"
            f" {point.get('storm_s')} s, stop {point.get('stop_s')} s"
            + (f"; error: {point['error']}" if point.get("error") else "")
            + (f"; missed: {', '.join(failed)}" if failed else "")
        )
        save(res)
    return res
