import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mptcp_tunnel.aqm import AqmSettings
from mptcp_tunnel.config import ConfigError, load_config, parse_config

EXAMPLES = Path(__file__).parent.parent / "examples"


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return data


def test_examples_are_valid() -> None:
    cpe = load_config(str(EXAMPLES / "cpe.yaml"))
    assert cpe.role == "cpe" and cpe.cpe is not None
    assert [link.name for link in cpe.cpe.links] == ["fixed", "cellular"]
    assert str(cpe.cpe.bgw_address) == "10.1.0.2"
    bgw = load_config(str(EXAMPLES / "bgw.yaml"))
    assert bgw.bgw is not None and bgw.bgw.cpes[0].id == "cpe1"
    assert bgw.metrics_listen == ("127.0.0.1", 9477)


def mutate(name: str, path: str, value: object) -> dict[str, Any]:
    doc = example(name)
    node: Any = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    last = keys[-1]
    if value is DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return doc


DELETE = object()


@pytest.mark.parametrize(
    ("name", "path", "value", "message"),
    [
        ("cpe.yaml", "tunnel.mtu", "big", "tunnel.mtu: expected an integer, got str"),
        ("cpe.yaml", "tunnel.mtu", 100, "tunnel.mtu: 100 is out of range 1280..65535"),
        ("cpe.yaml", "tunnel.colour", "blue", "tunnel.colour: unknown key"),
        ("cpe.yaml", "cpe.links.1.address", "10.2.0.x", "cpe.links[1].address: '10.2.0.x' is not an IP"),
        ("cpe.yaml", "cpe.links.1.table", 101, "cpe.links: duplicate table 101"),
        ("cpe.yaml", "cpe.links.0.table", 254, "cpe.links[0].table: 254 is a reserved routing table"),
        ("cpe.yaml", "cpe.links.0.interface", "a-name-far-too-long", "cpe.links[0].interface:"),
        (
            "cpe.yaml",
            "cpe.policy",
            "hybrid",
            "cpe.policy: 'hybrid' is not one of aggregate, backup, overflow",
        ),
        ("cpe.yaml", "cpe.overflow", {"leave_at": 0.95}, "cpe.overflow.leave_at: must be below join_at"),
        ("cpe.yaml", "cpe.id", "CPE_1", "cpe.id: 'CPE_1' must match"),
        ("cpe.yaml", "cpe.failover", {"probe_interval_ms": "fast"}, "cpe.failover.probe_interval_ms: "),
        ("cpe.yaml", "cpe.failover", {"down_after_ms": 150}, "cpe.failover.down_after_ms: must be"),
        ("cpe.yaml", "cpe.failover", {"probes": 3}, "cpe.failover.probes: unknown key"),
        ("cpe.yaml", "cpe.bgw_address", DELETE, "cpe.bgw_address: missing (required)"),
        ("cpe.yaml", "cpe.routes", ["10.0.0.1/8"], "cpe.routes[0]: '10.0.0.1/8' is not a prefix"),
        ("cpe.yaml", "role", "router", "role: 'router' is not one of cpe, bgw"),
        ("cpe.yaml", "metrics_listen", "localhost", "metrics_listen: 'localhost' is not 'address:port'"),
        ("cpe.yaml", "tunnel.max_frame_bytes", 1400, "tunnel.max_frame_bytes: 1400 is below mtu 1500"),
        ("bgw.yaml", "bgw.cpes.0.prefixes", [], "bgw.cpes[0].prefixes: expected a non-empty list"),
        ("bgw.yaml", "bgw.listen_address", "any", "bgw.listen_address: 'any' is not an IP address"),
        ("bgw.yaml", "tunnel.aqm", "red", "tunnel.aqm: 'red' is not one of codel, fq_codel, none"),
        ("cpe.yaml", "tunnel.ecn", "yes", "tunnel.ecn: expected true or false, got str"),
        ("cpe.yaml", "tunnel.aqm_target_ms", 100, "tunnel.aqm_target_ms: 100 is not below aqm_interval_ms"),
        ("cpe.yaml", "tunnel.aqm_interval_ms", 0, "tunnel.aqm_interval_ms: 0 is out of range"),
        ("cpe.yaml", "tunnel.aqm_limit_bytes", 1000, "tunnel.aqm_limit_bytes: 1000 is out of range"),
    ],
)
def test_bad_values_name_file_and_key(name: str, path: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(mutate(name, path, value), f"/etc/{name}")
    assert str(err.value).startswith(f"/etc/{name}: {message}")


def test_overlapping_cpe_prefixes_are_refused() -> None:
    doc = example("bgw.yaml")
    doc["bgw"]["cpes"].append({"id": "cpe2", "secret": "another-secret", "prefixes": ["192.168.10.128/25"]})
    with pytest.raises(ConfigError, match="overlaps"):
        parse_config(doc, "bgw.yaml")


def test_duplicate_cpe_ids_are_refused() -> None:
    doc = example("bgw.yaml")
    doc["bgw"]["cpes"].append({"id": "cpe1", "secret": "another-secret", "prefixes": ["10.9.0.0/24"]})
    with pytest.raises(ConfigError, match="duplicate CPE id 'cpe1'"):
        parse_config(doc, "bgw.yaml")


def test_a_section_of_the_other_role_is_refused() -> None:
    doc = example("cpe.yaml")
    doc["bgw"] = example("bgw.yaml")["bgw"]
    with pytest.raises(ConfigError, match="bgw: not allowed when role is cpe"):
        parse_config(doc, "cpe.yaml")


def test_secret_file_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "cpe1.secret").write_text("s3cret-from-a-file\n")
    doc = example("cpe.yaml")
    doc["tunnel"]["encryption"] = "none"
    del doc["cpe"]["secret"]
    doc["cpe"]["secret_file"] = "cpe1.secret"
    cfg = parse_config(doc, str(tmp_path / "cpe.yaml"))
    assert cfg.cpe is not None and cfg.cpe.secret == b"s3cret-from-a-file"
    doc["cpe"]["secret_file"] = "missing.secret"
    with pytest.raises(ConfigError, match="cpe.secret_file: cannot read"):
        parse_config(doc, str(tmp_path / "cpe.yaml"))


