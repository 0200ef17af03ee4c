"""Load generator: N CPEs from ONE network namespace against a real BGW process.

Every simulated CPE is one MPTCP socket (a single subflow) running the agent's own handshake
(``mptcp_tunnel.handshake``: CHALLENGE -> HELLO -> WELCOME/REJECT) and framing
(``mptcp_tunnel.framing``: KEEPALIVE control frames after ``keepalive_s`` of idle, IP packets
split by ``StreamParser``). Every ``traffic_every``-th CPE sends one ICMP echo request per
``traffic_interval_s`` from the first address of its own prefix to ``traffic_dst`` (an address
the BGW owns): the BGW's kernel answers into the CPE's TUN, the reply comes back through the
session and is counted. Everything is non-blocking in ONE ``selectors`` (epoll) loop, running in
a background thread that may enter a network namespace first, so tests and benchmarks drive it
as a library::

    cpes = fleet(1000)                                   # ids, secrets, prefixes (deterministic)
    write_bgw_config("bgw.yaml", cpes, listen_address="10.99.0.1")
    lg = LoadGen(cpes, ("10.99.0.1", 7440), netns="mt-fleet-gen", traffic_every=10)
    lg.start()
    setup_s = lg.wait_all_up(timeout=120)                # seconds from start() to all N up
    storm_s = lg.storm(timeout=120)                      # drop all at once, time until all back
    lg.stats()                                           # counters, see LoadGen.stats
    lg.stop()

``bgw_usage(pid)`` reads a BGW's resources from /proc (the process and all its descendants):
RSS summed, PSS, CPU seconds (utime + stime), open fds, threads.

Command line (``python -m run_bench.loadgen``; ``make setup`` puts lab/ and bench/ on PYTHONPATH)::

    python -m run_bench.loadgen config --n 1000 --listen 10.99.0.1 --out bgw.yaml
    ip netns exec GEN python -m run_bench.loadgen run --target 10.99.0.1 --n 1000 \\
        --bgw-pid PID --idle-window 20 --storm --json out.json
    python -m run_bench.loadgen fleet --n 1000 [--workers 0] [--offload auto]   # all in one:
        # namespaces + veth + a BGW (mtlab.fleetlab), then the run above, cleaned up afterwards
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import hashlib
import heapq
import hmac
import ipaddress
import json
import os
import random
import resource
import selectors
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mptcp_tunnel import framing
from mptcp_tunnel import handshake as hs
from mptcp_tunnel import tls as tlsmod
from mptcp_tunnel.ackclock import AckClock
from mptcp_tunnel.config import CPE_ID_RE, TlsSettings
from mptcp_tunnel.mptcp import MptcpFallback, mptcp_info
from mtlab import procs

IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)
CLONE_NEWNET = 0x40000000
DEFAULT_SEED = "mt-loadgen"
DEFAULT_PREFIX_BASE = "10.128.0.0/9"
ICMP_IDENT = 0x4D54  # "MT"
VNET_HDR_LEN = 10  # struct virtio_net_hdr, in front of every frame when offload is negotiated

# ---------------------------------------------------------------------------- fleet definition


@dataclass(frozen=True)
class CpeSpec:
    """One simulated CPE: what the BGW config lists and what the CPE side needs."""

    id: str
    secret: bytes
    prefix: ipaddress.IPv4Network
    address: ipaddress.IPv4Address  # source of this CPE's inner packets (inside ``prefix``)


def cpe_id(i: int) -> str:
    """Deterministic id of CPE number ``i`` (``lg000042``; matches ``[a-z0-9][a-z0-9-]{0,11}``)."""
    ident = f"lg{i:06d}"
    if not CPE_ID_RE.match(ident):
        raise ValueError(f"CPE number {i} does not fit an id")
    return ident


def cpe_secret(ident: str, seed: str = DEFAULT_SEED) -> bytes:
    """The CPE's secret, derived from its id (so the config and the generator agree)."""
    return hmac.new(seed.encode(), ident.encode(), hashlib.sha256).hexdigest()[:32].encode()


def cpe_prefix(
    i: int, base: str = DEFAULT_PREFIX_BASE, prefixlen: int = 30
) -> ipaddress.IPv4Network:
    """The ``i``-th ``/prefixlen`` inside ``base`` (default 10.128.0.0/9: 2 M /30s)."""
    net = ipaddress.IPv4Network(base)
    if not net.prefixlen <= prefixlen <= 32:
        raise ValueError(f"/{prefixlen} does not fit in {base}")
    size = 1 << (32 - prefixlen)
    if (i + 1) * size > net.num_addresses:
        raise ValueError(f"{base} has no room for {i + 1} /{prefixlen} prefixes")
    return ipaddress.IPv4Network((int(net.network_address) + i * size, prefixlen))


def fleet(
    n: int,
    start: int = 0,
    base: str = DEFAULT_PREFIX_BASE,
    prefixlen: int = 30,
    seed: str = DEFAULT_SEED,
) -> list[CpeSpec]:
    """CPEs number ``start`` .. ``start + n - 1``."""
    out = []
    for i in range(start, start + n):
        ident = cpe_id(i)
        prefix = cpe_prefix(i, base, prefixlen)
        addr = prefix.network_address + (1 if prefixlen < 31 else 0)
        out.append(CpeSpec(ident, cpe_secret(ident, seed), prefix, addr))
    return out


