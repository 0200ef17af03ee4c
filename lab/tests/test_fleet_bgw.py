"""A BGW with a fleet: hundreds of real CPE sessions, and a file-descriptor flood (issue 7).

Each test builds its own two namespaces (``mtlab.fleetlab``: a BGW and the load generator, one
veth, no shaping), starts the real BGW agent and plays the CPEs with ``run_bench.loadgen``
(real MPTCP sockets, real handshakes, keepalives, ICMP echo through the sessions). Everything is
removed afterwards, by PID and namespace, even when a test fails. These do not use the netns lab
(``mt-client`` ...), so they may run beside it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from run_bench.loadgen import (
    LoadGen,
    bgw_config,
    bgw_usage,
    close_flood,
    fleet,
    flood,
)

from mtlab.fleetlab import FleetLab  # noqa: E402

KEEPALIVE_S = 2.0
PORT = 7440


@pytest.fixture
def fl(tmp_path: Path) -> Iterator[FleetLab]:
    lab = FleetLab(state_dir=tmp_path)
    lab.up()
    try:
        yield lab
    finally:
        lab.down()
        left = lab.leftovers()
        assert not left, f"fleet lab teardown left: {left}"


def _metrics(fl: FleetLab) -> dict[str, float]:
    res = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            fl.ns_bgw,
            "curl",
            "-sf",
            "--max-time",
            "3",
            "http://127.0.0.1:9477/metrics",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    out: dict[str, float] = {}
    for line in res.stdout.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                continue
    return out


@pytest.mark.timeout(300)
def test_bgw_holds_400_sessions_with_traffic(fl: FleetLab) -> None:
    """≥ 300 sessions (400 here) on one BGW: all up, > 1 100 fds, echo traffic on every 10th."""
    n = 400
    cpes = fleet(n)
    fl.start_bgw(bgw_config(cpes, fl.bgw_addr, port=PORT, keepalive_s=KEEPALIVE_S), nofile=65536)
    fl.wait_bgw_ready(150)
    with LoadGen(
        cpes,
        (fl.bgw_addr, PORT),
        netns=fl.ns_gen,
        keepalive_s=KEEPALIVE_S,
        traffic_every=10,
        max_inflight=64,
    ) as lg:
        try:
            lg.wait_all_up(60)
        except TimeoutError as exc:
            pytest.fail(f"{exc}; BGW alive: {fl.bgw_alive()}; BGW log:\n{fl.tail(25)}")
        # hold: three keepalive periods, so the BGW would have ended silent sessions by now
        before = lg.received_by_cpe()
        drops0, tx0, rx0 = sum(lg.drops.values()), lg.packets_tx, lg.echo_replies_rx
        time.sleep(3 * KEEPALIVE_S + 1)
        usage = bgw_usage(fl.bgw_pids())
        sent = lg.packets_tx - tx0
        time.sleep(0.5)  # replies still on their way
        after = lg.received_by_cpe()
        stats = lg.stats()
        got = lg.echo_replies_rx - rx0
        assert fl.bgw_alive(), f"the BGW died:\n{fl.tail(25)}"
        assert lg.n_up == n, f"only {lg.n_up}/{n} sessions up at the end: {stats}"
        assert sum(lg.drops.values()) == drops0, f"sessions dropped while idle: {stats}"
        assert usage["fds"] > 1100, f"the BGW holds {usage['fds']} fds, expected > 1 100: {usage}"
        silent = [cpe for cpe, count in after.items() if count <= before.get(cpe, 0)]
        assert not silent, f"no echo reply through the sessions of {silent[:10]} ({len(silent)})"
        assert sent >= 40 * 5 and got >= 0.9 * sent, f"sent {sent} echo requests, got {got} replies"
    assert "Traceback" not in fl.log_text(), fl.tail(40)


@pytest.mark.timeout(300)
def test_bgw_survives_emfile(fl: FleetLab) -> None:
    """A BGW limited to 256 fds, more connections than it can hold: it survives, logs and
    counts the accept errors, and serves a CPE again once the flood is over."""
    n = 200  # 200 TUN devices leave only a few dozen fds for connections
    cpes = fleet(n)
    fl.start_bgw(bgw_config(cpes, fl.bgw_addr, port=PORT, keepalive_s=KEEPALIVE_S), nofile=256)
    fl.wait_bgw_ready(120)
    raw = []
    lg = LoadGen(
        cpes, (fl.bgw_addr, PORT), netns=fl.ns_gen, keepalive_s=KEEPALIVE_S, max_inflight=64
    )
    try:
        lg.start()
        raw = flood((fl.bgw_addr, PORT), 600, netns=fl.ns_gen)
        time.sleep(10)  # sessions, reconnects and idle connections pile up against the limit
        alive_during = fl.bgw_alive()
        flood_stats = lg.stats()
    finally:
        lg.stop()
        close_flood(raw)
    assert alive_during, f"the BGW died under the flood:\n{fl.tail(30)}"
    time.sleep(2)
    with LoadGen(cpes[:1], (fl.bgw_addr, PORT), netns=fl.ns_gen, keepalive_s=KEEPALIVE_S) as one:
        try:
            one.wait_all_up(20)
        except TimeoutError as exc:
            pytest.fail(
                f"no session after the flood ({exc}); BGW alive {fl.bgw_alive()}:\n{fl.tail(30)}"
            )
        time.sleep(KEEPALIVE_S + 0.5)
        assert one.n_up == 1, one.stats()
    assert fl.bgw_alive(), f"the BGW died:\n{fl.tail(30)}"
    metrics = _metrics(fl)
    counted = sum(v for k, v in metrics.items() if k.startswith("mptcp_tunnel_accept_errors_total"))
    logged = [
        line
        for line in fl.log_text().splitlines()
        if "accept" in line.lower()
        and ("emfile" in line.lower() or "too many open files" in line.lower())
    ]
    assert counted > 0 or logged, (
        "accept errors neither counted (mptcp_tunnel_accept_errors_total) nor logged"
        f" ({flood_stats['sessions_up']} sessions were up during the flood):\n{fl.tail(30)}"
    )
