"""MPTCP sockets: creation, fallback detection and connection info.

Python does not export SOL_MPTCP or MPTCP_INFO; the values come from <linux/mptcp.h>.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)
SOL_MPTCP = 284
MPTCP_INFO = 1
MPTCP_INFO_FLAG_FALLBACK = 1
ENABLED_SYSCTL = Path("/proc/sys/net/mptcp/enabled")


class MptcpUnavailable(Exception):
    """The kernel cannot give us MPTCP sockets."""


class MptcpFallback(Exception):
    """A connection that was meant to be MPTCP is running as plain TCP."""


@dataclass(frozen=True)
class MptcpInfo:
    subflows: int  # established subflows, the initial one included
    bytes_sent: int
    bytes_received: int
    retransmits: int
    write_seq: int  # the data sequence number of the next byte written
    snd_una: int  # the oldest byte the peer has not data-acknowledged (== write_seq: all acked)


def mptcp_socket(family: socket.AddressFamily) -> socket.socket:
    try:
        return socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP)
    except OSError as exc:
        if exc.errno in (errno.EPROTONOSUPPORT, errno.ENOPROTOOPT, errno.EINVAL):
            if not ENABLED_SYSCTL.exists():
                hint = "this kernel has no MPTCP (CONFIG_MPTCP); use an MPTCP-capable kernel"
            else:
                hint = "MPTCP is disabled: set net.mptcp.enabled=1"
            raise MptcpUnavailable(f"cannot create an MPTCP socket ({exc.strerror}): {hint}") from None
        raise


def set_congestion_control(sock: socket.socket, name: str) -> None:
    """Per-connection congestion control (applies to every subflow); "" keeps the host default."""
    if name:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
        except OSError as exc:
            raise OSError(exc.errno, f"congestion control {name!r}: {exc.strerror}") from None


def congestion_control(sock: socket.socket) -> str:
    """The connection's congestion control (the name ``set_congestion_control`` takes)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).split(b"\0", 1)[0].decode()


def restart_bbr(sock: socket.socket) -> bool:
    """Start BBR afresh on every subflow of ``sock``; False (nothing done) under any other CC.

    A standby subflow that takes over (the backup link after a failover) has carried nothing for
    longer than BBR's 10 s min-RTT window, so BBR puts it into ProbeRTT (a window of 4 packets for
    200 ms) on its first acknowledgements: measured 0.7 Mbit/s instead of 4.5 for those 0.2 s, which
    delays the failover by as much. Re-initialising BBR stamps a fresh min RTT and starts it in
    STARTUP. Setting the same CC again is a no-op in the kernel, hence the detour through reno
    (always built in and allowed); the MPTCP socket applies both to each subflow.
    """
    if congestion_control(sock) != "bbr":
        return False
    set_congestion_control(sock, "reno")
    set_congestion_control(sock, "bbr")
    return True


SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
TCP_WMEM_SYSCTL = Path("/proc/sys/net/ipv4/tcp_wmem")
DEFAULT_WMEM_MAX = 4 << 20  # Linux's default net.ipv4.tcp_wmem maximum


