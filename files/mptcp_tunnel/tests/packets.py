"""Builders for well-formed IP packets used by the unit tests."""

from __future__ import annotations

import struct


def ipv4(payload: bytes = b"", src: str = "192.168.10.2", dst: str = "172.16.0.2", ttl: int = 64) -> bytes:
    total = 20 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        0,
        0,
        ttl,
        17,
        0,
        bytes(map(int, src.split("."))),
        bytes(map(int, dst.split("."))),
    )
    return header + payload


def ipv6(payload: bytes = b"", src: bytes = bytes(16), dst: bytes = bytes(16)) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), 17, 64, src, dst) + payload
