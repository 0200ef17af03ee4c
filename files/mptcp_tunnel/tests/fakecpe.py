"""A scripted CPE for the engine tests: real MPTCP socket, real handshake, UDP packets from its prefix.

Run inside the CPE's namespace: ``python fakecpe.py CONFIG SECONDS SRC [--reconnect] [--silent]``. It
sends one IPv4/UDP packet from SRC to the BGW's echo port every 20 ms (``--silent``: no packets, a
keepalive every 0.5 s for the first 4 s, then nothing at all), parses what comes back with the agent's
own stream parser, and prints one JSON line: packets sent and received, packets whose destination is
not SRC ("foreign": another customer's), keepalives received (and in the first 4 s), connections
made, whether the BGW closed it and when (seconds after the last byte this CPE sent).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import sys
import time

from mptcp_tunnel import exchange
from mptcp_tunnel import handshake as hs
from mptcp_tunnel.config import load_config
from mptcp_tunnel.framing import ControlFrame, ControlType, FrameError, StreamParser, encode_control

ECHO = ("10.1.0.2", 9999)
SILENT_AFTER_S = 4.0  # --silent: keepalives until then, nothing after


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    length = 28 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, length, 0, 0x4000, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    csum = sum(struct.unpack("!10H", header))
    csum = (csum & 0xFFFF) + (csum >> 16)
    csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
    header = header[:10] + struct.pack("!H", csum) + header[12:]
    return header + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def connect(cfg_path: str, offer: hs.Feature) -> tuple[socket.socket, hs.Feature]:
    cpe = load_config(cfg_path).cpe
    assert cpe is not None
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    s.settimeout(5)
    s.connect(("10.1.0.2", 7440))
    features = exchange.client_handshake(s, cpe, offer)
    s.settimeout(0.02)
    return s, features


def main() -> None:
    cfg_path, seconds, src = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    reconnect = "--reconnect" in sys.argv
    silent = "--silent" in sys.argv
    before = b""  # control frames before every packet
    if "--path-change" in sys.argv:
        before = encode_control(ControlType.PATH_CHANGE)
    if "--shape-flood" in sys.argv:  # two rates in turn and a malformed one (3 bytes)
        before = b"".join(
            encode_control(ControlType.SHAPE_RATE, payload)
            for payload in (b"\x00\x00\x13\x88", b"\x00\x00\x17\x70", b"\x00\x00\x01")
        )
    offer = hs.Feature.QUIET_BGW if "--quiet" in sys.argv else hs.Feature.NONE
    own = ipaddress.ip_address(src)
    result: dict[str, float | int | bool] = {"sent": 0, "received": 0, "foreign": 0, "keepalives": 0}
    result.update({"connections": 0, "closed": False, "closed_after_s": 0.0, "after_last": 0})
    result["keepalives_while_alive"] = 0
    result["quiet"] = False  # the BGW accepted QUIET_BGW
    up_at = last_sent = time.monotonic()
    keepalive = encode_control(ControlType.KEEPALIVE)
    deadline = time.monotonic() + seconds
    sock: socket.socket | None = None
    parser = StreamParser()
    while time.monotonic() < deadline:
        if sock is None:
            try:
                sock, features = connect(cfg_path, offer)
                result["quiet"] = bool(features & hs.Feature.QUIET_BGW)
            except (OSError, hs.HandshakeError, exchange.Rejected):
                if not reconnect:
                    break
                time.sleep(0.2)
                continue
            result["connections"] += 1
            result["after_last"] = 0
            up_at = last_sent = time.monotonic()
            parser = StreamParser()
        try:
            now = time.monotonic()
            if not silent:
                sock.sendall(before + udp_packet(src, ECHO[0], 40000, ECHO[1], b"x" * 32))
                result["sent"] += 1
                last_sent = now
            elif now - up_at < SILENT_AFTER_S and now - last_sent >= 0.5:
                sock.sendall(keepalive)
                last_sent = now
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError
            for frame in parser.feed(data):
                if isinstance(frame, ControlFrame):
                    result["keepalives"] += 1
                    if time.monotonic() - up_at < SILENT_AFTER_S:
                        result["keepalives_while_alive"] += 1
                    continue
                result["received"] += 1
                result["after_last"] += 1
                if ipaddress.ip_address(bytes(frame[16:20])) != own:
                    result["foreign"] += 1
        except TimeoutError:
            continue
        except (OSError, FrameError):
            result["closed"] = True
            result["closed_after_s"] = round(time.monotonic() - last_sent, 2)
            sock.close()
            sock = None
            if not reconnect:
                break
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