@functools.cache
def wmem_max() -> int:
    """The send buffer TCP autotuning may grow to in this namespace (``net.ipv4.tcp_wmem``'s third
    value), or Linux's default when it cannot be read."""
    try:
        return int(TCP_WMEM_SYSCTL.read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return DEFAULT_WMEM_MAX


def pin_send_buffer(sock: socket.socket, size: int) -> int:
    """Fix the send buffer of ``sock`` and of every subflow (the MPTCP socket copies SO_SNDBUF to
    each, present and future) at ``size`` bytes; returns the size the kernel set.

    A subflow grows its send buffer only when the application found the MPTCP socket full (its
    SOCK_NOSPACE). An agent that keeps the unsent data small never does, so a subflow keeps the
    buffer it got at connect time, 2 x 10 segments (46 080 bytes), and the scheduler, which never
    gives data to a subflow whose buffer is full, caps it near 46 KB per round trip: 7.5-8.5
    instead of 9.5 Mbit/s on the lab's fixed link, in 5 of 12 sessions measured. The buffer is a
    limit, not an allocation: what a subflow holds stays bounded by its window and the agent's gate.
    """
    try:  # SO_SNDBUF halves the request and caps it at net.core.wmem_max; CAP_NET_ADMIN lifts that
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size // 2)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size // 2)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


def mptcp_info(sock: socket.socket) -> MptcpInfo:
    """Connection-level info; raises MptcpFallback when the connection runs as plain TCP."""
    try:
        data = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, 256)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOPROTOOPT):
            raise MptcpFallback("the connection fell back to plain TCP (MP_CAPABLE missing)") from None
        raise
    (flags,) = struct.unpack_from("=I", data, 8)
    if flags & MPTCP_INFO_FLAG_FALLBACK:
        raise MptcpFallback("the connection fell back to plain TCP")
    # struct mptcp_info (<linux/mptcp.h>): u8 subflows @0 (extra subflows), u64 write_seq @16,
    # u64 snd_una @24 (every kernel with MPTCP); u32 retransmits @44, u64 bytes_sent @56,
    # u64 bytes_received @64 (6.5+; older kernels return less and those read 0).
    write_seq, snd_una = struct.unpack_from("=QQ", data, 16) if len(data) >= 32 else (0, 0)
    retransmits = struct.unpack_from("=I", data, 44)[0] if len(data) >= 48 else 0
    sent, received = struct.unpack_from("=QQ", data, 56) if len(data) >= 72 else (0, 0)
    return MptcpInfo(
        subflows=data[0] + 1,
        bytes_sent=sent,
        bytes_received=received,
        retransmits=retransmits,
        write_seq=write_seq,
        snd_una=snd_una,
    )


MPTCP_SUBFLOW_ADDRS = 3
_SUBFLOW_DATA = struct.Struct("=IIII")  # size_subflow_data, num_subflows, size_kernel, size_user
_SUBFLOW_ADDRS_SIZE = 256  # struct mptcp_subflow_addrs: local + remote sockaddr_storage
_MAX_SUBFLOWS = 8
_libc = ctypes.CDLL(None, use_errno=True)


SIOCOUTQ = 0x5411  # bytes the kernel still holds: not yet data-acked, or unsent (MPTCP answers it)
SIOCOUTQNSD = 0x894B  # bytes not yet sent at all (MPTCP: not yet handed to a subflow)
_INT = struct.Struct("i")


def unacked_bytes(fd: int) -> int:
    """Bytes the connection still holds: sent but not yet data-acknowledged, or unsent."""
    return int(_INT.unpack(fcntl.ioctl(fd, SIOCOUTQ, b"\0\0\0\0"))[0])


def unsent_bytes(fd: int) -> int:
    """Bytes the connection has not yet handed to any subflow."""
    return int(_INT.unpack(fcntl.ioctl(fd, SIOCOUTQNSD, b"\0\0\0\0"))[0])


MPTCP_TCPINFO = 2
TCP_CA_LOSS = 4
# struct tcp_info fields read here (offsets from <linux/tcp.h>; every field up to bytes_retrans
# exists since Linux 4.19, older kernels return less and the missing fields read 0).
_TCP_INFO_SIZE = 232
_TCP_STATES = {1: "established", 2: "syn-sent", 4: "fin-wait-1", 5: "fin-wait-2", 7: "close", 8: "close-wait"}


@dataclass(frozen=True)
class SubflowInfo:
    local: str
    remote: str
    state: str
    rtt_us: int
    cwnd: int
    bytes_sent: int  # bytes_sent counts retransmissions too (tcpi_bytes_sent)
    bytes_received: int
    bytes_retrans: int
    total_retrans: int  # segments
    unacked: int
    backoff: int
    last_ack_recv_ms: int = 0  # since the subflow last received an ACK (any, duplicates too)
    segs_out: int = 0  # segments sent, pure ACKs and retransmissions too (tcpi_segs_out)
    segs_in: int = 0
    mss: int = 0  # tcpi_snd_mss


def _subflow_request(sock: socket.socket, optname: int, entry: int) -> tuple[bytes, int, int]:
    size = _SUBFLOW_DATA.size + _MAX_SUBFLOWS * entry
    buf = ctypes.create_string_buffer(_SUBFLOW_DATA.pack(_SUBFLOW_DATA.size, 0, 0, entry), size)
    length = ctypes.c_uint32(size)
    if _libc.getsockopt(sock.fileno(), SOL_MPTCP, optname, buf, ctypes.byref(length)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    _, count, _, user = _SUBFLOW_DATA.unpack_from(buf.raw)
    return buf.raw, min(count, _MAX_SUBFLOWS), user


def _sockaddr(raw: bytes, off: int) -> str:
    (family,) = struct.unpack_from("=H", raw, off)
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[off + 4 : off + 8])
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[off + 8 : off + 24])
    return ""


