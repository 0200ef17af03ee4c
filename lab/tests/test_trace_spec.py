"""Rate-trace specs and trace files (``mtlab.trace``): no lab needed, no root."""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path

import pytest

from mtlab.trace import (
    FileSpec,
    TraceError,
    WalkSpec,
    file_steps,
    mahimahi_steps,
    mean_rate,
    parse_spec,
    per_second,
    steps,
)


def test_walk_spec_parses_with_defaults_and_round_trips() -> None:
    spec = parse_spec("walk:seed=7,mean=5,min=2,max=10,step_ms=100-1000")
    assert spec == WalkSpec(seed=7, mean=5, min=2, max=10, step_ms=(100, 1000))
    assert parse_spec(spec.text()) == spec
    assert parse_spec("walk:") == WalkSpec()
    assert parse_spec("walk:step_ms=250") == WalkSpec(step_ms=(250, 250))
    assert parse_spec("none") is None


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("walk:sede=1", "sede"),
        ("walk:seed=x", "seed"),
        ("walk:mean=fast", "mean"),
        ("walk:min=6,mean=5", "min"),
        ("walk:step_ms=5-10", "step_ms"),
        ("walk:step_ms=900-100", "step_ms"),
        ("walk:seed", "key=value"),
        ("walk:revert=2", "revert"),
        ("file:", "path"),
        ("file:/x,interval_ms=1", "interval_ms"),
        ("file:/x,mean=-1", "mean"),
        ("lte", "walk"),
    ],
)
def test_bad_specs_name_the_key(text: str, names: str) -> None:
    with pytest.raises(TraceError, match=names) as exc:
        parse_spec(text)
    assert "\n" not in str(exc.value)


def test_same_seed_same_trace_other_seed_other_trace() -> None:
    spec = WalkSpec(seed=3)
    a = list(itertools.islice(steps(spec), 500))
    b = list(itertools.islice(steps(spec), 500))
    c = list(itertools.islice(steps(WalkSpec(seed=4)), 500))
    assert a == b
    assert a != c


def test_walk_stays_in_bounds_and_near_its_mean() -> None:
    spec = WalkSpec(seed=1, mean=5, min=2, max=10, step_ms=(100, 1000))
    got = list(itertools.islice(steps(spec), 5000))
    rates = [r for _, r in got]
    durations = [d for d, _ in got]
    assert min(rates) >= 2 and max(rates) <= 10
    assert min(durations) >= 0.1 and max(durations) <= 1.0
    weighted = sum(d * r for d, r in got) / sum(durations)
    assert 4.5 <= weighted <= 5.7, weighted  # clamping at 2 and 10 pulls it up a little
    assert statistics.pstdev(rates) > 1.0  # it really varies
    assert len(set(rates)) > 1000


def test_mahimahi_steps_count_packets_per_interval() -> None:
    # 0..999 ms: 1000 opportunities (12 Mbit/s); 1000..1999 ms: 500 (6 Mbit/s), repeated stamps
    lines = [str(t) for t in range(1000)] + [str(1000 + 2 * k) for k in range(500)] + ["2000"]
    got = mahimahi_steps(lines, 1000)
    assert [d for d, _ in got] == [1.0, 1.0]
    assert got[0][1] == pytest.approx(12.0)
    assert got[1][1] == pytest.approx(501 * 1500 * 8 / 1e6)
    same_ms = mahimahi_steps(["5", "5", "5", "10"], 10)
    assert same_ms == [(0.01, pytest.approx(4 * 1500 * 8 / 0.01 / 1e6))]


@pytest.mark.parametrize("bad", [["1", "x"], ["5", "3"], [], ["-1"]])
def test_mahimahi_bad_lines(bad: list[str]) -> None:
    with pytest.raises(TraceError):
        mahimahi_steps(bad, 100)


def test_file_trace_scales_to_a_mean_and_floors(tmp_path: Path) -> None:
    path = tmp_path / "t.down"
    # 1 s at 12 Mbit/s, 1 s with nothing
    path.write_text("".join(f"{t}\n" for t in range(1000)) + "2000\n")
    raw = file_steps(FileSpec(path, interval_ms=1000))
    assert raw[0][1] == pytest.approx(12.0) and raw[1][1] == pytest.approx(0.1)  # floored
    scaled = file_steps(FileSpec(path, interval_ms=1000, mean=3.0, min=0.5))
    assert scaled[0][1] == pytest.approx(12.0 * 3.0 / 6.006, rel=1e-3)
    assert scaled[1][1] == 0.5
    with pytest.raises(TraceError, match="cannot read"):
        file_steps(FileSpec(tmp_path / "missing"))
    spec = parse_spec(f"file:{path},interval_ms=500,mean=5")
    assert spec == FileSpec(path, 500.0, 5.0)
    assert list(itertools.islice(steps(spec), 8))[4:] == list(itertools.islice(steps(spec), 4))


def test_mean_rate_and_per_second_weigh_by_time() -> None:
    record = [(10.0, 2.0), (10.5, 6.0), (12.0, 4.0)]
    assert mean_rate(record, 10.0, 11.0) == pytest.approx(4.0)
    assert mean_rate(record, 10.0, 13.0) == pytest.approx((1 + 9 + 4) / 3)
    assert mean_rate(record, 9.0, 11.0) is None  # not covered
    assert per_second(record, 10.0, 3) == [4.0, 6.0, 4.0]
