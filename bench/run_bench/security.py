"""Security benchmarks (standalone, no netns lab): ``fuzz``, ``tls_handshakes`` and ``lockout``.

- ``fuzz``: >= 1 M frames through the stream parser (valid packets and control frames mixed
  with garbage, cut at random places) and >= 100 k garbage handshakes (CLAIM reader, HMAC
  handshake, TLS server fed junk); reports rates and crashes (an exception that is not the
  parser's own error).
- ``tls_handshakes``: full mutual TLS 1.3 handshakes in memory (the agent's TlsChannel, EC P-256
  certificates from the lab PKI); the BGW side's CPU per handshake gives handshakes/s per core.
- ``lockout``: see ``run_bench.lockout``.
"""

from __future__ import annotations

import os
import random
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from mptcp_tunnel import handshake as hs
from mptcp_tunnel import tls
from mptcp_tunnel.config import TlsSettings
from mptcp_tunnel.framing import ControlType, FrameError, StreamParser, encode_control

from run_bench.results import Progress, ScenarioResult


def _packet(rng: random.Random) -> bytes:
    size = rng.choice((20, 28, 60, 576, 1500, rng.randint(20, 1500)))
    if rng.random() < 0.8:
        return struct.pack("!BBH", 0x45, 0, size) + bytes(size - 4)
    size = max(size, 40)
    return struct.pack("!BBHHBB", 0x60, 0, 0, size - 40, 17, 64) + bytes(size - 8)


def fuzz_frames(target: int, seed: int = 1) -> dict[str, Any]:
    """Streams of valid frames with garbage spliced in; every stream ends at its first error."""
    rng = random.Random(seed)
    frames = errors = crashes = streams = 0
    keepalive = encode_control(ControlType.KEEPALIVE)
    t0 = time.process_time()
    while frames < target:
        streams += 1
        parts = [
            keepalive if rng.random() < 0.05 else _packet(rng) for _ in range(rng.randint(50, 400))
        ]
        if rng.random() < 0.5:  # garbage somewhere: random bytes, or an HTTP line
            junk = rng.choice((os.urandom(rng.randint(1, 64)), b"GET / HTTP/1.1\r\n"))
            parts.insert(rng.randrange(len(parts) + 1), junk)
        data = b"".join(parts)
        parser = StreamParser()
        pos = 0
        try:
            while pos < len(data):
                step = rng.choice((7, 1500, 9000, 65536, 65536, 262144))
                frames += len(parser.feed(data[pos : pos + step]))
                pos += step
        except FrameError:
            errors += 1
        except Exception:  # noqa: BLE001  # exactly what this benchmark counts
            crashes += 1
    cpu = time.process_time() - t0
    return {
        "frames": frames,
        "streams": streams,
        "frame_errors": errors,
        "crashes": crashes,
        "cpu_s": round(cpu, 2),
        "frames_per_s": round(frames / cpu),
    }


def fuzz_handshakes(target: int, pki_dir: Path, seed: int = 2) -> dict[str, Any]:
    """Garbage where a handshake should be: claims, HMAC HELLOs and TLS ClientHellos."""
    rng = random.Random(seed)
    ctx = tls.server_context(_settings(pki_dir, "bgw1"))
    refused = crashes = 0
    claim = hs.encode_claim("cpe1")
    t0 = time.process_time()
    for i in range(target):
        kind = i % 3
        junk = os.urandom(rng.randint(1, 600))
        try:
            if kind == 0:  # the control process's CLAIM reader (a valid prefix half the time)
                data = (claim[: rng.randint(0, len(claim))] + junk) if i % 2 else junk
                reader = hs.MessageReader((hs.MsgType.CLAIM,), hs.MAX_CLAIM_BODY)
                pos = 0
                while pos < len(data):
                    want = reader.wants()
                    got = reader.add(data[pos : pos + want])
                    pos += want
                    if got is not None:
                        hs.decode_claim(got[1])
                        break
            elif kind == 1:  # the HMAC handshake (encryption none)
                hs.ServerHandshake().receive(junk)
            else:  # a worker's TLS server, fed junk after (or instead of) a record header
                channel = tls.TlsChannel(ctx, server_side=True)
                channel.feed((b"\x16\x03\x01" + junk) if i % 2 else junk)
                channel.handshake()
            refused += 1  # incomplete counts as refused: the deadline ends it
        except (hs.HandshakeError, tls.TlsError):
            refused += 1
        except Exception:  # noqa: BLE001
            crashes += 1
    cpu = time.process_time() - t0
    return {
        "handshakes": target,
        "refused": refused,
        "crashes": crashes,
        "cpu_s": round(cpu, 2),
        "handshakes_per_s": round(target / cpu),
    }