def bgw_config(
    cpes: Iterable[CpeSpec],
    listen_address: str,
    *,
    port: int = 7440,
    keepalive_s: float = 10.0,
    metrics_listen: str = "127.0.0.1:9477",
    log_level: str = "info",
    workers: int | None = None,
    offload: str | None = None,
    tunnel: dict[str, Any] | None = None,
    tls_dir: str | None = None,
) -> dict[str, Any]:
    """A BGW agent config (as a dict) listing ``cpes``.

    ``workers`` / ``offload`` become ``tunnel.workers`` / ``tunnel.offload`` only when given
    (an agent without the new engine rejects unknown keys).
    """
    # The load generator speaks the HMAC handshake (encryption none): it measures the engine.
    t: dict[str, Any] = {"port": port, "keepalive_s": keepalive_s, "encryption": "none"}
    if workers is not None:
        t["workers"] = workers
    if offload is not None:
        t["offload"] = offload
    t |= tunnel or {}
    extra: dict[str, Any] = {}
    if tls_dir is not None:  # the agent's default: mutual TLS with the PKI from make_pki
        t["encryption"] = "tls"
        base = Path(tls_dir)
        extra["tls"] = {
            "ca_file": str(base / "ca.crt"),
            "cert_file": str(base / "bgw1.crt"),
            "key_file": str(base / "bgw1.key"),
        }
    return {
        "role": "bgw",
        "log_level": log_level,
        "metrics_listen": metrics_listen,
        "tunnel": t,
        **extra,
        "bgw": {
            "listen_address": listen_address,
            # Every simulated CPE comes from the generator's one address: no per-source limit.
            "max_pending_per_source": 1_000_000,
            "cpes": [
                {"id": c.id, "secret": c.secret.decode(), "prefixes": [str(c.prefix)]} for c in cpes
            ],
        },
    }


def make_pki(directory: str | Path, cpes: Iterable[CpeSpec]) -> str:
    """A CA, the BGW's certificate (``bgw1``) and one per CPE, for ``--tls`` runs."""
    from mtlab.pki import Pki

    pki = Pki(Path(directory))
    pki.issue("bgw1", "bgw")
    for c in cpes:
        pki.issue(c.id, "cpe")
    return str(pki.dir)


def write_bgw_config(
    path: str | Path, cpes: Iterable[CpeSpec], listen_address: str, **kw: Any
) -> Path:
    """Write ``bgw_config(...)`` to ``path``. JSON is YAML, and much faster to write for 10 000."""
    path = Path(path)
    doc = bgw_config(cpes, listen_address, **kw)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        "# generated by run_bench.loadgen (JSON is valid YAML)\n" + json.dumps(doc) + "\n"
    )
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------- packets


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_echo(
    src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, seq: int, ident: int = ICMP_IDENT
) -> bytes:
    """A valid IPv4 ICMP echo request (checksums included)."""
    payload = b"mptcp-tunnel loadgen"
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xFFFF) + payload
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    total = 20 + len(icmp)
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, seq & 0xFFFF, 0x4000, 64, 1, 0, src.packed, dst.packed
    )
    hdr = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
    return hdr + icmp


def _is_echo_reply(pkt: memoryview) -> bool:
    if len(pkt) < 28 or pkt[0] >> 4 != 4 or pkt[9] != 1:
        return False
    ihl = (pkt[0] & 0x0F) * 4
    return len(pkt) >= ihl + 8 and pkt[ihl] == 0


# ---------------------------------------------------------------------------- namespaces, limits


def enter_netns(name: str) -> None:
    """Move the CALLING THREAD into network namespace ``name`` (``/run/netns/<name>``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def raise_nofile(want: int | None = None) -> int:
    """Raise this process's soft RLIMIT_NOFILE (to ``want`` or the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want is None or hard != resource.RLIM_INFINITY and want > hard else want
    if target != resource.RLIM_INFINITY and target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


# ---------------------------------------------------------------------------- BGW resources


def process_tree(pids: Iterable[int]) -> list[int]:
    """``pids`` and all their living descendants."""
    return procs.process_tree(list(pids))


def bgw_usage(pids: int | Iterable[int]) -> dict[str, Any]:
    """Resources of a BGW: its process(es) and their descendants, summed, read from /proc.

    ``rss_mib`` sums VmRSS (counts pages shared between forked workers once per process),
    ``pss_mib`` sums PSS (shared pages divided among their users; the fair total).
    """
    roots = [pids] if isinstance(pids, int) else list(pids)
    tick = os.sysconf("SC_CLK_TCK")
    rss_kib = pss_kib = fds = threads = 0
    cpu = 0.0
    per_process = []
    tree = process_tree(roots)
    for pid in tree:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            p_cpu = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
            p_threads = int(fields[17])
            p_rss = 0
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        p_rss = int(line.split()[1])
            p_pss = 0
            with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        p_pss = int(line.split()[1])
            p_fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        cpu += p_cpu
        threads += p_threads
        rss_kib += p_rss
        pss_kib += p_pss
        fds += p_fds
        per_process.append(
            {"pid": pid, "rss_mib": round(p_rss / 1024, 1), "fds": p_fds, "cpu_s": round(p_cpu, 2)}
        )
    return {
        "processes": len(per_process),
        "threads": threads,
        "rss_mib": round(rss_kib / 1024, 1),
        "pss_mib": round(pss_kib / 1024, 1),
        "cpu_s": round(cpu, 3),
        "fds": fds,
        "max_fds_one_process": max((p["fds"] for p in per_process), default=0),
        "per_process": per_process,
    }


def idle_and_traffic_cpu(lg: LoadGen, pids: list[int], seconds: float) -> dict[str, float]:
    """The BGW's CPU over two windows of ``seconds``: truly idle (the sample pings paused, every
    session keepaliving: ``idle_cpu_pct``), then with the pings (``traffic_cpu_pct``)."""
    lg.traffic_paused = True
    try:
        idle = cpu_percent(pids, seconds)
    finally:
        lg.traffic_paused = False
    return {"idle_cpu_pct": idle, "traffic_cpu_pct": cpu_percent(pids, seconds)}


