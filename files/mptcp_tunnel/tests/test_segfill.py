"""Cutting writes at segment boundaries (segfill.py) and the engine's helpers for it."""

from mptcp_tunnel.engine.session import _prefix, _suffix
from mptcp_tunnel.segfill import (
    CUT_BELOW,
    DSS_BYTES,
    DUE_SLACK_S,
    HOLD_S,
    SegmentFill,
    segment_payload,
)

MSS = 1448
UNIT = MSS - DSS_BYTES


def test_segment_payload_leaves_room_for_the_dss_option() -> None:
    assert segment_payload(MSS) == UNIT
    assert segment_payload(0) == 0  # unknown: no cutting
    assert segment_payload(500) == 0


def test_an_idle_stream_is_never_held() -> None:
    fill = SegmentFill(MSS)
    assert fill.cut(3 * UNIT + 100, 10.0) == 3 * UNIT + 100  # the first write after a pause
    fill.wrote(10.0)
    assert fill.cut(3 * UNIT + 100, 10.0 + HOLD_S) == 3 * UNIT + 100


def test_a_busy_stream_is_cut_at_the_last_segment_boundary() -> None:
    fill = SegmentFill(MSS)
    fill.wrote(10.0)
    assert fill.cut(3 * UNIT + 100, 10.001) == 3 * UNIT
    assert fill.cut(3 * UNIT, 10.001) == 3 * UNIT


def test_a_write_under_one_segment_goes_at_once() -> None:
    fill = SegmentFill(MSS)
    fill.wrote(10.0)
    assert fill.cut(UNIT - 1, 10.001) == UNIT - 1  # a ping behind bulk data is not held


def test_unknown_mss_cuts_nothing_and_a_new_mss_applies() -> None:
    fill = SegmentFill(0)
    fill.wrote(10.0)
    assert fill.cut(5000, 10.001) == 5000
    fill.set_mss(1280)
    assert fill.cut(5000, 10.001) == 5000 - 5000 % (1280 - DSS_BYTES)


def test_prefix_and_suffix_split_a_gather_list() -> None:
    parts = [memoryview(b"abc"), memoryview(b"defg"), memoryview(b"hi")]
    assert b"".join(_prefix(parts, 5)) == b"abcde"
    assert b"".join(_suffix(parts, 5)) == b"efghi"
    assert b"".join(_prefix(parts, 9)) == b"abcdefghi"
    assert _prefix(parts, 0) == [] and _suffix(parts, 0) == []


def test_a_large_write_is_not_cut() -> None:
    fill = SegmentFill(MSS)
    fill.wrote(10.0)
    assert fill.cut(CUT_BELOW + 100, 10.001) == CUT_BELOW + 100  # line rate: one partial in 11+


def test_held_bytes_are_due_hold_s_after_they_were_held() -> None:
    fill = SegmentFill(MSS)
    fill.held(10.0)
    assert abs(fill.due_in(10.001) - (HOLD_S - 0.001)) < 1e-9  # the timer re-arms for the rest
    assert fill.due_in(10.0 + HOLD_S - DUE_SLACK_S / 2) == 0.0  # close enough: send now
    assert fill.due_in(10.0 + 2 * HOLD_S) == 0.0


def test_a_socket_that_holds_data_of_its_own_is_not_cut() -> None:
    fill = SegmentFill(MSS)
    fill.wrote(10.0, backlog=True)  # the last write was not taken whole
    assert fill.cut(3 * UNIT + 100, 10.001) == 3 * UNIT + 100
    fill.wrote(10.001)
    assert fill.cut(3 * UNIT + 100, 10.002) == 3 * UNIT
