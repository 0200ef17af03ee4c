"""The I/O side of the cellular data caps: interface byte counters, the usage file, logs and metrics.

What is counted: the cellular interface's kernel counters (rx_bytes + tx_bytes, IFLA_STATS64), read
over rtnetlink once a second. They hold everything the carrier bills that this host sends or receives
on the link: the subflows' payload *and* their TCP/IP headers, MPTCP options, the tunnel's framing and
TLS records, retransmissions, pure ACKs, and the failover probes (ICMP echo, ~0.9 kB/s at the default
100 ms interval: ~2.4 GB a month). The per-subflow MPTCP_TCPINFO byte counters the metrics use count
TCP payload only (3-5 % less at full-size segments, nothing for ACKs and probes) and restart with every
subflow. A counter is identified by ``<boot id>/<ifindex>``: after an agent restart on the same boot
the traffic carried while it was stopped is counted too; after a reboot or a re-created interface
counting starts from the new counter's value.

The usage survives restarts in ``<state_dir>/cap-usage.json``: written atomically (temporary file,
fsync, rename, fsync of the directory) at most every SAVE_EVERY_S, at every cap event and at shutdown.
A file that cannot be read or parsed is logged and counted as 0 used; a write that fails is logged
(once until it works again) and never stops the agent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from mptcp_tunnel import metrics
from mptcp_tunnel.cap import (
    CapEvent,
    CapMeter,
    CapSettings,
    CapStatus,
    file_state,
    format_bytes,
    links_in_state,
)
from mptcp_tunnel.config import CpeSettings, Link

log = logging.getLogger("mptcp_tunnel.cap")

STATE_FILE = "cap-usage.json"
SAVE_EVERY_S = 60.0
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def state_path(state_dir: str) -> Path:
    return Path(state_dir) / STATE_FILE


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown-boot"


def now_utc() -> datetime:
    return datetime.now(UTC)


def load_links(path: Path) -> dict[str, object]:
    """The per-link states saved in ``path``; {} (with a warning) when missing, unreadable or corrupt."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("cap usage file %s unreadable (%s): counting from 0 used", path, exc.strerror or exc)
        return {}
    try:
        return links_in_state(json.loads(text))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        log.warning("cap usage file %s is corrupt (%s): counting from 0 used", path, exc)
        return {}


def save_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as JSON so that a crash leaves either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def spent_links(cpe: CpeSettings) -> frozenset[str]:
    """Links whose cap the usage file says is spent in the current period (for ``setup-network``,
    which must not clear a backup flag the running agent set)."""
    capped = {link.name: link.cap for link in cpe.links if link.cap is not None}
    if not capped:
        return frozenset()
    now = now_utc()
    out = set()
    for name, state in load_links(state_path(cpe.state_dir)).items():
        settings = capped.get(name)
        if settings is None:
            continue
        try:
            meter = CapMeter.from_state(name, settings, now, state)
        except ValueError:
            continue
        meter.startup_events(now)
        if meter.spent:
            out.add(name)
    return frozenset(out)