def test_yaml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("role: cpe\ntunnel: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+"):
        load_config(str(bad))


def test_a_key_given_twice_is_an_error_not_the_last_one_wins(tmp_path: Path) -> None:
    bad = tmp_path / "twice.yaml"
    bad.write_text("role: bgw\nbgw:\n  cpes: []\n  listen_address: 10.1.0.2\n  cpes: []\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: line 5: duplicate key 'cpes'"):
        load_config(str(bad))


def test_a_file_that_is_not_utf8_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("role: cpe\n# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9 at offset 15\)"):
        load_config(str(bad))


def test_not_a_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level: expected a mapping, got list"):
        load_config(str(bad))


def with_pki(doc: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The example with a real (throw-away) PKI, so that check-config can load it."""
    from pki import Pki

    pki = Pki(tmp_path / "pki")
    stem = "cpe1" if doc["role"] == "cpe" else "bgw1"
    pki.issue(stem, doc["role"])
    doc["tls"] = pki.tls_section(stem)
    return doc


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mptcp_tunnel", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(with_pki(example("cpe.yaml"), tmp_path)))
    ok = run_cli("check-config", str(good))
    assert ok.returncode == 0 and "OK" in ok.stdout
    nopki = run_cli("check-config", str(EXAMPLES / "cpe.yaml"))  # /etc/mptcp-tunnel/pki is not here
    assert nopki.returncode == 2 and "tls.ca_file: cannot load /etc/mptcp-tunnel/pki/ca.crt" in nopki.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(mutate("cpe.yaml", "tunnel.port", 70000)))
    res = run_cli("check-config", str(bad))
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"mptcp-tunnel: config error: {bad}: tunnel.port: 70000 is out of range 1..65535"
    )
    assert "Traceback" not in res.stderr


def test_run_with_a_bad_config_exits_2_before_touching_anything(tmp_path: Path) -> None:
    res = run_cli("run", "--config", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and "cannot read" in res.stderr and "Traceback" not in res.stderr


def test_bad_command_line_exits_2_with_usage() -> None:
    res = run_cli("frobnicate")
    assert res.returncode == 2 and "usage:" in res.stderr


def test_the_internal_worker_command_run_by_hand_says_so_without_a_traceback() -> None:
    res = subprocess.run(  # fd 0 is /dev/null: not a socket
        [sys.executable, "-m", "mptcp_tunnel", "worker", "--channel-fd", "0", "--index", "0"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2, res.stderr
    assert "--channel-fd 0: not the BGW's channel" in res.stderr and "Traceback" not in res.stderr


def test_status_with_an_empty_socket_path_names_the_option() -> None:
    res = run_cli("status", "--socket", "")
    assert res.returncode == 2 and "--socket: empty path" in res.stderr, res.stderr


def test_unavailable_congestion_control_is_a_config_error_at_start(tmp_path: Path) -> None:
    cfg = tmp_path / "cc.yaml"
    doc = with_pki(mutate("cpe.yaml", "tunnel.congestion_control", "warp-drive"), tmp_path)
    cfg.write_text(yaml.safe_dump(doc))
    assert run_cli("check-config", str(cfg)).returncode == 0  # fine on another host ...
    res = run_cli("run", "--config", str(cfg))  # ... but not on this one
    assert res.returncode == 2
    assert "tunnel.congestion_control: 'warp-drive' is not available here" in res.stderr


def test_mixed_type_keys_are_a_config_error_not_a_crash(tmp_path: Path) -> None:
    bad = tmp_path / "mixed.yaml"
    bad.write_text("role: bgw\n1: x\nzz: y\n")
    with pytest.raises(ConfigError, match="top level: key 1 is not a name"):
        load_config(str(bad))


def none_bgw(cpes: list[dict[str, Any]]) -> dict[str, Any]:
    doc = example("bgw.yaml")
    doc["tunnel"]["encryption"] = "none"
    doc["bgw"]["cpes"] = cpes
    return doc


@pytest.mark.parametrize(
    ("cpes", "listen", "message"),
    [
        ([{"id": "a", "secret": "s" * 16, "prefixes": ["0.0.0.0/0"]}], None, "is a default route"),
        ([{"id": "a", "secret": "s" * 16, "prefixes": ["::/0"]}], None, "is a default route"),
        (
            [{"id": "a", "secret": "s" * 16, "prefixes": ["10.1.0.0/16"]}],
            "10.1.0.2",
            "holds the BGW's address",
        ),
        (
            [
                {"id": "a", "secret": "s" * 16, "prefixes": ["10.9.0.0/24"]},
                {"id": "b", "secret": "s" * 16, "prefixes": ["10.8.0.0/24"]},
            ],
            None,
            "CPEs 'a' and 'b' share a secret",
        ),
        ([{"id": "a", "secret": "s" * 15, "prefixes": ["10.9.0.0/24"]}], None, "shorter than 16 bytes"),
    ],
    ids=["default-v4", "default-v6", "own-address", "shared-secret", "short-secret"],
)
def test_dangerous_bgw_configs_are_refused(
    cpes: list[dict[str, Any]], listen: str | None, message: str
) -> None:
    doc = none_bgw(cpes)
    if listen:
        doc["bgw"]["listen_address"] = listen
    with pytest.raises(ConfigError, match=message):
        parse_config(doc, "bgw.yaml")


def test_tls_needs_its_files_and_the_bgw_name() -> None:
    doc = example("cpe.yaml")
    del doc["cpe"]["bgw_name"]
    with pytest.raises(ConfigError, match="cpe.bgw_name: missing"):
        parse_config(doc, "cpe.yaml")
    doc = example("bgw.yaml")
    del doc["tls"]
    with pytest.raises(ConfigError, match="tls: missing"):
        parse_config(doc, "bgw.yaml")
    doc = example("bgw.yaml")
    doc["tunnel"]["encryption"] = "none"
    del doc["tls"]
    cfg = parse_config(doc, "bgw.yaml")
    assert cfg.tls is None and cfg.bgw is not None and cfg.bgw.cpes[0].secret == b"lab-secret-cpe1-0123"


def test_the_per_source_limit_is_a_positive_integer() -> None:
    cfg = parse_config(example("bgw.yaml"), "bgw.yaml")
    assert cfg.bgw is not None and cfg.bgw.max_pending_per_source == 8
    doc = example("bgw.yaml")
    doc["bgw"]["max_pending_per_source"] = 0
    with pytest.raises(ConfigError, match=r"bgw.max_pending_per_source: 0 is out of range 1\.\.1000000"):
        parse_config(doc, "bgw.yaml")


def test_overflow_needs_the_fixed_links_rate() -> None:
    doc = mutate("cpe.yaml", "cpe.policy", "overflow")
    assert parse_config(doc, "/etc/cpe.yaml").cpe.policy == "overflow"  # type: ignore[union-attr]
    del doc["cpe"]["links"][0]["rate_mbit"]
    with pytest.raises(ConfigError, match=r"cpe.links\[0\].rate_mbit: required on fixed links"):
        parse_config(doc, "/etc/cpe.yaml")


def test_aqm_is_opt_in_with_ecn_marking() -> None:
    assert parse_config(example("cpe.yaml"), "cpe.yaml").tunnel.aqm is None
    cfg = parse_config(mutate("cpe.yaml", "tunnel.aqm", "codel"), "cpe.yaml")
    assert cfg.tunnel.aqm is not None and cfg.tunnel.aqm.ecn
    assert (cfg.tunnel.aqm.target_s, cfg.tunnel.aqm.interval_s) == (0.005, 0.1)
    fq = mutate("cpe.yaml", "tunnel.aqm", "fq_codel")
    assert parse_config(fq, "cpe.yaml").tunnel.aqm == AqmSettings(kind="fq_codel", limit_bytes=4 << 20)
    fq["tunnel"]["queue_bytes"] = 0  # unbounded: the kernel would hold the whole queue
    with pytest.raises(ConfigError, match="tunnel.aqm: fq_codel needs queue_bytes > 0"):
        parse_config(fq, "cpe.yaml")


def test_the_shaper_needs_fq_codel_and_a_bgw_may_set_it_per_cpe() -> None:
    doc = mutate("cpe.yaml", "tunnel.shape_mbit", 13.5)
    with pytest.raises(ConfigError, match="tunnel.shape_mbit: needs aqm fq_codel"):
        parse_config(doc, "cpe.yaml")
    doc["tunnel"]["aqm"] = "fq_codel"
    assert parse_config(doc, "cpe.yaml").tunnel.shape_mbit == 13.5
    doc["tunnel"]["shape_mbit"] = -1
    with pytest.raises(ConfigError, match="tunnel.shape_mbit: -1 is out of range"):
        parse_config(doc, "cpe.yaml")
    bgw = mutate("bgw.yaml", "bgw.cpes.0.shape_mbit", 40)
    with pytest.raises(ConfigError, match=r"bgw.cpes\[0\].shape_mbit: needs tunnel.aqm fq_codel"):
        parse_config(bgw, "bgw.yaml")
    bgw["tunnel"]["aqm"] = "fq_codel"
    cfg = parse_config(bgw, "bgw.yaml")
    assert cfg.bgw is not None and cfg.bgw.cpes[0].shape_mbit == 40.0
    assert cfg.tunnel.shape_mbit == 0.0  # CPEs without their own rate are not shaped
    del bgw["bgw"]["cpes"][0]["shape_mbit"]
    cfg = parse_config(bgw, "bgw.yaml")
    assert cfg.bgw is not None and cfg.bgw.cpes[0].shape_mbit is None


@pytest.mark.parametrize("aqm", ["codel", "fq_codel", "none"])
def test_tunnel_settings_survive_the_trip_to_a_worker(aqm: str) -> None:
    from mptcp_tunnel.config import tunnel_from_wire, tunnel_to_wire

    doc = mutate("bgw.yaml", "tunnel.aqm", aqm)
    doc["tunnel"]["gro_interfaces"] = ["lan0"]
    t = parse_config(doc, "bgw.yaml").tunnel
    assert tunnel_from_wire(json.loads(json.dumps(tunnel_to_wire(t)))) == t
