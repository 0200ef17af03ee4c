"""A quiet peer's liveness from the data-level ACKs of what we sent (sans-I/O).

With the QUIET_BGW feature the BGW sends no keepalives. The CPE still sends its own, and the BGW's
kernel acknowledges them at the MPTCP level (``MPTCP_INFO``: ``snd_una`` reaches ``write_seq``). A
reading where everything is acknowledged proves the peer was alive after our last write; a reading
where ``snd_una`` moved since the previous one proves it was alive after that previous reading.
Nothing else moves ``alive_at``: a peer whose kernel stops acknowledging is dead after the usual
number of keepalive intervals, as if its keepalives had stopped.
"""

from __future__ import annotations


class AckClock:
    def __init__(self, now: float) -> None:
        self.alive_at = now  # the latest moment the peer is known to have been alive
        self._read_at = now
        self._snd_una: int | None = None

    def reading(self, now: float, last_write: float, write_seq: int, snd_una: int) -> None:
        """One ``MPTCP_INFO`` reading taken at ``now``; ``last_write``: when we last wrote."""
        if snd_una == write_seq:
            self.alive_at = max(self.alive_at, min(last_write, now))
        elif self._snd_una is not None and snd_una != self._snd_una:
            self.alive_at = max(self.alive_at, self._read_at)
        self._read_at, self._snd_una = now, snd_una