def cpu_percent(
    pids: int | Iterable[int], seconds: float, sleep: Callable[[float], None] = time.sleep
) -> float:
    """CPU used by the BGW (process tree) over ``seconds``, in % of one core."""
    a = bgw_usage(pids)["cpu_s"]
    t0 = time.monotonic()
    sleep(seconds)
    b = bgw_usage(pids)["cpu_s"]
    return round(100.0 * (b - a) / (time.monotonic() - t0), 2)


def flood(target: tuple[str, int], n: int, netns: str | None = None) -> list[socket.socket]:
    """Open ``n`` MPTCP connections to ``target`` that never say a word (non-blocking connects).

    Created in a thread that enters ``netns`` first; close them with ``close_flood``.
    """
    raise_nofile(n + 1024)
    out: list[socket.socket] = []
    err: list[BaseException] = []

    def work() -> None:
        try:
            if netns:
                enter_netns(netns)
            for _ in range(n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
                s.setblocking(False)
                s.connect_ex(target)
                out.append(s)
        except BaseException as exc:
            err.append(exc)

    t = threading.Thread(target=work, name="flood")
    t.start()
    t.join()
    if err:
        close_flood(out)
        raise err[0]
    return out


def close_flood(socks: list[socket.socket]) -> None:
    """Close flood connections with a reset (no TIME_WAIT, the BGW sees it at once)."""
    linger = struct.pack("ii", 1, 0)
    for s in socks:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.close()
    socks.clear()


# ---------------------------------------------------------------------------- the generator

IDLE, CONNECTING, CHALLENGE, WELCOME, UP = range(5)
STATE_NAMES = ("idle", "connecting", "challenge", "welcome", "up")
T_CONNECT, T_SESSION, T_HANDSHAKE, T_TRAFFIC = range(4)


class _Conn:
    __slots__ = (
        "spec",
        "idx",
        "sock",
        "fd",
        "state",
        "gen",
        "rbuf",
        "parser",
        "server_nonce",
        "client_nonce",
        "out",
        "last_tx",
        "last_rx",
        "attempt",
        "seq",
        "traffic",
        "events",
        "vnet",
        "tls",
        "tls_up",
        "reader",
        "acks",
    )

    def __init__(self, spec: CpeSpec, idx: int, traffic: bool) -> None:
        self.spec = spec
        self.idx = idx
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = IDLE
        self.acks: AckClock | None = None  # QUIET_BGW: the BGW's liveness from its ACKs
        self.gen = 0
        self.rbuf = bytearray()
        self.parser: framing.StreamParser | None = None
        self.server_nonce = b""
        self.client_nonce = b""
        self.out = bytearray()
        self.last_tx = 0.0
        self.last_rx = 0.0
        self.attempt = 0
        self.seq = 0
        self.traffic = traffic
        self.events = 0
        self.vnet = 0  # vnet header bytes per frame in this session (0 or VNET_HDR_LEN)
        self.tls: tlsmod.TlsChannel | None = None  # with TLS: the record layer of this connection
        self.tls_up = False
        self.reader: hs.MessageReader | None = None


class LoadGen:
    """Plays ``cpes`` against the BGW at ``target`` (address, port); see the module docstring.

    Timing: a CPE whose handshake fails or whose session drops reconnects after a jittered,
    doubling backoff like the real agent (``[c/2, c]``, ``c`` from ``reconnect_initial_s`` up to
    ``reconnect_max_s``). At most ``max_inflight`` connects/handshakes are in progress at once
    (a real fleet is not synchronised either). A session is dead when nothing arrived for
    ``3 * keepalive_s`` (as the agent decides); it is then counted as a drop and reconnected.
    """

    def __init__(
        self,
        cpes: list[CpeSpec],
        target: tuple[str, int],
        *,
        netns: str | None = None,
        keepalive_s: float = 10.0,
        traffic_every: int = 0,
        traffic_interval_s: float = 1.0,
        traffic_dst: str | None = None,
        max_inflight: int = 256,
        handshake_timeout_s: float = 10.0,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        max_frame_bytes: int = 4096,
        reconnect: bool = True,
        offer_offload: bool = False,
        offer_quiet: bool = True,
        tls_dir: str | None = None,
        bgw_name: str = "bgw1",
    ) -> None:
        self.cpes = cpes
        self.target = (target[0], int(target[1]))
        self.netns = netns
        self.keepalive_s = keepalive_s
        self.dead_after_s = 3 * keepalive_s
        self.traffic_interval_s = traffic_interval_s
        # Paused: the pinging CPEs skip their pings (keepalives go on), to measure an idle BGW.
        self.traffic_paused = False
        self.traffic_dst = ipaddress.IPv4Address(traffic_dst or target[0])
        self.max_inflight = max_inflight
        self.handshake_timeout_s = handshake_timeout_s
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.max_frame_bytes = max_frame_bytes
        self.reconnect = reconnect
        self.offer = hs.Feature.VNET_HDR if offer_offload else hs.Feature.NONE
        if offer_quiet:  # as the agent's CPE does: the BGW then sends no keepalives
            self.offer |= hs.Feature.QUIET_BGW
        # TLS (the agent's default): each CPE presents its own certificate <tls_dir>/<id>.crt/.key
        # (see ``make_pki``); one client context per CPE, made at its first connect.
        self.tls_dir = tls_dir
        self.bgw_name = bgw_name
        self._ctx: dict[int, Any] = {}
        self.conns = [
            _Conn(c, i, traffic_every > 0 and i % traffic_every == 0) for i, c in enumerate(cpes)
        ]
        self._rng = random.Random(0x4D54)
        self._sel: selectors.BaseSelector | None = None
        self._timers: list[tuple[float, int, int, int, int]] = []
        self._tseq = 0
        self._queue: deque[int] = deque()
        self._inflight = 0
        self._cmds: deque[tuple[str, Any]] = deque()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._error: BaseException | None = None
        self._all_up = threading.Event()
        self._changed = threading.Condition()
        # counters (written by the loop thread only)
        self.n_up = 0
        self.phase = "idle"
        self.phase_start = 0.0
        self.phase_all_up: float | None = None
        self.phase_first_up: float | None = None
        self.handshakes_ok = 0
        self.failures: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.drops_by_phase: Counter[str] = Counter()
        self.storm_closed = 0
        self.keepalives_tx = 0
        self.keepalives_rx = 0
        self.keepalive_late_max_s = 0.0
        self.packets_tx = 0
        self.echo_replies_rx = 0
        self.packets_rx = 0
        self.frames_ignored = 0
        self.loop_turns = 0
        self.loop_max_lag_s = 0.0
        self.offload_sessions = 0
        self.quiet_sessions = 0

    # ------------------------------------------------------------------ public API
    def start(self) -> None:
        """Start the loop thread; every CPE begins connecting (paced by ``max_inflight``)."""
        if self._thread is not None:
            raise RuntimeError("already started")
        need = len(self.conns) + 64
        have = raise_nofile(need + 1024)
        if have < need:
            raise RuntimeError(f"RLIMIT_NOFILE {have} < {need} needed for {len(self.conns)} CPEs")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._main, args=(ready,), name="loadgen", daemon=True
        )
        self._thread.start()
        ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"load generator failed to start: {self._error}") from self._error

    def wait_all_up(self, timeout: float) -> float:
        """Wait until every CPE has a session; seconds from the phase start (start/storm)."""
        if not self._all_up.wait(timeout):
            self._check_alive()
            raise TimeoutError(
                f"{self.n_up}/{len(self.conns)} sessions up after {timeout:g} s"
                f" (handshake failures {dict(self.failures)}, drops {dict(self.drops)})"
            )
        self._check_alive()
        assert self.phase_all_up is not None
        return self.phase_all_up - self.phase_start

    def storm(self, timeout: float) -> float:
        """Drop every connection at once (RST), let all reconnect; seconds until all are up."""
        done = threading.Event()
        self._command("storm", done)
        done.wait(30)
        return self.wait_all_up(timeout)

    def stop(self) -> None:
        """Close every connection and end the loop thread (idempotent)."""
        if self._thread is not None:
            self._command("stop", None)
            self._thread.join(30)
            self._thread = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> LoadGen:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def received_by_cpe(self) -> dict[str, int]:
        """Echo replies received per traffic-sending CPE (``_Conn.events``)."""
        return {c.spec.id: c.events for c in self.conns if c.traffic}

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters (JSON-ready)."""
        states = Counter(STATE_NAMES[c.state] for c in self.conns)
        out: dict[str, Any] = {
            "cpes": len(self.conns),
            "sessions_up": self.n_up,
            "states": dict(states),
            "phase": self.phase,
            "handshakes_ok": self.handshakes_ok,
            "handshake_failures": sum(self.failures.values()),
            "handshake_failures_by_reason": dict(self.failures),
            "drops": sum(self.drops.values()),
            "drops_by_reason": dict(self.drops),
            "drops_by_phase": dict(self.drops_by_phase),
            "storm_closed": self.storm_closed,
            "keepalives_tx": self.keepalives_tx,
            "keepalives_rx": self.keepalives_rx,
            "keepalive_late_max_s": round(self.keepalive_late_max_s, 3),
            "traffic_cpes": sum(1 for c in self.conns if c.traffic),
            "packets_tx": self.packets_tx,
            "echo_replies_rx": self.echo_replies_rx,
            "packets_rx": self.packets_rx,
            "loop_max_lag_s": round(self.loop_max_lag_s, 3),
            "offload_sessions": self.offload_sessions,
            "quiet_sessions": self.quiet_sessions,
        }
        if self.phase_all_up is not None:
            secs = self.phase_all_up - self.phase_start
            out["phase_all_up_s"] = round(secs, 3)
            out["setup_per_s"] = round(len(self.conns) / secs, 1) if secs > 0 else None
        return out

    def wait_for(self, predicate: Callable[[LoadGen], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds (checked on every change and every 0.2 s)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.2))
        return True

    # ------------------------------------------------------------------ loop thread
    def _check_alive(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"load generator loop failed: {self._error!r}") from self._error

    def _command(self, name: str, arg: Any) -> None:
        self._cmds.append((name, arg))
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def _main(self, ready: threading.Event) -> None:
        try:
            if self.netns:
                enter_netns(self.netns)
            self._sel = selectors.DefaultSelector()  # epoll on Linux
            self._sel.register(self._wake_r, selectors.EVENT_READ, None)
            self._begin_phase("setup")
            for c in self.conns:
                self._queue.append(c.idx)
            ready.set()
            self._loop()
        except BaseException as exc:  # surfaced by the API calls
            self._error = exc
            ready.set()
        finally:
            self._close_all()
            if self._sel is not None:
                self._sel.close()

    def _begin_phase(self, name: str) -> None:
        self.phase = name
        self.phase_start = time.monotonic()
        self.phase_all_up = None
        self.phase_first_up = None
        self._all_up.clear()

    def _loop(self) -> None:
        sel = self._sel
        assert sel is not None
        while not self._stopping:
            now = time.monotonic()
            self._pump_queue(now)
            timeout = 0.5
            if self._timers:
                timeout = max(0.0, min(timeout, self._timers[0][0] - now))
            events = sel.select(timeout)
            now = time.monotonic()
            self.loop_turns += 1
            for key, mask in events:
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    self._run_commands()
                    continue
                c = self.conns[key.data]
                if c.sock is None or c.fd != key.fd:
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._writable(c, now)
                if mask & selectors.EVENT_READ and c.sock is not None:
                    self._readable(c, now)
            self._run_timers(time.monotonic())
            with self._changed:
                self._changed.notify_all()

    def _run_commands(self) -> None:
        while self._cmds:
            name, arg = self._cmds.popleft()
            if name == "stop":
                self._stopping = True
            elif name == "storm":
                self._storm()
                arg.set()

    def _storm(self) -> None:
        self._begin_phase("storm")
        now = time.monotonic()
        linger = struct.pack("ii", 1, 0)
        self._queue.clear()
        for c in self.conns:
            if c.sock is not None:
                with contextlib.suppress(OSError):
                    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                self.storm_closed += 1
            self._reset(c)
            c.attempt = 0
            self._schedule_reconnect(c, now)

    # ------------------------------------------------------------------ timers
    def _timer(self, when: float, kind: int, c: _Conn) -> None:
        self._tseq += 1
        heapq.heappush(self._timers, (when, self._tseq, kind, c.idx, c.gen))

    def _run_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, kind, idx, gen = heapq.heappop(timers)
            c = self.conns[idx]
            if gen != c.gen:
                continue  # the connection it was for is gone
            lag = now - when
            self.loop_max_lag_s = max(self.loop_max_lag_s, lag)
            if kind == T_CONNECT:
                self._queue.append(c.idx)
            elif kind == T_HANDSHAKE:
                if c.state in (CONNECTING, CHALLENGE, WELCOME):
                    self._fail(c, "timeout", now)
            elif kind == T_SESSION:
                self._session_timer(c, now)
            elif kind == T_TRAFFIC and c.state == UP:
                if not self.traffic_paused:
                    pkt = icmp_echo(c.spec.address, self.traffic_dst, c.seq)
                    self._send_app(c, bytes(c.vnet) + pkt if c.vnet else pkt, now)
                    c.seq += 1
                    self.packets_tx += 1
                self._timer(now + self.traffic_interval_s, T_TRAFFIC, c)

    def _session_timer(self, c: _Conn, now: float) -> None:
        if c.state != UP:
            return
        heard = c.last_rx
        idle = now - c.last_tx
        if c.acks is not None:  # a quiet BGW: its ACKs are read when our keepalive is due
            if idle >= self.keepalive_s and c.sock is not None:
                with contextlib.suppress(OSError, MptcpFallback):
                    info = mptcp_info(c.sock)
                    c.acks.reading(now, c.last_tx, info.write_seq, info.snd_una)
            heard = max(heard, c.acks.alive_at)
        if now - heard >= self.dead_after_s:
            self._drop(c, "keepalive_timeout", now)
            return
        if idle >= self.keepalive_s:
            self.keepalive_late_max_s = max(self.keepalive_late_max_s, idle - self.keepalive_s)
            self._send_app(
                c, framing.encode_control(framing.ControlType.KEEPALIVE, vnet_hdr_len=c.vnet), now
            )
            self.keepalives_tx += 1
        self._timer(min(c.last_tx + self.keepalive_s, heard + self.dead_after_s), T_SESSION, c)

    # ------------------------------------------------------------------ connections
    def _pump_queue(self, now: float) -> None:
        while self._queue and self._inflight < self.max_inflight:
            c = self.conns[self._queue.popleft()]
            if c.state == IDLE and c.sock is None:
                self._connect(c, now)

    def _connect(self, c: _Conn, now: float) -> None:
        assert self._sel is not None
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
        except OSError as exc:
            self.failures[f"socket_{errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
            self._schedule_reconnect(c, now)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sock, c.fd, c.state = sock, sock.fileno(), CONNECTING
        c.gen += 1
        c.rbuf.clear()
        c.out.clear()
        self._inflight += 1
        err = sock.connect_ex(self.target)
        if err not in (0, errno.EINPROGRESS):
            self._fail(c, f"connect_{errno.errorcode.get(err, err)}", now)
            return
        self._sel.register(c.fd, selectors.EVENT_WRITE, c.idx)
        self._timer(now + self.handshake_timeout_s, T_HANDSHAKE, c)

    def _writable(self, c: _Conn, now: float) -> None:
        assert c.sock is not None and self._sel is not None
        if c.state == CONNECTING:
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(c, f"connect_{errno.errorcode.get(err, err)}", now)
                return
            c.state = CHALLENGE
            self._sel.modify(c.fd, selectors.EVENT_READ, c.idx)
            if self.tls_dir is not None:
                self._start_tls(c, now)
            return
        self._flush(c, now)

    def _start_tls(self, c: _Conn, now: float) -> None:
        """CLAIM, then the ClientHello; the BGW's answer arrives in ``_tls_handshake``."""
        ctx = self._ctx.get(c.idx)
        if ctx is None:
            assert self.tls_dir is not None
            base = Path(self.tls_dir)
            ctx = tlsmod.client_context(
                TlsSettings(
                    str(base / "ca.crt"),
                    str(base / f"{c.spec.id}.crt"),
                    str(base / f"{c.spec.id}.key"),
                )
            )
            self._ctx[c.idx] = ctx
        c.tls = tlsmod.TlsChannel(ctx, server_side=False, server_hostname=self.bgw_name)
        c.tls_up = False
        c.reader = hs.MessageReader((hs.MsgType.ACCEPT, hs.MsgType.REJECT))
        c.tls.handshake()
        c.state = WELCOME
        self._send(c, hs.encode_claim(c.spec.id) + c.tls.take(), now)

    def _tls_handshake(self, c: _Conn, data: bytes, now: float) -> None:
        tls, reader = c.tls, c.reader
        assert tls is not None and reader is not None
        if data.startswith(hs.MAGIC) and not c.tls_up and not c.rbuf:
            raise hs.HandshakeError("rejected", hs.decode_reject(data[hs.HEADER.size :])[:60])
        tls.feed(data)
        if not c.tls_up:
            c.tls_up = tls.handshake()
            out = tls.take()
            if c.tls_up:
                tls.write(hs.encode_features(hs.MsgType.OFFER, self.offer))
                out += tls.take()
            if out:
                self._send(c, out, now)
            if not c.tls_up:
                return
        buf = memoryview(bytearray(hs.HEADER.size + hs.MAX_BODY))
        while True:
            n = tls.read_into(buf[: reader.wants()])
            if n == 0:
                raise hs.HandshakeError("closed", "the BGW ended TLS")
            if n < 0:
                return
            got = reader.add(bytes(buf[:n]))
            if got is not None:
                break
        mtype, body = got
        if mtype == hs.MsgType.REJECT:
            raise hs.HandshakeError("rejected", hs.decode_reject(body)[:60])
        features = hs.decode_features(body)
        c.vnet = VNET_HDR_LEN if features & self.offer & hs.Feature.VNET_HDR else 0
        self._up(c, now, bool(features & self.offer & hs.Feature.QUIET_BGW))
        rest = memoryview(bytearray(65536))
        n = tls.read_into(rest)
        if n > 0:
            assert c.parser is not None
            self._frames(c, c.parser.feed(bytes(rest[:n])))

    def _send_app(self, c: _Conn, data: bytes, now: float) -> None:
        """Tunnel data (keepalives, packets): inside TLS when the session has it."""
        if c.tls is not None:
            try:
                c.tls.write(data)
            except tlsmod.TlsError as exc:
                self._drop(c, exc.reason, now)
                return
            data = c.tls.take()
        self._send(c, data, now)

    def _send(self, c: _Conn, data: bytes, now: float) -> None:
        c.last_tx = now
        if c.out:
            c.out += data
            return
        try:
            n = c.sock.send(data) if c.sock is not None else 0
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._lost(c, _reason(exc), now)
            return
        if n < len(data):
            c.out += data[n:]
            if self._sel is not None and c.sock is not None:
                self._sel.modify(c.fd, selectors.EVENT_READ | selectors.EVENT_WRITE, c.idx)

    def _flush(self, c: _Conn, now: float) -> None:
        assert c.sock is not None and self._sel is not None
        try:
            n = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(c, _reason(exc), now)
            return
        del c.out[:n]
        if not c.out:
            self._sel.modify(c.fd, selectors.EVENT_READ, c.idx)

    def _readable(self, c: _Conn, now: float) -> None:
        sock = c.sock
        assert sock is not None
        try:
            if c.state == UP:
                assert c.parser is not None
                if c.tls is not None:
                    room = c.parser.recv_buffer()
                    data = sock.recv(max(1, len(room) - c.tls.incoming.pending))
                    if not data:
                        self._drop(c, "closed_by_bgw", now)
                        return
                    c.tls.feed(data)
                    n = c.tls.read_into(room)
                    if n <= 0:
                        if n == 0:
                            self._drop(c, "tls_closed", now)
                        return
                else:
                    n = sock.recv_into(c.parser.recv_buffer())
                    if n == 0:
                        self._drop(c, "closed_by_bgw", now)
                        return
                c.last_rx = now
                self._frames(c, c.parser.received(n))
                return
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except framing.FrameError as exc:
            self._drop(c, f"frame_{exc.reason}", now)
            return
        except tlsmod.TlsError as exc:
            self._drop(c, f"tls_{exc.reason}", now)
            return
        except OSError as exc:
            self._lost(c, _reason(exc), now)
            return
        if not data:
            self._fail(c, "closed_in_handshake", now)
            return
        try:
            if c.tls is not None:
                self._tls_handshake(c, data, now)
            else:
                c.rbuf += data
                self._handshake(c, now)
        except hs.HandshakeError as exc:
            self._fail(c, exc.reason, now)
        except tlsmod.TlsError as exc:
            self._fail(c, exc.reason, now)

    def _handshake(self, c: _Conn, now: float) -> None:
        while (
            c.sock is not None and c.state in (CHALLENGE, WELCOME) and len(c.rbuf) >= hs.HEADER.size
        ):
            mtype, length = hs.parse_header(bytes(c.rbuf[: hs.HEADER.size]))
            if len(c.rbuf) < hs.HEADER.size + length:
                return
            body = bytes(c.rbuf[hs.HEADER.size : hs.HEADER.size + length])
            del c.rbuf[: hs.HEADER.size + length]
            if mtype == hs.MsgType.REJECT:
                self._fail(c, f"rejected: {hs.decode_reject(body)[:60]}", now)
                return
            if c.state == CHALLENGE:
                if mtype != hs.MsgType.CHALLENGE:
                    raise hs.HandshakeError("bad_message", f"expected CHALLENGE, got {mtype.name}")
                c.server_nonce = hs.decode_challenge(body)
                c.client_nonce = hs.new_nonce()
                c.state = WELCOME
                self._send(
                    c,
                    hs.encode_hello(
                        c.spec.id, c.spec.secret, c.server_nonce, c.client_nonce, self.offer
                    ),
                    now,
                )
                continue
            if mtype != hs.MsgType.WELCOME:
                raise hs.HandshakeError("bad_message", f"expected WELCOME, got {mtype.name}")
            welcome = hs.decode_welcome(
                body, c.spec.id, c.spec.secret, c.server_nonce, c.client_nonce
            )
            c.vnet = VNET_HDR_LEN if welcome.features & self.offer & hs.Feature.VNET_HDR else 0
            self._up(c, now, bool(welcome.features & self.offer & hs.Feature.QUIET_BGW))
            if c.rbuf:  # stream bytes right behind the WELCOME
                assert c.parser is not None
                try:
                    self._frames(c, c.parser.feed(bytes(c.rbuf)))
                except framing.FrameError as exc:
                    self._drop(c, f"frame_{exc.reason}", now)
                c.rbuf.clear()

    def _frames(self, c: _Conn, frames: list[Any]) -> None:
        for f in frames:
            if isinstance(f, framing.ControlFrame):
                if f.type == framing.ControlType.KEEPALIVE:
                    self.keepalives_rx += 1
                else:
                    self.frames_ignored += 1
            else:
                self.packets_rx += 1
                if _is_echo_reply(memoryview(f)[c.vnet :]):
                    self.echo_replies_rx += 1
                    c.events += 1

    def _up(self, c: _Conn, now: float, quiet: bool) -> None:
        c.state = UP
        c.acks = AckClock(now) if quiet else None
        self.quiet_sessions += quiet
        c.attempt = 0
        c.parser = framing.StreamParser(
            max_frame_bytes=self.max_frame_bytes, vnet_hdr_len=c.vnet, bufsize=0
        )
        if c.vnet:
            self.offload_sessions += 1
        c.last_rx = c.last_tx = now
        self._inflight -= 1
        self.handshakes_ok += 1
        self.n_up += 1
        if self.phase_first_up is None:
            self.phase_first_up = now
        self._timer(now + self.keepalive_s, T_SESSION, c)
        if c.traffic:
            self._timer(now + self._rng.uniform(0, self.traffic_interval_s), T_TRAFFIC, c)
        if self.n_up == len(self.conns):
            if self.phase_all_up is None:  # the first time in this phase
                self.phase_all_up = now
            self._all_up.set()

    def _lost(self, c: _Conn, reason: str, now: float) -> None:
        if c.state == UP:
            self._drop(c, reason, now)
        else:
            self._fail(c, reason, now)

    def _fail(self, c: _Conn, reason: str, now: float) -> None:
        """A connect or handshake that did not make it: count, close, retry later."""
        self.failures[reason] += 1
        self._reset(c)
        self._schedule_reconnect(c, now)

    def _drop(self, c: _Conn, reason: str, now: float) -> None:
        """An established session that ended without us asking."""
        self.drops[reason] += 1
        self.drops_by_phase[self.phase] += 1
        self._reset(c)
        self._schedule_reconnect(c, now)

    def _reset(self, c: _Conn) -> None:
        if c.state == UP:
            self.n_up -= 1
            self._all_up.clear()
        elif c.state != IDLE:
            self._inflight -= 1
        if c.sock is not None:
            if self._sel is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(c.fd)
            c.sock.close()
        c.sock, c.fd, c.state, c.parser = None, -1, IDLE, None
        c.tls, c.reader, c.tls_up = None, None, False
        c.gen += 1
        c.out.clear()
        c.rbuf.clear()

    def _schedule_reconnect(self, c: _Conn, now: float) -> None:
        if not self.reconnect or self._stopping:
            return
        ceiling = min(self.reconnect_max_s, self.reconnect_initial_s * 2**c.attempt)
        c.attempt += 1
        self._timer(now + self._rng.uniform(ceiling / 2, ceiling), T_CONNECT, c)

    def _close_all(self) -> None:
        for c in self.conns:
            if c.sock is not None:
                self._reset(c)


