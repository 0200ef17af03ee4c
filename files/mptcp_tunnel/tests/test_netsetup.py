"""setup-network against the real kernel, inside a throwaway network namespace (needs root)."""

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).parent.parent / "examples"

if os.geteuid() != 0:
    pytest.fail("test_netsetup needs root (network namespaces); run `make test` as root", pytrace=False)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"mtu-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for ifname, addr in (("wan_fixed", "10.1.0.1/30"), ("wan_cell", "10.2.0.1/30")):
            subprocess.run(
                ["ip", "-n", name, "link", "add", ifname, "type", "veth", "peer", "name", ifname + "p"],
                check=True,
            )
            subprocess.run(["ip", "-n", name, "addr", "add", addr, "dev", ifname], check=True)
            for dev in (ifname, ifname + "p"):
                subprocess.run(["ip", "-n", name, "link", "set", dev, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def in_ns(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, *args], capture_output=True, text=True, timeout=60
    )


def setup_network(ns: str, config: Path, *extra: str) -> dict[str, object]:
    res = in_ns(ns, "-m", "mptcp_tunnel", "setup-network", "--config", str(config), "--json", *extra)
    assert res.returncode == 0, res.stderr
    report: dict[str, object] = json.loads(res.stdout)
    return report


def endpoints(ns: str) -> list[tuple[str, int]]:
    code = (
        "import json; from mptcp_tunnel.netsetup import PathManager as P; p = P(); "
        "print(json.dumps(sorted((e.address, e.flags) for e in p.endpoints())))"
    )
    res = in_ns(ns, "-c", code)
    assert res.returncode == 0, res.stderr
    return [tuple(e) for e in json.loads(res.stdout)]  # type: ignore[misc]


def write_config(tmp_path: Path, policy: str) -> Path:
    doc = yaml.safe_load((EXAMPLES / "cpe.yaml").read_text())
    doc["cpe"]["policy"] = policy
    path = tmp_path / f"cpe-{policy}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_setup_network_is_idempotent_and_switches_backup_in_place(netns: str, tmp_path: Path) -> None:
    aggregate = write_config(tmp_path, "aggregate")
    dry = setup_network(netns, aggregate, "--check")
    assert dry["changed"] is True
    assert endpoints(netns) == []  # --check changed nothing

    first = setup_network(netns, aggregate)
    assert first["changed"] is True and first["problems"] == []
    assert endpoints(netns) == [("10.1.0.1", 2), ("10.2.0.1", 2)]  # subflow, subflow
    assert setup_network(netns, aggregate)["changed"] is False

    rules = subprocess.run(["ip", "-n", netns, "rule"], capture_output=True, text=True).stdout
    assert "from 10.1.0.1 lookup 101" in rules and "from 10.2.0.1 lookup 102" in rules
    table = subprocess.run(
        ["ip", "-n", netns, "route", "show", "table", "102"], capture_output=True, text=True
    ).stdout
    assert "default via 10.2.0.2 dev wan_cell" in table

    backup = setup_network(netns, write_config(tmp_path, "backup"))
    assert backup["changes"] == ["set mptcp endpoint 10.2.0.1 flags subflow,backup"]
    assert endpoints(netns) == [("10.1.0.1", 2), ("10.2.0.1", 6)]


def test_missing_link_interface_is_reported_and_the_rest_applied(netns: str, tmp_path: Path) -> None:
    subprocess.run(["ip", "-n", netns, "link", "del", "wan_cell"], check=True)
    res = in_ns(
        netns,
        "-m",
        "mptcp_tunnel",
        "setup-network",
        "--config",
        str(write_config(tmp_path, "aggregate")),
        "--json",
    )
    assert res.returncode == 1
    report = json.loads(res.stdout)
    assert report["problems"] == ["link cellular: interface wan_cell does not exist"]
    assert endpoints(netns) == [("10.1.0.1", 2)]


def gro(ns: str, ifname: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-k", ifname], capture_output=True, text=True)
    return next(line.split(":")[1].strip() for line in out.stdout.splitlines() if "generic-receive" in line)


def test_gro_is_turned_on_for_the_listed_interfaces_once(netns: str, tmp_path: Path) -> None:
    doc = yaml.safe_load((EXAMPLES / "cpe.yaml").read_text())
    doc["tunnel"]["gro_interfaces"] = ["wan_fixedp", "wan_cellp"]
    config = tmp_path / "cpe-gro.yaml"
    config.write_text(yaml.safe_dump(doc))
    assert gro(netns, "wan_fixedp") == "off"  # veth ships with GRO off
    assert "turn GRO on for wan_fixedp" in setup_network(netns, config, "--check")["changes"]
    assert gro(netns, "wan_fixedp") == "off"  # --check changed nothing
    first = setup_network(netns, config)
    assert {"turn GRO on for wan_fixedp", "turn GRO on for wan_cellp"} <= set(first["changes"])  # type: ignore[arg-type]
    assert gro(netns, "wan_fixedp") == "on" and gro(netns, "wan_cellp") == "on"
    again = setup_network(netns, config)
    assert not any("GRO" in c for c in again["changes"])  # type: ignore[union-attr]
    doc["tunnel"]["gro_interfaces"] = ["nosuch0"]
    config.write_text(yaml.safe_dump(doc))
    res = in_ns(netns, "-m", "mptcp_tunnel", "setup-network", "--config", str(config), "--json")
    assert res.returncode == 1
    assert json.loads(res.stdout)["problems"] == ["GRO on nosuch0: No such device"]


def test_setup_network_keeps_the_backup_flag_of_a_spent_cap(netns: str, tmp_path: Path) -> None:
    from mptcp_tunnel.cap import CapMeter, CapSettings, file_state
    from mptcp_tunnel.capio import now_utc, save_atomic

    doc = yaml.safe_load((EXAMPLES / "cpe.yaml").read_text())
    doc["cpe"]["links"][1]["cap"] = {"bytes": "1MB", "period": "daily"}
    doc["cpe"]["state_dir"] = str(tmp_path / "state")
    config = tmp_path / "cpe-cap.yaml"
    config.write_text(yaml.safe_dump(doc))
    setup_network(netns, config)
    assert endpoints(netns) == [("10.1.0.1", 2), ("10.2.0.1", 2)]  # no usage file: not spent
    now = now_utc()
    meter = CapMeter("cellular", CapSettings(10**6, "daily"), now)
    meter.sample(now, {"x": 0})
    meter.sample(now, {"x": 2 * 10**6})
    save_atomic(tmp_path / "state" / "cap-usage.json", file_state({"cellular": meter}, now))
    again = setup_network(netns, config)
    assert again["changes"] == ["set mptcp endpoint 10.2.0.1 flags subflow,backup"]
    assert endpoints(netns) == [("10.1.0.1", 2), ("10.2.0.1", 6)]


def root_qdisc(ns: str, ifname: str) -> str:
    out = subprocess.run(
        ["tc", "-n", ns, "qdisc", "show", "dev", ifname, "root"], capture_output=True, text=True
    )
    return out.stdout.strip()


def test_link_share_limits_each_link_and_leaves_other_qdiscs_alone(netns: str, tmp_path: Path) -> None:
    doc = yaml.safe_load((EXAMPLES / "cpe.yaml").read_text())
    doc["cpe"]["links"][1]["rate_mbit"] = 5
    doc["cpe"]["link_share"] = 0.99
    config = tmp_path / "cpe-limits.yaml"
    config.write_text(yaml.safe_dump(doc))
    assert "limit wan_fixed to 9.90 Mbit/s (link fixed)" in setup_network(netns, config, "--check")["changes"]  # type: ignore[operator]
    assert "tbf" not in root_qdisc(netns, "wan_fixed")  # --check changed nothing
    first = setup_network(netns, config)
    assert {
        "limit wan_fixed to 9.90 Mbit/s (link fixed)",
        "limit wan_cell to 4.95 Mbit/s (link cellular)",
    } <= set(
        first["changes"]  # type: ignore[arg-type]
    )
    assert root_qdisc(netns, "wan_fixed").startswith(
        "qdisc tbf 4d54: root"
    ) and "rate 9900Kbit" in root_qdisc(netns, "wan_fixed")
    assert "rate 4950Kbit" in root_qdisc(netns, "wan_cell")
    assert setup_network(netns, config)["changed"] is False  # idempotent

    # Someone else's qdisc (an operator's SQM) is never replaced; the agent's own is removed when off.
    subprocess.run(
        ["tc", "-n", netns, "qdisc", "replace", "dev", "wan_cell", "root", "handle", "1:", "pfifo"],
        check=True,
    )
    res = in_ns(netns, "-m", "mptcp_tunnel", "setup-network", "--config", str(config), "--json")
    assert res.returncode == 1
    assert json.loads(res.stdout)["problems"] == [
        "link cellular: wan_cell already has a root qdisc (pfifo 1:) the agent did not set;"
        " link_share not applied there"
    ]
    assert root_qdisc(netns, "wan_cell").startswith("qdisc pfifo 1: root")
    doc["cpe"]["link_share"] = 0
    config.write_text(yaml.safe_dump(doc))
    off = setup_network(netns, config)
    assert off["changes"] == ["remove the rate limit on wan_fixed"]
    assert "tbf" not in root_qdisc(netns, "wan_fixed")
    assert root_qdisc(netns, "wan_cell").startswith("qdisc pfifo 1: root")
