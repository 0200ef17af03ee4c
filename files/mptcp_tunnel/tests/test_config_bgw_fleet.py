"""BGW config validation at fleet size: duplicate ids and overlapping prefixes in one sorted pass.

The linear checks must find exactly what the obvious pairwise comparison finds, with the same messages.
"""

import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mptcp_tunnel.config import ConfigError, parse_config


def bgw_doc(cpes: list[dict[str, Any]]) -> dict[str, Any]:
    tls = {"ca_file": "ca.crt", "cert_file": "bgw.crt", "key_file": "bgw.key"}  # read only at start
    return {"role": "bgw", "tls": tls, "bgw": {"listen_address": "0.0.0.0", "cpes": cpes}}


def fleet(n: int) -> list[dict[str, Any]]:
    """n CPEs with one IPv4 /24 and one IPv6 /64 each, none overlapping."""
    return [
        {
            "id": f"c{i}",
            "secret": f"secret-{i:08d}",
            "prefixes": [f"10.{i >> 8}.{i & 255}.0/24", f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::/64"],
        }
        for i in range(n)
    ]


def pairwise_overlap(prefixes: list[list[str]]) -> bool:
    nets = [ipaddress.ip_network(p) for group in prefixes for p in group]
    return any(a.version == b.version and a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])


def test_a_large_fleet_is_valid() -> None:
    cfg = parse_config(bgw_doc(fleet(10_000)), "bgw.yaml")
    assert cfg.bgw is not None and len(cfg.bgw.cpes) == 10_000
    assert cfg.bgw.cpes[-1].id == "c9999"


def test_overlap_far_apart_in_the_file_is_found() -> None:
    cpes = fleet(5_000)
    cpes[4_999]["prefixes"] = ["10.0.3.128/25"]  # inside c3's 10.0.3.0/24
    with pytest.raises(ConfigError) as err:
        parse_config(bgw_doc(cpes), "/etc/mptcp-tunnel/config.yaml")
    assert str(err.value) == (
        "/etc/mptcp-tunnel/config.yaml: bgw.cpes: "
        "prefix 10.0.3.0/24 of 'c3' overlaps 10.0.3.128/25 of 'c4999'"
    )


def test_overlap_hidden_behind_a_smaller_prefix_is_found() -> None:
    # Sorted: 10.0.0.0/16 (c0), 10.0.1.0/24 (c1), 10.0.200.0/24 (c2): c2 does not touch its neighbour c1
    # but lies inside c0's /16.
    cpes = [
        {"id": "c0", "secret": "secret-0000", "prefixes": ["10.0.0.0/16"]},
        {"id": "c2", "secret": "secret-0002", "prefixes": ["10.0.200.0/24"]},
    ]
    with pytest.raises(ConfigError, match=r"prefix 10.0.0.0/16 of 'c0' overlaps 10.0.200.0/24 of 'c2'"):
        parse_config(bgw_doc(cpes), "bgw.yaml")


def test_overlap_within_one_cpe_and_equal_ipv6_prefixes() -> None:
    same = [{"id": "a1", "secret": "secret-a1", "prefixes": ["fd00::/64", "fd00::/64"]}]
    with pytest.raises(ConfigError, match=r"prefix fd00::/64 of 'a1' overlaps fd00::/64 of 'a1'"):
        parse_config(bgw_doc(same), "bgw.yaml")


def test_v4_and_v6_never_overlap_each_other() -> None:
    # ::/1 would contain the IPv4-mapped form numerically; families are checked separately.
    cpes = [
        {"id": "v4", "secret": "secret-v4", "prefixes": ["0.0.0.0/1"]},
        {"id": "v6", "secret": "secret-v6", "prefixes": ["::/1"]},
    ]
    assert parse_config(bgw_doc(cpes), "bgw.yaml").bgw is not None


def test_duplicate_id_far_apart_is_named() -> None:
    cpes = fleet(3_000)
    cpes[2_999]["id"] = "c17"
    with pytest.raises(ConfigError, match=r"^bgw.yaml: bgw.cpes: duplicate CPE id 'c17'$"):
        parse_config(bgw_doc(cpes), "bgw.yaml")


prefix_v4 = st.builds(
    lambda addr, length: str(ipaddress.ip_network(f"{addr}/{length}", strict=False)),
    st.integers(0, 2**32 - 1).map(lambda a: str(ipaddress.IPv4Address(a & 0x0A0FFFFF | 0x0A000000))),
    st.integers(8, 32),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(prefix_v4, min_size=1, max_size=3), min_size=1, max_size=12))
def test_sorted_check_agrees_with_pairwise(prefixes: list[list[str]]) -> None:
    cpes = [{"id": f"c{i}", "secret": "secret-xyz", "prefixes": p} for i, p in enumerate(prefixes)]
    if pairwise_overlap(prefixes):
        with pytest.raises(ConfigError, match="overlaps"):
            parse_config(bgw_doc(cpes), "bgw.yaml")
    else:
        parse_config(bgw_doc(cpes), "bgw.yaml")


def test_check_config_on_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "bgw.yaml"
    cpes = fleet(2_000)
    cpes.append({"id": "late", "secret": "secret-late", "prefixes": ["2001:db8:0:7::/64"]})
    path.write_text(yaml.safe_dump(bgw_doc(cpes)))
    run = subprocess.run(
        [sys.executable, "-m", "mptcp_tunnel", "check-config", str(path)], capture_output=True, text=True
    )
    assert run.returncode == 2
    assert (
        run.stderr.strip()
        .splitlines()[-1]
        .endswith("bgw.cpes: prefix 2001:db8:0:7::/64 of 'c7' overlaps 2001:db8:0:7::/64 of 'late'")
    )
    assert "Traceback" not in run.stderr
