import pytest

from mptcp_tunnel.batching import Batcher, after_short_send


def test_lone_packet_goes_out_as_soon_as_the_tun_is_empty() -> None:
    b = Batcher(max_bytes=65536, timeout_s=1.0)
    assert b.add(100, now=0.0) is False
    assert b.source_empty() is True  # no waiting for the 1 s timeout


def test_nothing_to_flush_when_empty() -> None:
    assert Batcher(65536, 1.0).source_empty() is False


def test_byte_threshold_flushes() -> None:
    b = Batcher(max_bytes=3000, timeout_s=1.0)
    assert b.add(1500, 0.0) is False
    assert b.add(1500, 0.0) is True
    assert (b.packets, b.bytes) == (2, 3000)
    b.flushed()
    assert (b.packets, b.bytes) == (0, 0)


def test_packet_count_threshold_flushes() -> None:
    b = Batcher(max_bytes=10**6, timeout_s=1.0, max_packets=3)
    assert [b.add(40, 0.0) for _ in range(3)] == [False, False, True]


def test_timeout_counts_from_the_first_packet_of_the_batch() -> None:
    b = Batcher(max_bytes=10**6, timeout_s=0.001)
    assert b.add(100, now=10.0) is False
    assert b.add(100, now=10.0005) is False
    assert b.add(100, now=10.0011) is True
    b.flushed()
    assert b.add(100, now=20.0) is False  # a new batch starts its own clock


def test_zero_timeout_sends_every_packet_alone() -> None:
    b = Batcher(max_bytes=10**6, timeout_s=0.0)
    assert b.add(100, 0.0) is True


@pytest.mark.parametrize("args", [(0, 1.0, 1), (100, -1.0, 1), (100, 1.0, 0)])
def test_invalid_limits_are_refused(args: tuple[int, float, int]) -> None:
    with pytest.raises(ValueError):
        Batcher(*args)


@pytest.mark.parametrize(
    ("lengths", "sent", "expected"),
    [
        ([100, 200, 300], 600, (None, 0, 3)),  # all sent
        ([100, 200, 300], 0, (None, 0, 0)),  # nothing taken: drop all
        ([100, 200, 300], 100, (None, 0, 1)),  # on a packet boundary
        ([100, 200, 300], 150, (1, 50, 2)),  # packet 1 cut: finish it, drop packet 2
        ([100, 200, 300], 599, (2, 299, 3)),  # last packet cut at its last byte
    ],
)
def test_after_short_send_finishes_the_cut_packet_and_drops_the_rest(
    lengths: list[int], sent: int, expected: tuple[int | None, int, int]
) -> None:
    assert after_short_send(lengths, sent) == expected
