"""Prometheus metrics of the agent (one registry, in the process that serves them).

BGW workers keep plain integer counters per session and report their increments to the control
process once a second (``apply_session_stats``); only the control process touches this registry, so
counters stay correct when a worker dies and is restarted.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REGISTRY = CollectorRegistry()

SESSION_UP = Gauge(
    "mptcp_tunnel_session_up",
    "1 while the CPE's MPTCP session is established",
    ["cpe"],
    registry=REGISTRY,
)
SESSION_OFFLOAD = Gauge(
    "mptcp_tunnel_session_offload",
    "1 while the CPE's session carries GSO super-packets (TUN offload negotiated)",
    ["cpe"],
    registry=REGISTRY,
)
SUBFLOWS = Gauge(
    "mptcp_tunnel_subflows",
    "Established subflows of the CPE's MPTCP connection",
    ["cpe"],
    registry=REGISTRY,
)
PACKETS = Counter(
    "mptcp_tunnel_packets",
    "IP packets carried (tx = TUN to tunnel, rx = tunnel to TUN); a GSO super-packet counts once",
    ["cpe", "direction"],
    registry=REGISTRY,
)
BYTES = Counter("mptcp_tunnel_bytes", "IP bytes carried", ["cpe", "direction"], registry=REGISTRY)
BATCHES = Counter(
    "mptcp_tunnel_batches",
    "sendmsg calls into the tunnel (PtoS batches)",
    ["cpe"],
    registry=REGISTRY,
)
TUN_IO = Counter(
    "mptcp_tunnel_tun_io",
    "TUN read/write calls (op=read|write); bytes per call = tun_io_bytes / tun_io",
    ["cpe", "op"],
    registry=REGISTRY,
)
TUN_IO_BYTES = Counter(
    "mptcp_tunnel_tun_io_bytes",
    "Bytes moved by TUN read/write calls, virtio-net header included",
    ["cpe", "op"],
    registry=REGISTRY,
)
FRAME_ERRORS = Counter(
    "mptcp_tunnel_frame_errors",
    "Sessions ended by a frame that failed validation",
    ["reason"],
    registry=REGISTRY,
)
HANDSHAKE_FAILURES = Counter(
    "mptcp_tunnel_handshake_failures",
    "Connections refused during the handshake",
    ["reason"],
    registry=REGISTRY,
)
ACCEPT_ERRORS = Counter(
    "mptcp_tunnel_accept_errors",
    "accept() failures on the BGW listener (e.g. EMFILE); the listener pauses briefly and carries on",
    ["reason"],
    registry=REGISTRY,
)
WORKER_RESTARTS = Counter(
    "mptcp_tunnel_worker_restarts", "BGW worker processes restarted after dying", registry=REGISTRY
)
SPOOFED_DROPS = Counter(
    "mptcp_tunnel_spoofed_drops",
    "Packets dropped: source outside the CPE's prefixes",
    ["cpe"],
    registry=REGISTRY,
)
QUEUE_DROPS = Counter(
    "mptcp_tunnel_queue_drops",
    "Packets dropped because the tunnel's queue was full",
    ["cpe"],
    registry=REGISTRY,
)
AQM_SIGNALS = Counter(
    "mptcp_tunnel_aqm_signals",
    "Packets CoDel dropped or ECN-marked (CE) because the tunnel's queue delay stayed above target",
    ["cpe", "action"],
    registry=REGISTRY,
)
TUN_WRITE_ERRORS = Counter(
    "mptcp_tunnel_tun_write_errors", "Packets the TUN device refused", ["cpe"], registry=REGISTRY
)
STALE_GSO_DROPS = Counter(
    "mptcp_tunnel_stale_gso_drops",
    "Super-packets dropped because they were queued before offload was switched off",
    ["cpe"],
    registry=REGISTRY,
)
CC_RESTARTS = Counter(
    "mptcp_tunnel_cc_restarts",
    "Congestion control restarted on a session's subflows because a standby link took the traffic over",
    ["cpe"],
    registry=REGISTRY,
)
SHAPE_CHANGES = Counter(
    "mptcp_tunnel_shape_changes",
    "Shaper rate changes of a session (cpe.shape_share: the CPE's carrying links changed)",
    ["cpe"],
    registry=REGISTRY,
)
SHAPE_RATE = Gauge(
    "mptcp_tunnel_shape_rate_bps",
    "CPE with cpe.shape_share: the shaper's rate by direction (down: what the BGW was asked for)",
    ["direction"],
    registry=REGISTRY,
)
SESSIONS_ENDED = Counter(
    "mptcp_tunnel_sessions_ended", "Sessions ended, by reason", ["cpe", "reason"], registry=REGISTRY
)
RECONNECTS = Counter("mptcp_tunnel_reconnects", "CPE connection attempts after the first", registry=REGISTRY)
STREAM_STALLS = Counter(
    "mptcp_tunnel_stream_stalls",
    "Sessions ended because bytes kept arriving without a complete frame (a stream out of step)",
    registry=REGISTRY,
)
FALLBACKS = Counter("mptcp_tunnel_fallbacks", "Connections that fell back to plain TCP", registry=REGISTRY)
LINK_UP = Gauge(
    "mptcp_tunnel_link_up",
    "CPE: 1 while the access link is usable (carrier and probe answers), 0 while its endpoint is out",
    ["link"],
    registry=REGISTRY,
)
LINK_CHANGES = Counter(
    "mptcp_tunnel_link_changes",
    "CPE: access link state changes (state=down|up)",
    ["link", "state"],
    registry=REGISTRY,
)
SUBFLOW_BYTES = Counter(
    "mptcp_tunnel_subflow_bytes",
    "CPE: bytes on the link's subflows (direction=sent|received; sent counts retransmissions)",
    ["link", "direction"],
    registry=REGISTRY,
)
SUBFLOW_RETRANS = Counter(
    "mptcp_tunnel_subflow_retransmits",
    "CPE: segments retransmitted on the link's subflows",
    ["link"],
    registry=REGISTRY,
)
SUBFLOW_RTT = Gauge(
    "mptcp_tunnel_subflow_rtt_seconds", "CPE: smoothed RTT of the link's subflow", ["link"], registry=REGISTRY
)
SUBFLOW_CWND = Gauge(
    "mptcp_tunnel_subflow_cwnd",
    "CPE: congestion window of the link's subflow, in segments",
    ["link"],
    registry=REGISTRY,
)
SUBFLOW_UP = Gauge(
    "mptcp_tunnel_subflow_established", "CPE: established subflows on the link", ["link"], registry=REGISTRY
)
SUBFLOW_BACKUP = Gauge(
    "mptcp_tunnel_subflow_backup",
    "CPE: 1 when the link's endpoint has the backup flag (MP_PRIO)",
    ["link"],
    registry=REGISTRY,
)
POLICY_CELLULAR_ACTIVE = Gauge(
    "mptcp_tunnel_policy_cellular_active",
    "CPE: 1 while cellular links may carry data by policy (aggregate; overflow joined), 0 while backup",
    registry=REGISTRY,
)
POLICY_CHANGES = Counter(
    "mptcp_tunnel_policy_changes",
    "CPE: overflow decisions (change=join|leave)",
    ["change"],
    registry=REGISTRY,
)

CAP_USED = Gauge(
    "mptcp_tunnel_cap_used_bytes",
    "CPE: bytes the capped link carried in the current period (interface rx+tx, all overheads)",
    ["link"],
    registry=REGISTRY,
)
CAP_LIMIT = Gauge(
    "mptcp_tunnel_cap_limit_bytes", "CPE: the link's data cap per period", ["link"], registry=REGISTRY
)
CAP_SPENT = Gauge(
    "mptcp_tunnel_cap_spent",
    "CPE: 1 while the link's cap is spent (backup flag: it carries traffic only while the others are down)",
    ["link"],
    registry=REGISTRY,
)
CAP_END = Gauge(
    "mptcp_tunnel_cap_period_end_timestamp_seconds",
    "CPE: when the link's current cap period ends (Unix time)",
    ["link"],
    registry=REGISTRY,
)


def apply_session_stats(cpe: str, deltas: Sequence[int]) -> None:
    """Add a session's counter increments (engine.session STAT_NAMES order) to the registry."""
    if not deltas:
        return
    tx_p, tx_b, rx_p, rx_b, batches, spoofed, qdrops, tun_err, rd, rd_b, wr, wr_b = deltas[:12]
    stale, adrops, amarks, cc, shapes = deltas[12:]
    if tx_p or tx_b:
        PACKETS.labels(cpe, "tx").inc(tx_p)
        BYTES.labels(cpe, "tx").inc(tx_b)
    if rx_p or rx_b:
        PACKETS.labels(cpe, "rx").inc(rx_p)
        BYTES.labels(cpe, "rx").inc(rx_b)
    if batches:
        BATCHES.labels(cpe).inc(batches)
    if spoofed:
        SPOOFED_DROPS.labels(cpe).inc(spoofed)
    if qdrops:
        QUEUE_DROPS.labels(cpe).inc(qdrops)
    if tun_err:
        TUN_WRITE_ERRORS.labels(cpe).inc(tun_err)
    if rd:
        TUN_IO.labels(cpe, "read").inc(rd)
        TUN_IO_BYTES.labels(cpe, "read").inc(rd_b)
    if wr:
        TUN_IO.labels(cpe, "write").inc(wr)
        TUN_IO_BYTES.labels(cpe, "write").inc(wr_b)
    if stale:
        STALE_GSO_DROPS.labels(cpe).inc(stale)
    if adrops:
        AQM_SIGNALS.labels(cpe, "drop").inc(adrops)
    if amarks:
        AQM_SIGNALS.labels(cpe, "mark").inc(amarks)
    if cc:
        CC_RESTARTS.labels(cpe).inc(cc)
    if shapes:
        SHAPE_CHANGES.labels(cpe).inc(shapes)


def serve(listen: tuple[str, int] | None) -> None:
    if listen is not None:
        start_http_server(listen[1], addr=listen[0], registry=REGISTRY)
