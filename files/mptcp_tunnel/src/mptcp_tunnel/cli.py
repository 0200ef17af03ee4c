"""Command line: ``mptcp-tunnel run|check-config|setup-network``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mptcp_tunnel import __version__, capio, exitcodes, metrics, netsetup
from mptcp_tunnel.config import AgentConfig, ConfigError, default_control_socket, load_config
from mptcp_tunnel.mptcp import MptcpUnavailable
from mptcp_tunnel.runtime import Runtime
from mptcp_tunnel.tun import TunError

log = logging.getLogger("mptcp_tunnel")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mptcp-tunnel", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the agent in the foreground (role from the config)")
    run.add_argument("--config", required=True, metavar="FILE")
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config", metavar="FILE")
    net = sub.add_parser(
        "setup-network", help="apply MPTCP limits, endpoints and policy routing from the config"
    )
    net.add_argument("--config", required=True, metavar="FILE")
    net.add_argument("--check", action="store_true", help="report what would change, change nothing")
    net.add_argument("--json", action="store_true", help="print the report as JSON")
    st = sub.add_parser("status", help="show the running agent's links, subflows and policy")
    st.add_argument("--config", metavar="FILE", help="the agent's config (for its control_socket)")
    st.add_argument("--socket", metavar="PATH", help="control socket path (overrides --config)")
    st.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    # Internal: a BGW worker process, started by the BGW's control process with its channel fd.
    worker = sub.add_parser("worker", help=argparse.SUPPRESS)
    worker.add_argument("--channel-fd", type=int, required=True)
    worker.add_argument("--index", type=int, required=True)
    worker.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def _setup_logging(level: str) -> None:
    under_journald = "JOURNAL_STREAM" in os.environ  # journald adds its own timestamps
    fmt = "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(
        stream=sys.stdout,
        level=level.upper(),
        format=fmt if under_journald else "%(asctime)s " + fmt,
        force=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "worker":
        _setup_logging(args.log_level)
        from mptcp_tunnel.engine import worker

        return worker.main(args.channel_fd, args.index)
    if args.command == "status":
        return _status(args.config, args.socket, args.json)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"mptcp-tunnel: config error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    if args.command == "check-config":
        problem = _tls_problem(cfg)
        if problem:
            print(f"mptcp-tunnel: config error: {args.config}: {problem}", file=sys.stderr)
            return exitcodes.CONFIG_ERROR
        print(f"{args.config}: OK ({cfg.role}, mode {cfg.mode})")
        return exitcodes.OK
    if args.command == "setup-network":
        return _setup_network(cfg, args.check, args.json)
    return _run(cfg)


def _tls_problem(cfg: AgentConfig) -> str | None:
    """The PKI files must load (check-config checks them too: they travel with the config)."""
    if cfg.tls is not None and cfg.mode == "mptcp":
        from mptcp_tunnel.tls import load_contexts

        try:
            load_contexts(cfg.tls, server=cfg.role == "bgw")
        except ConfigError as exc:
            return str(exc)
    return None


def _host_problem(cfg: AgentConfig) -> str | None:
    """Settings that are valid YAML but that this host cannot honour."""
    tls_problem = _tls_problem(cfg)
    if tls_problem:
        return tls_problem
    cc = cfg.tunnel.congestion_control
    if cc:
        available = Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text().split()
        if cc not in available:
            return f"tunnel.congestion_control: {cc!r} is not available here ({' '.join(available)})"
    return None


def _setup_network(cfg: AgentConfig, check: bool, as_json: bool) -> int:
    try:
        # A link whose data cap the running agent found spent keeps its backup flag.
        capped = capio.spent_links(cfg.cpe) if cfg.cpe is not None else frozenset()
        report = netsetup.apply(cfg, check=check, capped=capped)
    except netsetup.NetworkSetupError as exc:
        print(f"mptcp-tunnel: {exc}", file=sys.stderr)
        return exitcodes.NO_MPTCP
    if as_json:
        print(json.dumps({"changed": report.changed, "changes": report.changes, "problems": report.problems}))
    else:
        for line in report.changes or ["nothing to change"]:
            print(("would " if check and report.changes else "") + line)
        for problem in report.problems:
            print(f"problem: {problem}", file=sys.stderr)
    return exitcodes.RUNTIME_ERROR if report.problems else exitcodes.OK


def _status(config: str | None, path: str | None, as_json: bool) -> int:
    from mptcp_tunnel import control, status

    if path == "":
        print("mptcp-tunnel: status: --socket: empty path", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    if path is None:
        if config is None:
            path = default_control_socket("cpe")
            if not os.path.exists(path) and os.path.exists(default_control_socket("bgw")):
                path = default_control_socket("bgw")
        else:
            try:
                path = load_config(config).control_socket
            except ConfigError as exc:
                print(f"mptcp-tunnel: config error: {exc}", file=sys.stderr)
                return exitcodes.CONFIG_ERROR
            if not path:
                print(f"mptcp-tunnel: {config}: control_socket is disabled", file=sys.stderr)
                return exitcodes.CONFIG_ERROR
    try:
        snap = control.query(path)
    except control.ControlError as exc:
        print(f"mptcp-tunnel: {exc}", file=sys.stderr)
        return exitcodes.RUNTIME_ERROR
    if as_json:
        print(json.dumps(snap, indent=2))
    else:
        try:
            print(status.render(snap), end="")
        except (KeyError, TypeError, ValueError) as exc:
            print(f"mptcp-tunnel: unexpected snapshot from the agent ({exc}); try --json", file=sys.stderr)
            return exitcodes.RUNTIME_ERROR
    return exitcodes.OK


def _control(cfg: AgentConfig, agent: Any) -> Any:
    """Start the control socket for ``agent`` (None when disabled or unavailable)."""
    from mptcp_tunnel import control

    if not cfg.control_socket:
        return None
    server = control.ControlServer(cfg.control_socket, agent.snapshot)
    return server if server.start() else None


def _run(cfg: AgentConfig) -> int:
    _setup_logging(cfg.log_level)
    problem = _host_problem(cfg)
    if problem:
        print(f"mptcp-tunnel: config error: {cfg.path}: {problem}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    runtime = Runtime()
    runtime.install_signal_handlers()
    try:
        metrics.serve(cfg.metrics_listen)
    except OSError as exc:
        log.error("cannot serve metrics on %s: %s", cfg.metrics_listen, exc.strerror)
        return exitcodes.RUNTIME_ERROR
    try:
        if cfg.mode == "hya":
            # The HYA baseline (benchmarks only) is loaded on demand.
            hya_io = importlib.import_module("mptcp_tunnel.hya_io")
            return int(hya_io.run_hya(cfg, cfg.hya, runtime.stop))
        agent: Any
        if cfg.role == "cpe":
            from mptcp_tunnel.cpe import CpeAgent

            agent = CpeAgent(cfg, runtime)
        else:
            from mptcp_tunnel.bgw import BgwAgent

            agent = BgwAgent(cfg, runtime)
        server = _control(cfg, agent)
        try:
            return int(agent.run())
        finally:
            if server is not None:
                server.close()
    except MptcpUnavailable as exc:
        log.error("%s", exc)
        return exitcodes.NO_MPTCP
    except (TunError, netsetup.NetworkSetupError) as exc:
        log.error("%s", exc)
        return exitcodes.RUNTIME_ERROR
    except Exception:
        log.exception("internal error, stopping (please report this with the log above)")
        return exitcodes.RUNTIME_ERROR