def _settings(pki_dir: Path, stem: str) -> TlsSettings:
    return TlsSettings(
        str(pki_dir / "ca.crt"), str(pki_dir / f"{stem}.crt"), str(pki_dir / f"{stem}.key")
    )


def _make_pki(directory: Path) -> Path:
    from mtlab.pki import lab_pki

    lab_pki(directory, ["cpe1"])
    return directory


def tls_handshake_rate(seconds: float, pki_dir: Path) -> dict[str, Any]:
    """Full mutual handshakes in one process; the server side's CPU is timed on its own."""
    server_ctx = tls.server_context(_settings(pki_dir, "bgw1"))
    client_ctx = tls.client_context(_settings(pki_dir, "cpe1"))
    n = 0
    server_cpu = 0.0
    clock = time.thread_time
    t_end = time.monotonic() + seconds
    t0 = clock()
    while time.monotonic() < t_end:
        c = tls.TlsChannel(client_ctx, server_side=False, server_hostname="bgw1")
        s0 = clock()
        s = tls.TlsChannel(server_ctx, server_side=True)
        server_cpu += clock() - s0
        done_c = done_s = False
        while not (done_c and done_s):
            if not done_c:
                done_c = c.handshake()
            s.feed(c.take())
            s0 = clock()
            if not done_s:
                done_s = s.handshake()
            out = s.take()
            if done_s:
                tls.check_peer_is(s, "cpe1")
            server_cpu += clock() - s0
            if out:
                c.feed(out)
        n += 1
    total = clock() - t0
    return {
        "handshakes": n,
        "seconds": seconds,
        "pairs_per_s": round(n / total),
        "bgw_handshakes_per_core_s": round(n / server_cpu),
        "bgw_cpu_ms_per_handshake": round(1000 * server_cpu / n, 3),
        "key": "EC P-256, TLS_AES_256_GCM_SHA384",
    }


def fuzz(settings: Any, progress: Progress, save: Any) -> ScenarioResult:
    scale = 10 if settings.quick else 1
    res = ScenarioResult(
        "fuzz", {"frames_target": 1_000_000 // scale, "handshakes": 100_000 // scale}
    )
    with tempfile.TemporaryDirectory() as tmp:
        pki_dir = _make_pki(Path(tmp))
        frames = fuzz_frames(1_000_000 // scale)
        progress.step(f"fuzz frames: {frames['frames']} frames, {frames['crashes']} crashes")
        shakes = fuzz_handshakes(100_000 // scale, pki_dir)
        progress.step(f"fuzz handshakes: {shakes['handshakes']}, {shakes['crashes']} crashes")
    res.add_point("stream-parser", [], **frames)
    res.add_point("garbage-handshakes", [], **shakes)
    crashes = frames["crashes"] + shakes["crashes"]
    res.notes.append(
        f"{frames['frames']} frames at {frames['frames_per_s']}/s, {shakes['handshakes']} garbage "
        f"handshakes at {shakes['handshakes_per_s']}/s: crashes {crashes}"
    )
    return res


def tls_handshakes(settings: Any, progress: Progress, save: Any) -> ScenarioResult:
    seconds = 3.0 if settings.quick else 10.0
    res = ScenarioResult("tls_handshakes", {"seconds": seconds, "target_per_core": 1000})
    with tempfile.TemporaryDirectory() as tmp:
        point = tls_handshake_rate(seconds, _make_pki(Path(tmp)))
    progress.step(f"tls_handshakes: {point['bgw_handshakes_per_core_s']}/s per core (BGW side)")
    res.add_point("mptcp-tunnel-tls", [], **point)
    res.notes.append(
        f"BGW side {point['bgw_handshakes_per_core_s']} full handshakes/s per core "
        f"({point['bgw_cpu_ms_per_handshake']} ms CPU each; target >= 1000)"
    )
    return res