class SubflowWindow(NamedTuple):
    cwnd_bytes: int  # snd_cwnd * snd_mss
    srtt_us: int
    notsent: int  # bytes handed to the subflow and not yet sent (tcpi_notsent_bytes)
    stalled: bool  # in RTO recovery (backoff, or the Loss state): its data waits for reinjection


def subflow_windows(sock: socket.socket) -> list[SubflowWindow]:
    """Congestion window, smoothed RTT and unsent bytes of each established subflow."""
    infos, n, size = _subflow_request(sock, MPTCP_TCPINFO, _TCP_INFO_SIZE)
    base = _SUBFLOW_DATA.size
    out = []
    for i in range(n):
        t = infos[base + i * size : base + (i + 1) * size].ljust(_TCP_INFO_SIZE, b"\0")
        if t[0] != 1:  # TCP_ESTABLISHED
            continue
        (mss,) = struct.unpack_from("=I", t, 16)
        (rtt,) = struct.unpack_from("=I", t, 68)
        (cwnd,) = struct.unpack_from("=I", t, 80)
        (notsent,) = struct.unpack_from("=I", t, 144)
        stalled = t[1] == TCP_CA_LOSS or t[4] > 0  # tcpi_ca_state, tcpi_backoff
        out.append(SubflowWindow(cwnd * mss, rtt, notsent, stalled))
    return out


def send_mss(sock: socket.socket) -> int:
    """The connection's MSS (TCP_MAXSEG: its first subflow's); 0 where the kernel does not say."""
    try:
        return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG))
    except OSError:
        return 0


def established(infos: list[SubflowInfo]) -> int:
    """Subflows that carry data. MPTCP_INFO's own count is the path manager's plus one, wrong once the
    initial subflow was closed (the kernel keeps it listed in state close)."""
    return sum(1 for sf in infos if sf.state == "established")


def subflow_infos(sock: socket.socket) -> list[SubflowInfo]:
    """Per-subflow TCP state (MPTCP_TCPINFO) paired with addresses (MPTCP_SUBFLOW_ADDRS).

    Both lists come in the kernel's subflow order; a subflow that appears or goes between the two
    calls shows up as a length mismatch, and then only the shorter prefix is paired.
    """
    addrs, n_addr, a_size = _subflow_request(sock, MPTCP_SUBFLOW_ADDRS, _SUBFLOW_ADDRS_SIZE)
    infos, n_info, i_size = _subflow_request(sock, MPTCP_TCPINFO, _TCP_INFO_SIZE)
    out = []
    base = _SUBFLOW_DATA.size
    for i in range(min(n_addr, n_info)):
        a = base + i * a_size
        t = infos[base + i * i_size : base + (i + 1) * i_size].ljust(_TCP_INFO_SIZE, b"\0")
        state, _ca, _retr, _probes, backoff = struct.unpack_from("=BBBBB", t, 0)
        (mss,) = struct.unpack_from("=I", t, 16)
        (unacked,) = struct.unpack_from("=I", t, 24)
        (last_ack_recv,) = struct.unpack_from("=I", t, 56)
        (rtt,) = struct.unpack_from("=I", t, 68)
        (cwnd,) = struct.unpack_from("=I", t, 80)
        (total_retrans,) = struct.unpack_from("=I", t, 100)
        received, segs_out, segs_in = struct.unpack_from("=QII", t, 128)
        sent, retrans = struct.unpack_from("=QQ", t, 200)
        out.append(
            SubflowInfo(
                local=_sockaddr(addrs, a),
                remote=_sockaddr(addrs, a + 128),
                state=_TCP_STATES.get(state, str(state)),
                rtt_us=rtt,
                cwnd=cwnd,
                bytes_sent=sent,
                bytes_received=received,
                bytes_retrans=retrans,
                total_retrans=total_retrans,
                unacked=unacked,
                backoff=backoff,
                last_ack_recv_ms=last_ack_recv,
                segs_out=segs_out,
                segs_in=segs_in,
                mss=mss,
            )
        )
    return out
