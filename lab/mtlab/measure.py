"""Traffic between lab hosts: iperf3 (TCP/UDP, JSON results) and ping RTT."""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from .lab import Lab, LabError

_PORTS = iter(range(5300, 5900))


@dataclass
class IperfResult:
    mbps: float  # receiver's goodput over the measured (non-omitted) seconds
    seconds: float
    retransmits: int | None = None
    lost_pct: float | None = None  # UDP only
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def iperf3(
    lab: Lab,
    client: str,
    server: str,
    server_addr: str,
    *,
    bind: str | None = None,
    seconds: int = 10,
    omit: int = 3,
    reverse: bool = False,
    udp: bool = False,
    bitrate: str | None = None,
    length: int | None = None,
    extra: list[str] | None = None,
    wrap: list[str] | None = None,
) -> IperfResult:
    """One iperf3 test from ``client`` to an iperf3 server started in ``server``.

    The first ``omit`` seconds (slow start) are not counted; ``seconds`` more are measured.
    ``wrap`` prefixes both commands (e.g. ``["mptcpize", "run"]``).
    """
    port = next(_PORTS)
    name = f"iperf3-server-{port}"
    pre = wrap or []
    lab.popen(server, [*pre, "iperf3", "-s", "-1", "-p", str(port), "--forceflush"], name)
    try:
        deadline = time.monotonic() + 10
        while "Server listening" not in lab.log(name):
            if time.monotonic() > deadline or not lab.alive(name):
                raise LabError(f"iperf3 server in {server} did not start: {lab.log(name)[-300:]}")
            time.sleep(0.05)
        argv = [*pre, "iperf3", "-c", server_addr, "-p", str(port), "-J"]
        argv += ["-t", str(seconds), "-O", str(omit)]
        if bind:
            argv += ["-B", bind]
        if reverse:
            argv.append("-R")
        if udp:
            argv += ["-u", "-b", bitrate or "1M"]
        elif bitrate:
            argv += ["-b", bitrate]
        if length:
            argv += ["-l", str(length)]
        argv += extra or []
        res = lab.exec(client, argv, check=False, timeout=seconds + omit + 30)
        try:
            data = json.loads(res.stdout)
        except ValueError as exc:
            raise LabError(
                f"iperf3 {client}->{server_addr}: no JSON ({res.stderr[-200:]})"
            ) from exc
        if "error" in data:
            raise LabError(f"iperf3 {client}->{server_addr}: {data['error']}")
        end = data["end"]
        if udp:
            s = end["sum"]
            return IperfResult(
                s["bits_per_second"] / 1e6, s["seconds"], lost_pct=s["lost_percent"], raw=data
            )
        recv = end["sum_received"]
        return IperfResult(
            recv["bits_per_second"] / 1e6,
            recv["seconds"],
            retransmits=end["sum_sent"].get("retransmits"),
            raw=data,
        )
    finally:
        lab.stop(name, timeout=2)


def iperf3_rate_within(
    lab: Lab, client: str, server: str, server_addr: str, low: float, high: float, **kw: Any
) -> tuple[IperfResult, list[float]]:
    """``iperf3`` once more when the first rate falls outside ``low``..``high`` Mbit/s: a shared
    2-core host now and then starves one sample (a 20 Mbit/s link read 17.3 once in CI). Returns the
    last result and every rate seen, for the test's message."""
    seen: list[float] = []
    for _attempt in (1, 2):
        got = iperf3(lab, client, server, server_addr, **kw)
        seen.append(round(got.mbps, 2))
        if low <= got.mbps <= high:
            break
    return got, seen


_TIME = re.compile(r"time=([0-9.]+) ms")


def ping_rtts(
    lab: Lab, src: str, dst: str, count: int = 20, interval: float = 0.1, size: int = 56
) -> list[float]:
    """Round-trip times (ms) of ``count`` pings, user-to-user (``-U``).

    ``-U`` matters: without it ping uses the kernel's receive timestamp, taken *before* the
    NFQUEUE delayer holds the reply, and so misses the return-path delay.
    """
    res = lab.exec(
        src,
        [
            "ping",
            "-U",
            "-n",
            "-c",
            str(count),
            "-i",
            str(interval),
            "-s",
            str(size),
            "-W",
            "2",
            dst,
        ],
        check=False,
        timeout=count * (interval + 2) + 10,
    )
    return [float(m) for m in _TIME.findall(res.stdout)]


def median_rtt(lab: Lab, src: str, dst: str, count: int = 20) -> float:
    rtts = ping_rtts(lab, src, dst, count)
    if not rtts:
        raise LabError(f"no ping reply from {dst} to {src}")
    return statistics.median(rtts)
