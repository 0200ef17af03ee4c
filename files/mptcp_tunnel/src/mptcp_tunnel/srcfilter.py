"""Anti-spoofing on the BGW (sans-I/O): a CPE may only send from its own prefixes."""

from __future__ import annotations

from collections.abc import Iterable

from mptcp_tunnel.config import IPNetwork


class SourceFilter:
    def __init__(self, prefixes: Iterable[IPNetwork], vnet_hdr_len: int = 0) -> None:
        self.v = vnet_hdr_len
        self.v4 = [(int(n.network_address), int(n.netmask)) for n in prefixes if n.version == 4]
        self.v6 = [(int(n.network_address), int(n.netmask)) for n in prefixes if n.version == 6]

    def allows(self, packet: bytes | memoryview) -> bool:
        """True when the packet's source address lies in one of the prefixes."""
        b = self.v
        if packet[b] >> 4 == 4:
            src = int.from_bytes(packet[b + 12 : b + 16], "big")
            return any(src & mask == net for net, mask in self.v4)
        src = int.from_bytes(packet[b + 8 : b + 24], "big")
        return any(src & mask == net for net, mask in self.v6)
