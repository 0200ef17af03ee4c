"""The cellular data cap: sizes, periods, the meter's counting and transitions, the usage file."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_config import example

from mptcp_tunnel import capio
from mptcp_tunnel.cap import CapMeter, CapSettings, file_state, format_bytes, parse_bytes, period_bounds
from mptcp_tunnel.config import ConfigError, parse_config

GB = 10**9
MONTHLY = CapSettings(limit_bytes=20 * GB, period="monthly", reset_day=15)
DAILY = CapSettings(limit_bytes=1000, period="daily")


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# ---------------------------------------------------------------------------------------- sizes
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20GB", 20 * GB),
        ("20 GB", 20 * GB),
        ("500MiB", 500 * 2**20),
        ("1.5TB", 1_500_000_000_000),
        ("3MB", 3_000_000),
        ("64kB", 64_000),
        ("2GiB", 2 * 2**30),
        ("123", 123),
        (4096, 4096),
    ],
)
def test_sizes_in_human_units(text: object, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("20Gb", "bits"),
        ("20 parsecs", "unknown unit"),
        ("GB", "not a size"),
        ("-5GB", "not a size"),
        ("0GB", "not a positive size"),
        (0, "not a positive size"),
        (1.5, "a number alone is bytes"),
        (True, "expected a size"),
        ([1], "expected a size"),
    ],
)
def test_bad_sizes_say_why(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_bytes(text)


def test_format_bytes_uses_decimal_units() -> None:
    assert format_bytes(20 * GB) == "20.0 GB"
    assert format_bytes(20 * GB, 0) == "20 GB"
    assert format_bytes(3_140_000) == "3.1 MB"
    assert format_bytes(12) == "12 B"


# ---------------------------------------------------------------------------------------- periods
def test_monthly_period_starts_on_the_reset_day() -> None:
    assert period_bounds(MONTHLY, at(2026, 11, 20, 13)) == (at(2026, 11, 15), at(2026, 12, 15))
    assert period_bounds(MONTHLY, at(2026, 11, 14, 23, 59)) == (at(2026, 10, 15), at(2026, 11, 15))
    assert period_bounds(MONTHLY, at(2026, 11, 15)) == (at(2026, 11, 15), at(2026, 12, 15))
    # across the year boundary, both ways
    assert period_bounds(MONTHLY, at(2027, 1, 3)) == (at(2026, 12, 15), at(2027, 1, 15))
    assert period_bounds(MONTHLY, at(2026, 12, 31)) == (at(2026, 12, 15), at(2027, 1, 15))


def test_daily_period_and_time_zone() -> None:
    assert period_bounds(DAILY, at(2026, 11, 25, 23, 31)) == (at(2026, 11, 25), at(2026, 11, 26))
    berlin = CapSettings(limit_bytes=1, period="daily", timezone="Europe/Berlin")
    start, end = period_bounds(berlin, at(2026, 11, 25, 23, 31))  # 00:31 on the 26th in Berlin
    assert start == at(2026, 11, 25, 23) and end == at(2026, 11, 26, 23)


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.integers(1, 28),
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
)
def test_the_period_holds_now_and_the_next_one_follows(now: datetime, day: int, tz: str) -> None:
    s = CapSettings(limit_bytes=1, period="monthly", reset_day=day, timezone=tz)
    start, end = period_bounds(s, now)
    assert start <= now < end
    assert start.day == day and start.hour == 0 and end.day == day
    assert timedelta(days=27) < end - start < timedelta(days=32)
    assert period_bounds(s, end) [0] == end  # fmt: skip


# ---------------------------------------------------------------------------------------- the meter
def test_counting_from_the_first_sample_and_spending() -> None:
    m = CapMeter("cellular", DAILY, at(2026, 11, 25, 10))
    assert m.sample(at(2026, 11, 25, 10), {"b/5": 10_000}) == []  # the first value is the base
    assert m.used == 0
    assert m.sample(at(2026, 11, 25, 10, 1), {"b/5": 10_600}) == []
    assert m.status().used_bytes == 600 and m.status().remaining_bytes == 400 and not m.spent
    events = m.sample(at(2026, 11, 25, 10, 2), {"b/5": 11_000})
    assert [e.kind for e in events] == ["spent"]
    assert events[0].message == (
        "cellular cap spent: 1.0 kB of 1 kB used in period from 2026-11-25 00:00 UTC to 2026-11-26 00:00 UTC"
    )
    assert m.spent and m.status().remaining_bytes == 0
    assert m.sample(at(2026, 11, 25, 10, 3), {"b/5": 12_000}) == []  # spent once, one event
    assert m.used == 2000  # and still counting: the carrier bills it


def test_a_counter_going_backwards_is_a_new_base() -> None:
    m = CapMeter("cellular", DAILY, at(2026, 11, 25, 10))
    m.sample(at(2026, 11, 25, 10), {"b/5": 500})
    m.sample(at(2026, 11, 25, 10), {"b/5": 700})
    m.sample(at(2026, 11, 25, 10), {"b/5": 100})  # interface counters reset
    assert m.used == 200
    m.sample(at(2026, 11, 25, 10), {"b/5": 150})
    assert m.used == 250
    m.sample(at(2026, 11, 25, 10), {"b/9": 5_000_000})  # a re-created interface: new identity
    m.sample(at(2026, 11, 25, 10), {"b/9": 5_000_010})
    assert m.used == 260
    m.sample(at(2026, 11, 25, 10), {})  # interface missing for a moment: bases kept
    m.sample(at(2026, 11, 25, 10), {"b/9": 5_000_020})
    assert m.used == 270


def test_the_period_rolls_over_and_the_cap_returns() -> None:
    m = CapMeter("cellular", DAILY, at(2026, 11, 25, 10))
    m.sample(at(2026, 11, 25, 10), {"c": 0})
    m.sample(at(2026, 11, 25, 11), {"c": 1500})
    assert m.spent
    events = m.sample(at(2026, 11, 26, 0, 0, 1), {"c": 1600})
    assert [e.kind for e in events] == ["unspent"]
    assert "new period from 2026-11-26 00:00 UTC" in events[0].message and "1.5 kB used" in events[0].message
    assert not m.spent and m.used == 100  # bytes after the rollover count in the new period


def test_a_reset_while_the_agent_was_down_rolls_over_at_start() -> None:
    m = CapMeter("cellular", MONTHLY, at(2026, 10, 20))
    m.sample(at(2026, 10, 20), {"c": 0})
    m.sample(at(2026, 10, 21), {"c": 25 * GB})
    assert m.spent
    state = json.loads(json.dumps(m.to_state()))
    resumed = CapMeter.from_state("cellular", MONTHLY, at(2026, 12, 1), state)  # down across Nov 15
    events = resumed.startup_events(at(2026, 12, 1))
    assert [e.kind for e in events] == ["unspent"]
    st_ = resumed.status()
    assert (st_.period_start, st_.period_end, st_.used_bytes) == (at(2026, 11, 15), at(2026, 12, 15), 0)


def test_a_clock_jump_back_keeps_the_usage() -> None:
    m = CapMeter("cellular", DAILY, at(2026, 11, 25, 10))
    m.sample(at(2026, 11, 25, 10), {"c": 0})
    m.sample(at(2026, 11, 25, 11), {"c": 1200})
    events = m.sample(at(2026, 11, 20, 9), {"c": 1300})  # NTP fixed a clock that ran ahead
    assert [e.kind for e in events] == ["clock"]
    assert m.used == 1300 and m.spent
    assert m.status().period_start == at(2026, 11, 20)
    # a jump forward within the period changes nothing; across the end, a new period
    assert m.sample(at(2026, 11, 20, 23), {"c": 1300}) == []
    assert [e.kind for e in m.sample(at(2026, 11, 21, 0, 5), {"c": 1300})] == ["unspent"]


def test_raising_or_lowering_the_limit_at_a_reload() -> None:
    m = CapMeter("cellular", DAILY, at(2026, 11, 25, 10))
    m.sample(at(2026, 11, 25, 10), {"c": 0})
    m.sample(at(2026, 11, 25, 10), {"c": 800})
    events = m.reconfigure(CapSettings(limit_bytes=500, period="daily"), at(2026, 11, 25, 10))
    assert [e.kind for e in events] == ["spent"] and events[0].message.endswith("(cap changed)")
    events = m.reconfigure(CapSettings(limit_bytes=5000, period="daily"), at(2026, 11, 25, 10))
    assert [e.kind for e in events] == ["unspent"]
    events = m.reconfigure(CapSettings(limit_bytes=5000, period="monthly"), at(2026, 11, 25, 10))
    assert [e.kind for e in events] == ["period"] and m.used == 800
    assert m.status().period_start == at(2026, 11, 1)


# Any run of samples: the usage is the sum of every increase of a counter over its previous value
# (a decrease is a new base), never negative, and spent exactly when it reaches the limit.
@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 10_000)), max_size=60),
    st.integers(1, 100_000),
)
def test_usage_is_the_sum_of_increases(samples: list[tuple[str, int]], limit: int) -> None:
    s = CapSettings(limit_bytes=limit, period="daily")
    now = at(2026, 11, 25, 12)
    m = CapMeter("cell", s, now)
    last: dict[str, int] = {}
    expected = 0
    spent_events = 0
    for ident, value in samples:
        if ident in last and value >= last[ident]:
            expected += value - last[ident]
        last[ident] = value
        spent_events += sum(1 for e in m.sample(now, {ident: value}) if e.kind == "spent")
    assert m.used == expected
    assert m.spent == (expected >= limit)
    assert spent_events == (1 if expected >= limit else 0)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 10**13),
    st.dictionaries(st.text(min_size=1, max_size=40), st.integers(0, 2**64 - 1), max_size=8),
    st.booleans(),
)
def test_state_round_trips_through_json(used: int, counters: dict[str, int], spent: bool) -> None:
    now = at(2026, 11, 25, 12)
    m = CapMeter("cellular", MONTHLY, now)
    m.used, m.spent = used, spent
    m._counters = dict(counters)
    doc = json.loads(json.dumps(file_state({"cellular": m}, now)))
    back = CapMeter.from_state("cellular", MONTHLY, now, doc["links"]["cellular"])
    assert back.to_state() == m.to_state()
    assert back.status() == m.status()


@pytest.mark.parametrize(
    "state",
    [
        None,
        [],
        {},
        {
            "period_start": "yesterday",
            "period_end": "2026-12-15T00:00:00+00:00",
            "used_bytes": 1,
            "spent": False,
        },
        {
            "period_start": "2026-11-15T00:00:00",
            "period_end": "2026-12-15T00:00:00",
            "used_bytes": 1,
            "spent": False,
        },
        {
            "period_start": "2026-12-15T00:00:00+00:00",
            "period_end": "2026-11-15T00:00:00+00:00",
            "used_bytes": 1,
            "spent": False,
        },
        {
            "period_start": "2026-11-15T00:00:00+00:00",
            "period_end": "2026-12-15T00:00:00+00:00",
            "used_bytes": -1,
            "spent": False,
        },
        {
            "period_start": "2026-11-15T00:00:00+00:00",
            "period_end": "2026-12-15T00:00:00+00:00",
            "used_bytes": 1,
            "spent": "yes",
        },
        {
            "period_start": "2026-11-15T00:00:00+00:00",
            "period_end": "2026-12-15T00:00:00+00:00",
            "used_bytes": 1,
            "spent": False,
            "counters": {"x": "many"},
        },
    ],
)
def test_malformed_states_are_refused(state: Any) -> None:
    with pytest.raises(ValueError):
        CapMeter.from_state("cellular", MONTHLY, at(2026, 11, 25), state)


# ---------------------------------------------------------------------------------------- the file
def test_atomic_save_and_load(tmp_path: Path) -> None:
    now = at(2026, 11, 25, 12)
    m = CapMeter("cellular", MONTHLY, now)
    m.sample(now, {"c": 5})
    m.sample(now, {"c": 25 * GB})
    path = tmp_path / "sub" / "cap-usage.json"
    capio.save_atomic(path, file_state({"cellular": m}, now))
    assert [p.name for p in path.parent.iterdir()] == ["cap-usage.json"]  # no temporary left
    links = capio.load_links(path)
    back = CapMeter.from_state("cellular", MONTHLY, now, links["cellular"])
    assert back.spent and back.used == 25 * GB - 5


@pytest.mark.parametrize(
    "content", [b"", b"{not json", b'{"version": 99, "links": {}}', b"\xff\xfe", b"[1,2]"]
)
def test_a_corrupt_file_is_a_warning_and_zero(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cap-usage.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="mptcp_tunnel.cap"):
        assert capio.load_links(path) == {}
    assert "is corrupt" in caplog.text and "counting from 0 used" in caplog.text


def test_a_missing_file_is_silent_and_an_unreadable_one_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mptcp_tunnel.cap"):
        assert capio.load_links(tmp_path / "none.json") == {}
        assert caplog.text == ""
        assert capio.load_links(tmp_path) == {}  # a directory: unreadable as a file
    assert "unreadable" in caplog.text


def _cpe_with_cap(tmp_path: Path, cap: dict[str, Any]) -> Any:
    doc = example("cpe.yaml")
    doc["tunnel"]["encryption"] = "none"
    doc["cpe"]["links"][1]["cap"] = cap
    doc["cpe"]["state_dir"] = str(tmp_path)
    return parse_config(doc, "/etc/cpe.yaml").cpe


def test_tracker_counts_a_real_interface_and_survives_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cpe = _cpe_with_cap(tmp_path, {"bytes": "1GB", "period": "daily"})
    link = cpe.links[1]
    cpe = type(cpe)(
        **{**cpe.__dict__, "links": (cpe.links[0], type(link)(**{**link.__dict__, "interface": "lo"}))}
    )
    tracker = capio.CapTracker(cpe)
    tracker.tick()
    base = tracker.meters["cellular"].used
    os.system("ping -c 3 -i 0.01 -q 127.0.0.1 >/dev/null 2>&1")  # noqa: S605,S607 (real traffic on lo)
    tracker.tick()
    used = tracker.meters["cellular"].used
    assert used - base >= 6 * 84  # 3 echo requests and 3 replies, counted rx and tx on lo
    tracker.close()
    saved = json.loads((tmp_path / "cap-usage.json").read_text())
    assert saved["links"]["cellular"]["used_bytes"] >= used
    with caplog.at_level(logging.INFO, logger="mptcp_tunnel.cap"):
        again = capio.CapTracker(cpe)
    assert again.meters["cellular"].used >= used
    assert "cellular cap: " in caplog.text and "of 1 GB used" in caplog.text


def test_tracker_with_a_corrupt_file_starts_from_zero(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "cap-usage.json").write_text('{"version": 1, "links": {"cellular": {"used_bytes": "lots"}}}')
    cpe = _cpe_with_cap(tmp_path, {"bytes": "1GB"})
    with caplog.at_level(logging.WARNING, logger="mptcp_tunnel.cap"):
        tracker = capio.CapTracker(cpe)
    assert tracker.meters["cellular"].used == 0
    assert "counting from 0 used" in caplog.text


def test_spent_links_for_setup_network(tmp_path: Path) -> None:
    cpe = _cpe_with_cap(tmp_path, {"bytes": "1kB", "period": "daily"})
    assert capio.spent_links(cpe) == frozenset()
    now = capio.now_utc()
    m = CapMeter("cellular", cpe.links[1].cap, now)
    m.sample(now, {"c": 0})
    m.sample(now, {"c": 5000})
    capio.save_atomic(tmp_path / "cap-usage.json", file_state({"cellular": m}, now))
    assert capio.spent_links(cpe) == frozenset({"cellular"})


def test_an_unwritable_state_dir_is_logged_once_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cpe = _cpe_with_cap(blocker, {"bytes": "1GB"})  # state_dir below a regular file
    tracker = capio.CapTracker(cpe)
    with caplog.at_level(logging.ERROR, logger="mptcp_tunnel.cap"):
        tracker.save()
        tracker.save()
    assert caplog.text.count("cannot save the cap usage") == 1


# ---------------------------------------------------------------------------------------- config
def test_cap_config_is_parsed() -> None:
    doc = example("cpe.yaml")
    doc["cpe"]["links"][1]["cap"] = {"bytes": "20GB", "reset_day": 15, "timezone": "Europe/Berlin"}
    cpe = parse_config(doc, "/etc/cpe.yaml").cpe
    assert cpe is not None and cpe.state_dir == "/var/lib/mptcp-tunnel"
    assert cpe.links[1].cap == CapSettings(20 * GB, "monthly", 15, "Europe/Berlin")
    assert cpe.links[0].cap is None


@pytest.mark.parametrize(
    ("link", "cap", "message"),
    [
        (1, {"bytes": "20Gb"}, r"cpe.links\[1\].cap.bytes: '20Gb': Gb is bits"),
        (1, {"bytes": "lots"}, r"cpe.links\[1\].cap.bytes: 'lots' is not a size"),
        (1, {}, r"cpe.links\[1\].cap.bytes: missing \(required\)"),
        (
            1,
            {"bytes": "1GB", "period": "weekly"},
            r"cpe.links\[1\].cap.period: 'weekly' is not one of monthly, daily",
        ),
        (1, {"bytes": "1GB", "reset_day": 31}, r"cpe.links\[1\].cap.reset_day: 31 is out of range 1..28"),
        (
            1,
            {"bytes": "1GB", "period": "daily", "reset_day": 3},
            r"cpe.links\[1\].cap.reset_day: only for period",
        ),
        (
            1,
            {"bytes": "1GB", "timezone": "Mars/Olympus"},
            r"cpe.links\[1\].cap.timezone: 'Mars/Olympus' is not",
        ),
        (1, {"bytes": "1GB", "limit": 3}, r"cpe.links\[1\].cap.limit: unknown key"),
        (1, "20GB", r"cpe.links\[1\].cap: expected a mapping, got str"),
        (0, {"bytes": "1GB"}, r"cpe.links\[0\].cap: only cellular links take a data cap"),
    ],
)
def test_bad_cap_config_names_the_key(link: int, cap: object, message: str) -> None:
    doc = example("cpe.yaml")
    doc["cpe"]["links"][link]["cap"] = cap
    with pytest.raises(ConfigError, match="^/etc/cpe.yaml: " + message):
        parse_config(doc, "/etc/cpe.yaml")


def test_state_dir_must_be_absolute() -> None:
    doc = example("cpe.yaml")
    doc["cpe"]["state_dir"] = "var/lib"
    with pytest.raises(ConfigError, match=r"cpe.state_dir: 'var/lib' must be an absolute path"):
        parse_config(doc, "/etc/cpe.yaml")


def test_two_cellular_links_each_with_its_own_cap() -> None:
    doc = example("cpe.yaml")
    second = dict(doc["cpe"]["links"][1], name="cell2", interface="wan_cell2", address="10.3.0.1", table=103)
    second.pop("gateway")
    doc["cpe"]["links"].append(second)
    doc["cpe"]["links"][1]["cap"] = {"bytes": "20GB"}
    doc["cpe"]["links"][2]["cap"] = {"bytes": "5GB", "period": "daily"}
    cpe = parse_config(doc, "/etc/cpe.yaml").cpe
    assert cpe is not None
    assert [lk.cap.limit_bytes if lk.cap else None for lk in cpe.links] == [None, 20 * GB, 5 * GB]


# ---------------------------------------------------------------------------------------- status
def test_status_shows_the_cap() -> None:
    from mptcp_tunnel import status

    doc = example("cpe.yaml")
    doc["cpe"]["links"][1]["cap"] = {"bytes": "4MB", "period": "daily"}
    cpe = parse_config(doc, "/etc/cpe.yaml").cpe
    assert cpe is not None
    m = CapMeter("cellular", cpe.links[1].cap, at(2026, 11, 25, 12))  # type: ignore[arg-type]
    m.sample(at(2026, 11, 25, 12), {"c": 0})
    m.sample(at(2026, 11, 25, 12), {"c": 4_200_000})
    snap = status.cpe_snapshot(
        cpe_id="cpe1",
        policy="aggregate",
        session_up=True,
        session_via="fixed",
        links=cpe.links,
        link_up={"fixed": True, "cellular": True},
        link_reason={},
        backup={"fixed": False, "cellular": True},
        subflows=[],
        tunnel_bytes={"tx": 0, "rx": 0},
        caps=[m.status().as_dict()],
    )
    snap = json.loads(json.dumps(snap))  # what `status --json` prints
    assert snap["caps"] == [
        {
            "link": "cellular",
            "limit_bytes": 4_000_000,
            "used_bytes": 4_200_000,
            "remaining_bytes": 0,
            "period_start": "2026-11-25T00:00:00+00:00",
            "period_end": "2026-11-26T00:00:00+00:00",
            "spent": True,
        }
    ]
    text = status.render(snap)
    head, row = text.splitlines()[-2:]
    assert head.split() == ["cap", "used", "limit", "used", "%", "remaining", "period", "spent"]
    assert row.split() == [
        "cellular", "4.2", "MB", "4", "MB", "105", "%", "0", "B",
        "2026-11-25", "00:00", "..", "2026-11-26", "00:00", "SPENT", "(backup", "only)",
    ]  # fmt: skip


@pytest.mark.parametrize("policy", ["aggregate", "backup", "overflow"])
def test_a_spent_cap_makes_cellular_backup_under_every_policy(policy: str) -> None:
    from mptcp_tunnel.netsetup import FLAG_BACKUP, endpoint_flags

    doc = example("cpe.yaml")
    doc["cpe"]["policy"] = policy
    doc["cpe"]["links"][1]["cap"] = {"bytes": "1GB"}
    cfg = parse_config(doc, "/etc/cpe.yaml")
    assert cfg.cpe is not None
    fixed, cell = cfg.cpe.links
    for overflowing in (False, True):
        spent = {"cellular"}
        assert endpoint_flags(cfg, cell, overflowing, frozenset(spent)) & FLAG_BACKUP
        assert not endpoint_flags(cfg, fixed, overflowing, frozenset(spent)) & FLAG_BACKUP
    # not spent: the policy decides as before
    normal = bool(endpoint_flags(cfg, cell, False, frozenset()) & FLAG_BACKUP)
    assert normal == (policy != "aggregate")
    assert bool(endpoint_flags(cfg, cell, True, frozenset()) & FLAG_BACKUP) == (policy == "backup")


def test_tracker_without_the_interface_samples_nothing(tmp_path: Path) -> None:
    cpe = _cpe_with_cap(tmp_path, {"bytes": "1GB", "period": "daily"})
    link = cpe.links[1]
    gone = type(link)(**{**link.__dict__, "interface": "nosuch0"})
    cpe = type(cpe)(**{**cpe.__dict__, "links": (cpe.links[0], gone)})
    tracker = capio.CapTracker(cpe)
    assert tracker._counters(gone) == {}
    assert tracker.tick() == [] and tracker.meters["cellular"].used == 0
    tracker.close()
