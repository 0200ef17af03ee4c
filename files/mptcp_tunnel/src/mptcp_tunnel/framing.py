"""The tunnel's byte stream after the handshake (sans-I/O).

The stream is back-to-back frames, exactly as in the paper: whole IP packets, each delimited by its own
header (IPv4 total length; IPv6 40 + payload length). When TUN offload is negotiated, every frame is
preceded by a fixed-size virtio-net header that rides through unchanged.

Anything that is not an IP packet is a *control frame*, recognisable because the first nibble of its
body is 0 (an IP packet's is 4 or 6):

    body = type (1 byte, 0x01..0x0f) | reserved (1 byte, 0) | payload length (2 bytes, BE) | payload

Control frames of an unknown type are skipped, so newer peers can add types. Everything else that does
not validate raises FrameError; the session that received it ends, nothing else is affected.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

IPV4_MIN_HEADER = 20
IPV6_HEADER = 40
CONTROL_HEADER = 4
# Enough bytes to know any frame's length: IPv6 payload length sits at bytes 4..5 of the body.
LENGTH_PREFIX = 6


class ControlType(enum.IntEnum):
    KEEPALIVE = 0x01
    # The sender's traffic moved onto links that were standing by (a failover to a backup link): the
    # receiver restarts its own congestion control too (mptcp.restart_bbr). Older peers skip it.
    PATH_CHANGE = 0x02
    # The CPE's links changed: the rate its downstream should be shaped at (shaping.py). Older peers
    # skip it.
    SHAPE_RATE = 0x03


class FrameError(Exception):
    """A frame that fails validation. ``reason`` is a short, stable label used in metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class ControlFrame:
    type: int
    payload: bytes


def encode_control(ctype: int, payload: bytes = b"", vnet_hdr_len: int = 0) -> bytes:
    """A control frame; in offload mode its vnet header is all zeroes and ignored."""
    if not 0x01 <= ctype <= 0x0F:
        raise ValueError(f"control type {ctype:#x} outside 0x01..0x0f")
    return bytes(vnet_hdr_len) + struct.pack("!BBH", ctype, 0, len(payload)) + payload


class StreamParser:
    """Splits the received byte stream into frames, packets split across reads included.

    It owns its receive buffer so the I/O layer can ``recv_into`` it without copies::

        n = sock.recv_into(parser.recv_buffer())
        for frame in parser.received(n): ...

    Packets come back as memoryviews into that buffer (vnet header included, if any), valid until the
    next ``recv_buffer()`` call. ``feed(data)`` does the same for callers holding bytes (tests, tools).
    """

    def __init__(self, max_frame_bytes: int = 65535, vnet_hdr_len: int = 0, bufsize: int = 262144):
        self.max_frame_bytes = max_frame_bytes
        self.vnet_hdr_len = vnet_hdr_len
        # A whole maximal frame must always fit behind an unparsed tail.
        size = max(bufsize, 2 * (max_frame_bytes + vnet_hdr_len))
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return self._end - self._start

    def recv_buffer(self) -> memoryview:
        """Free space to receive into; moves the unparsed tail to the front first."""
        if self._start:
            tail = self._end - self._start
            self._buf[:tail] = self._buf[self._start : self._end]
            self._start, self._end = 0, tail
        return self._view[self._end :]

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | ControlFrame]:
        """Copying convenience: packets come back as bytes, safe to keep."""
        frames: list[bytes | ControlFrame] = []
        data = memoryview(data)
        while data:
            room = self.recv_buffer()
            n = min(len(room), len(data))
            room[:n] = data[:n]
            data = data[n:]
            frames.extend(f if isinstance(f, ControlFrame) else bytes(f) for f in self.received(n))
        return frames

    def received(self, nbytes: int) -> list[memoryview | ControlFrame]:
        """Account for ``nbytes`` written into ``recv_buffer()``; return the complete frames."""
        self._end += nbytes
        frames: list[memoryview | ControlFrame] = []
        pos = split_frames(self._buf, self._start, self._end, self.vnet_hdr_len, self.max_frame_bytes, frames)
        self._start = pos
        if pos == self._end:
            self._start = self._end = 0
        return frames


def split_frames(
    buf: bytearray,
    pos: int,
    end: int,
    vnet_hdr_len: int,
    max_frame_bytes: int,
    out: list[memoryview | ControlFrame],
) -> int:
    """Append the complete frames in ``buf[pos:end]`` to ``out``; return where the unparsed tail starts.

    Packets are appended as memoryviews into ``buf`` (vnet header included), known control frames as
    ControlFrame. The pure core of StoP: the engine calls it on its shared receive buffer.
    """
    view = memoryview(buf)
    v = vnet_hdr_len
    known = ControlType._value2member_map_
    while end - pos >= v + LENGTH_PREFIX or (end - pos >= v + CONTROL_HEADER and not buf[pos + v] >> 4):
        b = pos + v
        version = buf[b] >> 4
        if version == 4:
            ihl = (buf[b] & 0x0F) * 4
            length = (buf[b + 2] << 8) | buf[b + 3]
            if ihl < IPV4_MIN_HEADER:
                raise FrameError("bad_header", f"IPv4 header length {ihl} < {IPV4_MIN_HEADER}")
            if length < ihl:
                raise FrameError("short_length", f"IPv4 total length {length} < header {ihl}")
        elif version == 6:
            length = IPV6_HEADER + ((buf[b + 4] << 8) | buf[b + 5])
        elif version == 0:
            length = CONTROL_HEADER + ((buf[b + 2] << 8) | buf[b + 3])
        else:
            raise FrameError("bad_version", f"first nibble {version} is neither 4, 6 nor 0")
        if length > max_frame_bytes:
            raise FrameError("too_long", f"frame of {length} bytes > max {max_frame_bytes}")
        if end - pos < v + length:
            break
        if version:
            out.append(view[pos : b + length])
        elif buf[b] == 0:
            raise FrameError("bad_control", "control type 0")
        elif buf[b] in known:
            out.append(ControlFrame(buf[b], bytes(buf[b + CONTROL_HEADER : b + length])))
        pos = b + length
    return pos
