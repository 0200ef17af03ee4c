"""Prometheus metrics of the agent (one registry per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REGISTRY = CollectorRegistry()

SESSION_UP = Gauge(
    "mptcp_tunnel_session_up",
    "1 while the CPE's MPTCP session is established",
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
    "IP packets carried (tx = TUN to tunnel, rx = tunnel to TUN)",
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
TUN_WRITE_ERRORS = Counter(
    "mptcp_tunnel_tun_write_errors", "Packets the TUN device refused", ["cpe"], registry=REGISTRY
)
SESSIONS_ENDED = Counter(
    "mptcp_tunnel_sessions_ended", "Sessions ended, by reason", ["cpe", "reason"], registry=REGISTRY
)
RECONNECTS = Counter("mptcp_tunnel_reconnects", "CPE connection attempts after the first", registry=REGISTRY)
FALLBACKS = Counter("mptcp_tunnel_fallbacks", "Connections that fell back to plain TCP", registry=REGISTRY)


def serve(listen: tuple[str, int] | None) -> None:
    if listen is not None:
        start_http_server(listen[1], addr=listen[0], registry=REGISTRY)