class CapTracker:
    """Every capped link's meter, fed from the interface counters once per tick."""

    def __init__(self, cpe: CpeSettings) -> None:
        self.cpe = cpe
        self.meters: dict[str, CapMeter] = {}
        self.boot = boot_id()
        self._ipr: IPRoute | None = None
        self._last_save = time.monotonic()
        self._save_failed = False
        self._dirty = False
        self._configure(cpe, first=True)

    @property
    def path(self) -> Path:
        return state_path(self.cpe.state_dir)

    @property
    def spent(self) -> frozenset[str]:
        return frozenset(name for name, m in self.meters.items() if m.spent)

    def _capped(self, cpe: CpeSettings) -> dict[str, tuple[Link, CapSettings]]:
        return {link.name: (link, link.cap) for link in cpe.links if link.cap is not None}

    def _configure(self, cpe: CpeSettings, first: bool) -> None:
        now = now_utc()
        wanted = self._capped(cpe)
        for name in list(self.meters):
            if name not in wanted:
                log.info("%s cap removed: the link follows policy %s", name, cpe.policy)
                del self.meters[name]
                for metric in (metrics.CAP_USED, metrics.CAP_LIMIT, metrics.CAP_SPENT, metrics.CAP_END):
                    with contextlib.suppress(KeyError):
                        metric.remove(name)
        saved = load_links(self.path) if first or any(n not in self.meters for n in wanted) else {}
        events: list[CapEvent] = []
        for name, (_link, settings) in wanted.items():
            meter = self.meters.get(name)
            if meter is not None:
                events += meter.reconfigure(settings, now)
                continue
            state = saved.get(name)
            if state is None:
                meter = CapMeter(name, settings, now)
            else:
                try:
                    meter = CapMeter.from_state(name, settings, now, state)
                except ValueError as exc:
                    log.warning("cap usage file %s: %s: counting from 0 used", self.path, exc)
                    meter = CapMeter(name, settings, now)
                events += meter.startup_events(now)
            self.meters[name] = meter
            st = meter.status()
            log.info(
                "%s cap: %s of %s used in the period from %s to %s%s",
                name,
                format_bytes(st.used_bytes),
                format_bytes(st.limit_bytes, 0),
                st.period_start.strftime("%Y-%m-%d %H:%M %Z"),
                st.period_end.strftime("%Y-%m-%d %H:%M %Z"),
                ": spent, the link carries traffic only while the others are down" if st.spent else "",
            )
        self._log(events)
        self._publish()
        if events:
            self.save()

    def reconfigure(self, cpe: CpeSettings) -> None:
        if cpe.state_dir != self.cpe.state_dir and self.meters:
            log.info("cap usage now kept in %s", state_path(cpe.state_dir))
            self._dirty = True
        self.cpe = cpe
        self._configure(cpe, first=False)

    def _counters(self, link: Link) -> dict[str, int]:
        try:
            if self._ipr is None:
                self._ipr = IPRoute()
            found = self._ipr.get_links(ifname=link.interface)
        except NetlinkError:  # no such interface (a modem unplugged): no sample, the base is kept
            return {}
        except Exception:  # a broken socket: a new one next tick
            if self._ipr is not None:
                with contextlib.suppress(Exception):
                    self._ipr.close()
            self._ipr = None
            return {}
        if not found:
            return {}
        stats = found[0].get_attr("IFLA_STATS64") or {}
        total = int(stats.get("rx_bytes", 0)) + int(stats.get("tx_bytes", 0))
        return {f"{self.boot}/{found[0]['index']}": total}

    def tick(self) -> list[CapEvent]:
        """Sample every capped link; returns the events (already logged). Saves when due."""
        if not self.meters:
            return []
        now = now_utc()
        events: list[CapEvent] = []
        for name, meter in self.meters.items():
            link = next(lk for lk in self.cpe.links if lk.name == name)
            before = meter.used
            events += meter.sample(now, self._counters(link))
            self._dirty = self._dirty or meter.used != before
        self._log(events)
        self._publish()
        if events or (self._dirty and time.monotonic() - self._last_save >= SAVE_EVERY_S):
            self.save()
        return events

    def save(self) -> None:
        if not self.meters:
            return
        self._last_save = time.monotonic()
        try:
            save_atomic(self.path, file_state(self.meters, now_utc()))
        except OSError as exc:
            if not self._save_failed:
                log.error(
                    "cannot save the cap usage to %s: %s (what was used since the last save is lost at a"
                    " restart)",
                    self.path,
                    exc.strerror or exc,
                )
            self._save_failed = True
            return
        if self._save_failed:
            log.info("cap usage saved to %s again", self.path)
        self._save_failed = False
        self._dirty = False

    def close(self) -> None:
        """At shutdown: a last sample and save."""
        if self.meters:
            self.tick()
            self.save()
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
            self._ipr = None

    def statuses(self) -> list[CapStatus]:
        """For ``status`` (the control thread): a copy of the meters first, a reload may change them."""
        return [m.status() for m in list(self.meters.values())]

    def _publish(self) -> None:
        for name, meter in self.meters.items():
            st = meter.status()
            metrics.CAP_USED.labels(name).set(st.used_bytes)
            metrics.CAP_LIMIT.labels(name).set(st.limit_bytes)
            metrics.CAP_SPENT.labels(name).set(1 if st.spent else 0)
            metrics.CAP_END.labels(name).set(st.period_end.timestamp())

    def _log(self, events: list[CapEvent]) -> None:
        for ev in events:
            if ev.kind == "clock":
                log.warning("%s", ev.message)
            elif ev.kind == "spent":
                log.warning(
                    "%s: backup flag set, the link carries traffic only while the others are down", ev.message
                )
            elif ev.kind == "unspent":
                log.info("%s: the link follows policy %s again", ev.message, self.cpe.policy)
            else:
                log.info("%s", ev.message)
