"""cpe.shape_share (sans-I/O): which links carry traffic, the rates, the SHAPE_RATE payload, the
rate a BGW applies, a gate whose rate changes, and the configuration's checks."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import yaml
from test_config import EXAMPLES

from mptcp_tunnel import shaping
from mptcp_tunnel.config import ConfigError, Link, parse_config
from mptcp_tunnel.fqcodel import SHAPE_BURST_S, KernelGate
from mptcp_tunnel.shaping import DEFAULT_OVERHEAD, SMOOTHING, Overhead, ShapeRates


def link(name: str, up: float, down: float = 0.0, kind: str = "fixed") -> Link:
    return Link(name, kind, name, ipaddress.ip_address("10.0.0.1"), None, 100, up, down)  # type: ignore[arg-type]


FIXED, CELL = link("fixed", 10, 40), link("cellular", 5, kind="cellular")


@pytest.mark.parametrize(
    ("up", "standby", "carrying"),
    [
        ({"fixed", "cellular"}, set(), ["fixed", "cellular"]),  # aggregate
        ({"cellular"}, set(), ["cellular"]),  # fixed down
        ({"fixed", "cellular"}, {"cellular"}, ["fixed"]),  # backup (or a spent cap): cellular waits
        ({"cellular"}, {"cellular"}, ["cellular"]),  # ... and takes over when fixed fails
        (set(), set(), []),  # every link down
    ],
)
def test_the_carrying_links(up: set[str], standby: set[str], carrying: list[str]) -> None:
    links = shaping.carrying([FIXED, CELL], lambda name: name in up, lambda lk: lk.name in standby)
    assert [lk.name for lk in links] == carrying


def test_rates_are_the_share_of_the_declared_rates_down_defaulting_to_up() -> None:
    both = shaping.rates([FIXED, CELL], 0.9)
    assert both is not None
    assert both.up_bps == pytest.approx(13.5e6) and both.down_bps == pytest.approx(40.5e6)
    assert both.describe() == "up 13.50 Mbit/s, down 40.50 Mbit/s (fixed + cellular)"
    cell = shaping.rates([CELL], 0.9)
    assert cell is not None and cell.up_bps == cell.down_bps == pytest.approx(4.5e6)
    assert shaping.rates([], 0.9) is None  # nothing flows: the last rates stand


def test_rates_leave_the_line_room_for_headers_and_acks() -> None:
    both = shaping.rates([FIXED, CELL], 0.97, 1.1, 1.05)
    assert both is not None
    assert both.up_bps == pytest.approx(0.97 * 15e6 / 1.1)
    assert both.down_bps == pytest.approx(0.97 * 45e6 / 1.05)
    assert shaping.line_bytes(14_280, 10, ipv6=False) == 14_280 + 10 * shaping.SEGMENT_BYTES
    assert shaping.line_bytes(0, 10, ipv6=True) == 10 * shaping.SEGMENT_BYTES_V6


def test_rates_are_replaced_on_other_links_or_a_real_move_only() -> None:
    old = ShapeRates(10e6, 20e6, ("fixed", "cellular"))
    assert shaping.moved(None, old)
    assert not shaping.moved(old, ShapeRates(10.1e6, 19.8e6, ("fixed", "cellular")))  # 1 %: kept
    assert shaping.moved(old, ShapeRates(10.3e6, 20e6, ("fixed", "cellular")))
    assert shaping.moved(old, ShapeRates(10e6, 20e6, ("cellular",)))


def test_the_overhead_is_learned_only_from_busy_windows() -> None:
    o = Overhead()
    assert o.factor == DEFAULT_OVERHEAD
    o.sample(1_000, 1_000, busy_bytes=100_000)  # a base only
    o.sample(1_000 + 50_000, 1_000 + 10_000, busy_bytes=100_000)  # idle: mostly ACKs, ignored
    assert o.factor == DEFAULT_OVERHEAD
    line, stream = 51_000, 11_000
    for _ in range(40):  # busy windows at 1.10 line bytes per stream byte
        line, stream = line + 660_000, stream + 600_000
        o.sample(line, stream, busy_bytes=100_000)
    assert o.factor == pytest.approx(1.10, abs=0.001)
    o.sample(line - 10**6, stream + 600_000, busy_bytes=100_000)  # a subflow went: skipped
    assert o.factor == pytest.approx(1.10, abs=0.001)
    o.sample(line + 10**7, stream + 10**6, busy_bytes=100_000)  # 10x: clamped, and smoothed
    assert o.factor == pytest.approx(1.10 + SMOOTHING * (1.5 - 1.10))
    o.restart()
    before = o.factor
    o.sample(0, 0, busy_bytes=1)  # after a restart the first sample is a base only
    assert o.factor == before


def test_the_rate_payload_round_trips_clamps_and_refuses_other_lengths() -> None:
    assert shaping.decode_rate(shaping.encode_rate(22.5e6)) == 22.5e6
    assert shaping.decode_rate(shaping.encode_rate(0)) == 0
    assert shaping.decode_rate(shaping.encode_rate(1e15)) == shaping.MAX_KBIT * 1000.0
    assert shaping.decode_rate(shaping.encode_rate(-5)) == 0
    for bad in (b"", b"\x00\x01\x02", b"\x00" * 5):
        assert shaping.decode_rate(bad) is None


@pytest.mark.parametrize(
    ("asked", "configured", "applied"),
    [(22.5e6, 25e6, 22.5e6), (30e6, 25e6, 25e6), (4.5e6, 0, 4.5e6), (0, 25e6, 25e6), (0, 0, 0)],
)
def test_the_bgws_rate_is_its_ceiling(asked: float, configured: float, applied: float) -> None:
    assert shaping.peer_rate(asked, configured) == applied


def test_a_gate_follows_a_new_rate_and_a_new_shaper_starts_with_a_full_bucket() -> None:
    gate = KernelGate(floor=16 * 1024)  # the kernel's room above the bucket's 10 KB
    gate.measured(0.0, 0, 0, 0)
    assert gate.room(0, 0.0) == gate.limit  # no shaper: the kernel's room only
    gate.set_shape(8e6)  # 1 MB/s
    assert gate.room(0, 0.0) == int(1e6 * SHAPE_BURST_S)  # a full burst at once
    gate.measured(0.0, 10_000, 0, 0)  # the kernel's room is ample from now on
    gate.limit = gate._base = 10**9
    gate.set_shape(0.8e6)  # a tenth: the burst shrinks with it, and so do the tokens
    assert gate.room(10_000, 0.0) <= max(4096, int(0.1e6 * SHAPE_BURST_S))
    assert gate.room(10_000, 1.0) == max(4096, int(0.1e6 * SHAPE_BURST_S))  # one burst, not a second's worth
    gate.set_shape(0)
    assert gate.room(10_000, 1.0) > 10**8


def config(**cpe: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / "cpe.yaml").read_text())
    doc["tunnel"]["aqm"] = "fq_codel"
    doc["cpe"]["links"][1]["rate_mbit"] = 5
    doc["cpe"].update(cpe)
    return doc


def test_shape_share_configuration() -> None:
    cfg = parse_config(config(shape_share=0.91), "cpe.yaml")
    assert cfg.cpe is not None and cfg.cpe.shape_share == 0.91
    assert [lk.rate_down_mbit for lk in cfg.cpe.links] == [0.0, 0.0]
    for doc, message in (
        (config(shape_share=0.3), "cpe.shape_share: 0.3 is below 0.5"),
        (config(shape_share=1.5), "cpe.shape_share: 1.5 is out of range"),
        ({**config(shape_share=0.9), "tunnel": {}}, "cpe.shape_share: needs tunnel.aqm fq_codel"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config(doc, "cpe.yaml")
    doc = config(shape_share=0.9)
    doc["tunnel"]["shape_mbit"] = 13
    with pytest.raises(ConfigError, match="cpe.shape_share: tunnel.shape_mbit sets a fixed rate already"):
        parse_config(doc, "cpe.yaml")
    doc = config(shape_share=0.9)
    del doc["cpe"]["links"][1]["rate_mbit"]
    with pytest.raises(ConfigError, match=r"links\[1\].rate_mbit: required on every link with shape_share"):
        parse_config(doc, "cpe.yaml")
    doc = config()
    doc["cpe"]["links"][0]["rate_down_mbit"] = 50
    cfg = parse_config(doc, "cpe.yaml")
    assert cfg.cpe is not None and cfg.cpe.links[0].rate_down_mbit == 50 and cfg.cpe.shape_share == 0


def test_link_share_configuration() -> None:
    cfg = parse_config(config(shape_share=0.97, link_share=0.99), "cpe.yaml")
    assert cfg.cpe is not None and cfg.cpe.link_share == 0.99
    assert parse_config(config(link_share=0.99), "cpe.yaml").cpe.link_share == 0.99  # type: ignore[union-attr]
    for doc, message in (
        (config(link_share=0.2), "cpe.link_share: 0.2 is below 0.5"),
        (config(link_share=1.2), "cpe.link_share: 1.2 is out of range"),
        (config(shape_share=0.97, link_share=0.95), "cpe.link_share: 0.95 is below shape_share 0.97"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config(doc, "cpe.yaml")
    doc = config(link_share=0.99)
    del doc["cpe"]["links"][1]["rate_mbit"]
    with pytest.raises(ConfigError, match=r"links\[1\].rate_mbit: required on every link with link_share"):
        parse_config(doc, "cpe.yaml")