def _reason(exc: OSError) -> str:
    return str(errno.errorcode.get(exc.errno or 0, "oserror")).lower()


# ---------------------------------------------------------------------------- command line


def _target(value: str, port: int) -> tuple[str, int]:
    host, sep, p = value.rpartition(":")
    return (host, int(p)) if sep else (value, port)


def run_phases(
    lg: LoadGen,
    *,
    bgw_pids: list[int],
    setup_timeout: float,
    idle_window_s: float,
    storm: bool,
    storm_timeout: float,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Setup (all up), BGW resources, idle window, storm: the measurement both CLIs share."""
    out: dict[str, Any] = {"cpes": len(lg.conns)}
    lg.start()
    try:
        setup_s = lg.wait_all_up(setup_timeout)
        out["setup_s"] = round(setup_s, 3)
        out["setup_per_s"] = round(len(lg.conns) / setup_s, 1) if setup_s > 0 else None
        log(f"loadgen: {len(lg.conns)} sessions up in {setup_s:.1f} s")
    except TimeoutError as exc:
        out["error"] = f"setup: {exc}"
        log(f"loadgen: {exc}")
    out["sessions"] = lg.n_up
    if bgw_pids:
        out["bgw"] = bgw_usage(bgw_pids)
    if idle_window_s > 0 and "error" not in out:
        drops0 = sum(lg.drops.values())
        if bgw_pids:
            out |= idle_and_traffic_cpu(lg, bgw_pids, idle_window_s)
        else:
            time.sleep(idle_window_s)
        out["idle_window_s"] = idle_window_s
        out["idle_drops"] = sum(lg.drops.values()) - drops0
        log(
            f"loadgen: idle window {idle_window_s:g} s: BGW CPU {out.get('idle_cpu_pct')} %"
            f" (keepalives only), {out.get('traffic_cpu_pct')} % with the sample pings"
        )
    if storm and "error" not in out:
        try:
            out["storm_s"] = round(lg.storm(storm_timeout), 3)
            log(f"loadgen: storm: all {len(lg.conns)} back in {out['storm_s']} s")
        except TimeoutError as exc:
            out["error"] = f"storm: {exc}"
    out["loadgen"] = lg.stats()
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m run_bench.loadgen", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def fleet_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--n", type=int, required=True, help="number of CPEs")
        sp.add_argument("--first", type=int, default=0, help="number of the first CPE")
        sp.add_argument("--prefix-base", default=DEFAULT_PREFIX_BASE)
        sp.add_argument("--prefix-len", type=int, default=30)
        sp.add_argument("--seed", default=DEFAULT_SEED, help="secrets are derived from seed and id")
        sp.add_argument("--keepalive-s", type=float, default=10.0)
        sp.add_argument("--port", type=int, default=7440)

    c = sub.add_parser("config", help="write a BGW config for N CPEs")
    fleet_args(c)
    c.add_argument("--listen", required=True, help="bgw.listen_address")
    c.add_argument("--out", required=True)
    c.add_argument("--workers", type=int, default=None)
    c.add_argument("--offload", default=None)
    c.add_argument("--metrics-listen", default="127.0.0.1:9477")

    def run_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--traffic-every", type=int, default=10, help="every k-th CPE pings (0: none)"
        )
        sp.add_argument("--max-inflight", type=int, default=256)
        sp.add_argument("--setup-timeout", type=float, default=300.0)
        sp.add_argument("--idle-window", type=float, default=20.0, help="seconds; 0 skips")
        sp.add_argument("--storm", action="store_true", help="drop all at once, time the return")
        sp.add_argument("--storm-timeout", type=float, default=120.0)
        sp.add_argument("--json", default=None, help="also write the report here")
        sp.add_argument(
            "--offer-offload", action="store_true", help="offer VNET_HDR (TUN offload) in HELLO"
        )
        sp.add_argument("--tls", action="store_true", help="mutual TLS 1.3 (a throw-away PKI)")
        sp.add_argument(
            "--no-quiet",
            action="store_true",
            help="do not offer QUIET_BGW: the BGW sends keepalives too (the behaviour before it)",
        )

    r = sub.add_parser("run", help="play N CPEs against a running BGW")
    fleet_args(r)
    run_args(r)
    r.add_argument("--target", required=True, help="BGW address[:port]")
    r.add_argument("--netns", default=None, help="enter this network namespace first")
    r.add_argument("--bgw-pid", type=int, action="append", default=[], help="BGW PID (repeatable)")
    r.add_argument("--traffic-dst", default=None, help="echo target (default: the BGW address)")

    f = sub.add_parser("fleet", help="namespaces + BGW + run, all cleaned up (mtlab.fleetlab)")
    fleet_args(f)
    run_args(f)
    f.add_argument("--workers", type=int, default=None)
    f.add_argument("--offload", default=None)
    f.add_argument("--bgw-start-timeout", type=float, default=600.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cpes = fleet(args.n, args.first, args.prefix_base, args.prefix_len, args.seed)
    if args.cmd == "config":
        write_bgw_config(
            args.out,
            cpes,
            args.listen,
            port=args.port,
            keepalive_s=args.keepalive_s,
            workers=args.workers,
            offload=args.offload,
            metrics_listen=args.metrics_listen,
        )
        print(args.out)
        return 0
    if args.cmd == "run":
        lg = LoadGen(
            cpes,
            _target(args.target, args.port),
            netns=args.netns,
            keepalive_s=args.keepalive_s,
            traffic_every=args.traffic_every,
            traffic_dst=args.traffic_dst,
            max_inflight=args.max_inflight,
            offer_offload=args.offer_offload,
            offer_quiet=not args.no_quiet,
        )
        try:
            out = run_phases(
                lg,
                bgw_pids=args.bgw_pid,
                setup_timeout=args.setup_timeout,
                idle_window_s=args.idle_window,
                storm=args.storm,
                storm_timeout=args.storm_timeout,
            )
        finally:
            lg.stop()
    else:
        import tempfile

        from mtlab.fleetlab import FleetLab

        pki_tmp = tempfile.TemporaryDirectory(prefix="mt-lg-pki-") if args.tls else None
        tls_dir = make_pki(pki_tmp.name, cpes) if pki_tmp is not None else None
        with FleetLab() as fl:
            fl.start_bgw(
                bgw_config(
                    cpes,
                    fl.bgw_addr,
                    port=args.port,
                    keepalive_s=args.keepalive_s,
                    workers=args.workers,
                    offload=args.offload,
                    tls_dir=tls_dir,
                ),
                nofile=max(65536, 8 * args.n + 1024),
            )
            fl.wait_bgw_ready(args.bgw_start_timeout)
            lg = LoadGen(
                cpes,
                (fl.bgw_addr, args.port),
                netns=fl.ns_gen,
                keepalive_s=args.keepalive_s,
                traffic_every=args.traffic_every,
                max_inflight=args.max_inflight,
                offer_offload=args.offer_offload,
                offer_quiet=not args.no_quiet,
                tls_dir=tls_dir,
            )
            try:
                out = run_phases(
                    lg,
                    bgw_pids=fl.bgw_pids(),
                    setup_timeout=args.setup_timeout,
                    idle_window_s=args.idle_window,
                    storm=args.storm,
                    storm_timeout=args.storm_timeout,
                )
            finally:
                lg.stop()
            out["bgw_start_s"] = fl.bgw_ready_s
            out["stop_s"], out["stop_rc"] = fl.stop_bgw(timeout=60)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 1 if "error" in out else 0


if __name__ == "__main__":
    sys.exit(main())
