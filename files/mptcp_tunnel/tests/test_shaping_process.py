"""``cpe.shape_share`` with real agents (needs root): the CPE shapes at the share of the links that
carry traffic, tells the BGW its downstream rate (SHAPE_RATE), and both follow a policy change and a
link going down without a reconnect. The BGW's own per-CPE rate is the ceiling. ``cpe.link_share``:
the CPE's limit on each link, in ``status``, and removed by a reload that turns it off."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import yaml
from test_agent_process import EXAMPLES, Pair, wait_for

from mptcp_tunnel.shaping import DEFAULT_OVERHEAD

pytest_plugins = ["test_agent_process"]  # its "pair" fixture: two namespaces, two links

CHANGES = 'mptcp_tunnel_shape_changes_total{cpe="cpe1"}'


def cpe_says(up: float, down: float, links: str) -> str:
    """The CPE's log line for ``share x rate`` Mbit/s on the line each way (no traffic: the line's
    bytes per stream byte stay at their default)."""
    up, down = up / DEFAULT_OVERHEAD, down / DEFAULT_OVERHEAD
    return f"shaper: up {up:.2f} Mbit/s, down {down:.2f} Mbit/s ({links})"


def bgw_says(down: float) -> str:
    """The BGW's log line for that downstream rate (SHAPE_RATE carries kbit/s)."""
    return f"cpe1: shaping at {round(down / DEFAULT_OVERHEAD * 1000) / 1000:.2f} Mbit/s"


def status(pair: Pair, sock: str) -> dict[str, object]:
    argv = ["ip", "netns", "exec", pair.cpe, sys.executable, "-m", "mptcp_tunnel", "status", "--socket", sock]
    res = subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, res.stderr
    snap: dict[str, object] = json.loads(res.stdout)
    return snap


def test_the_shaper_follows_the_carrying_links_at_both_ends(pair: Pair) -> None:
    bgw_doc = yaml.safe_load(pair.config("bgw", tunnel__aqm="fq_codel").read_text())
    bgw_doc["bgw"]["cpes"][0]["shape_mbit"] = 25  # the operator's ceiling for cpe1's downstream
    bgw_config = pair.tmp / "bgw-shaped.yaml"
    bgw_config.write_text(yaml.safe_dump(bgw_doc))
    bgw = pair.start("bgw", bgw_config)
    bgw.wait_log("BGW listening")

    links = yaml.safe_load((EXAMPLES / "cpe.yaml").read_text())["cpe"]["links"]
    links[0].update(rate_mbit=10, rate_down_mbit=20)
    links[1].update(rate_mbit=5)
    sock = str(pair.tmp / "cpe.sock")
    config = pair.config(
        "cpe",
        tunnel__aqm="fq_codel",
        cpe__links=links,
        cpe__shape_share=0.9,
        cpe__link_share=0.95,
        control_socket=sock,
    )
    cpe = pair.start("cpe", config)
    cpe.wait_log("session up")
    cpe.wait_log(cpe_says(13.5, 22.5, "fixed + cellular"))
    bgw.wait_log(bgw_says(22.5))  # 25 configured, less asked
    snap = status(pair, sock)
    assert snap["shaper"] == {
        "share": 0.9,
        "links": ["fixed", "cellular"],
        "up_mbps": round(13.5 / DEFAULT_OVERHEAD, 2),
        "down_mbps": round(22.5 / DEFAULT_OVERHEAD, 2),
        "line_per_stream_byte": {"up": DEFAULT_OVERHEAD, "down": DEFAULT_OVERHEAD},
        "link_limits_mbps": {"fixed": 9.5, "cellular": 4.75},
    }
    cpe.wait_log("network: limit wan_fixed to 9.50 Mbit/s (link fixed)")
    cpe.wait_log("network: limit wan_cell to 4.75 Mbit/s (link cellular)")
    table = subprocess.run(
        ["ip", "netns", "exec", pair.cpe, sys.executable, "-m", "mptcp_tunnel", "status", "--socket", sock],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert "links limited upstream: fixed 9.5 Mbit/s, cellular 4.75 Mbit/s" in table.stdout, table.stdout
    m = pair.metrics(pair.cpe)
    assert m['mptcp_tunnel_shape_rate_bps{direction="up"}'] == 13.5e6 / DEFAULT_OVERHEAD
    assert m['mptcp_tunnel_shape_rate_bps{direction="down"}'] == 22.5e6 / DEFAULT_OVERHEAD

    # backup: cellular stands by, only the fixed link carries traffic
    config.write_text(config.read_text().replace("policy: aggregate", "policy: backup"))
    cpe.proc.send_signal(signal.SIGHUP)
    cpe.wait_log(cpe_says(9, 18, "fixed"))
    bgw.wait_log(bgw_says(18))
    # The fixed link loses its carrier: the standby cellular link carries everything.
    subprocess.run(["ip", "-n", pair.cpe, "link", "set", "wan_fixed", "down"], check=True)
    cpe.wait_log(cpe_says(4.5, 4.5, "cellular"))
    bgw.wait_log(bgw_says(4.5))
    wait_for(lambda: pair.metrics(pair.bgw).get(CHANGES, 0) == 3, 10, "three changes at the BGW")
    subprocess.run(["ip", "-n", pair.cpe, "link", "set", "wan_fixed", "up"], check=True)
    wait_for(
        lambda: cpe.log.read_text().count(cpe_says(9, 18, "fixed")) == 2,
        20,
        "the shaper back on the fixed link",
    )
    wait_for(lambda: pair.metrics(pair.bgw).get(CHANGES, 0) == 4, 10, "the BGW back at 18 Mbit/s")
    assert bgw.log.read_text().count(bgw_says(18)) == 2
    assert cpe.log.read_text().count("session up") == 1  # no reconnect through all of it

    # shape_share and link_share off: the CPE stops shaping and removes its limits, the BGW goes back
    # to its own rate
    text = config.read_text().replace("shape_share: 0.9", "shape_share: 0")
    config.write_text(text.replace("link_share: 0.95", "link_share: 0"))
    cpe.proc.send_signal(signal.SIGHUP)
    cpe.wait_log("shaper: cpe.shape_share off")
    cpe.wait_log("network: remove the rate limit on wan_cell")
    bgw.wait_log("cpe1: shaping at 25.00 Mbit/s")
    wait_for(lambda: pair.metrics(pair.bgw).get(CHANGES, 0) == 5, 10, "the BGW back at its own rate")
    assert status(pair, sock)["shaper"] == {}
    assert cpe.stop() == 0 and bgw.stop() == 0
