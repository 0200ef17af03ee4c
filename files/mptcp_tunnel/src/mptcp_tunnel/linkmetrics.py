"""Per-link subflow metrics for Prometheus, from the kernel's per-subflow TCP info (CPE side).

The kernel's counters belong to one subflow and restart with every new one (a link that comes back
gets a new subflow), so the Prometheus counters grow by the increase since the previous sample of
the same subflow (keyed by its local address and remote address), never go back.
"""

from __future__ import annotations

from mptcp_tunnel import metrics
from mptcp_tunnel.mptcp import SubflowInfo


class SubflowMetrics:
    def __init__(self, links: list[str]) -> None:
        self.links = links
        self._last: dict[tuple[str, str], tuple[int, int, int]] = {}

    def update(self, infos: list[SubflowInfo], link_of: dict[str, str], backup: dict[str, bool]) -> None:
        seen: dict[tuple[str, str], tuple[int, int, int]] = {}
        established = dict.fromkeys(self.links, 0)
        for sf in infos:
            link = link_of.get(sf.local)
            if link is None:
                continue
            key = (sf.local, sf.remote)
            now = (sf.bytes_sent, sf.bytes_received, sf.total_retrans)
            before = self._last.get(key, (0, 0, 0))
            if any(n < b for n, b in zip(now, before, strict=True)):
                before = (0, 0, 0)  # a new subflow on the same addresses
            seen[key] = now
            metrics.SUBFLOW_BYTES.labels(link, "sent").inc(now[0] - before[0])
            metrics.SUBFLOW_BYTES.labels(link, "received").inc(now[1] - before[1])
            metrics.SUBFLOW_RETRANS.labels(link).inc(now[2] - before[2])
            if sf.state == "established":
                established[link] += 1
                metrics.SUBFLOW_RTT.labels(link).set(sf.rtt_us / 1e6)
                metrics.SUBFLOW_CWND.labels(link).set(sf.cwnd)
        self._last = seen
        for link in self.links:
            metrics.SUBFLOW_UP.labels(link).set(established[link])
            metrics.SUBFLOW_BACKUP.labels(link).set(1 if backup.get(link) else 0)
