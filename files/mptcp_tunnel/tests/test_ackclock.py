"""A quiet peer's liveness from the data-level ACKs of what we sent (ackclock.py)."""

from mptcp_tunnel.ackclock import AckClock


def test_everything_acknowledged_proves_the_peer_alive_after_the_last_write() -> None:
    clock = AckClock(now=0.0)
    clock.reading(now=10.5, last_write=10.0, write_seq=120, snd_una=120)
    assert clock.alive_at == 10.0


def test_acknowledged_progress_proves_the_peer_alive_after_the_previous_reading() -> None:
    clock = AckClock(now=0.0)
    clock.reading(now=5.0, last_write=4.9, write_seq=9_000, snd_una=1_000)  # data in flight
    assert clock.alive_at == 0.0  # a first reading with data outstanding proves nothing yet
    clock.reading(now=6.0, last_write=5.9, write_seq=20_000, snd_una=4_000)  # more acked since
    assert clock.alive_at == 5.0


def test_a_peer_that_stops_acknowledging_is_not_kept_alive() -> None:
    clock = AckClock(now=0.0)
    clock.reading(now=10.2, last_write=10.0, write_seq=40, snd_una=40)
    for t in (20.0, 20.2, 30.0, 40.0):  # our keepalives at 20, 30, 40 are never acknowledged
        clock.reading(now=t + 0.2, last_write=t, write_seq=60, snd_una=40)
    assert clock.alive_at == 10.0


def test_alive_at_never_goes_back() -> None:
    clock = AckClock(now=50.0)
    clock.reading(now=51.0, last_write=30.0, write_seq=8, snd_una=8)  # an old write, all acked
    assert clock.alive_at == 50.0
