"""A cellular link's data cap (sans-I/O): how much of this period's allowance is used, and is it spent?

Inputs: the wall-clock time (an aware ``datetime``) and byte-counter samples, each a cumulative count
under an identity (the agent passes the cellular interface's rx+tx byte counters under
``<boot id>/<ifindex>``; any monotonic counter works). Output: ``CapStatus`` (used, remaining, the
period) and ``CapEvent``s when something changed: the cap got spent, a new period began, the limit
was raised above the usage, the clock went back before the period's start.

Rules:
- A counter seen for the first time, or one that went backwards (agent restarted on another boot,
  interface re-created, counter reset), is a new base: counting starts from its current value.
- A period is ``[start, end)`` in the cap's time zone: monthly from ``reset_day`` 00:00 to the same
  day next month, or daily from 00:00. When ``now`` reaches the end - also after the agent was down
  across it - a new period begins with 0 bytes used. Bytes counted after that (including traffic
  while the agent was stopped, on the same boot) belong to the new period.
- The clock going back before the period's start never clears the usage (a wrong clock must not give
  free data): the period containing ``now`` is adopted and the bytes carried over.
- The state round-trips through a small JSON-able dict (``to_state``/``from_state``); a malformed
  one raises ``ValueError`` for the caller to log (and start from 0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

STATE_VERSION = 1
MAX_COUNTERS = 8  # identities remembered per link (oldest dropped first)

_UNITS = {
    "B": 1,
    "kB": 10**3,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_bytes(value: object) -> int:
    """``20GB`` (10^9), ``500MiB`` (2^20), ``1.5 TB``, ``123`` (bytes) -> bytes; ValueError says why."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 20GB or 500MiB, got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float):
        raise ValueError(f"expected a size like 20GB or 500MiB (a number alone is bytes), got {value!r}")
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m is None:
            raise ValueError(f"{value!r} is not a size like 20GB or 500MiB")
        number, unit = m.groups()
        unit = unit or "B"
        if unit not in _UNITS:
            if unit.endswith("b") and unit[:-1].upper() + "B" in _UNITS:
                raise ValueError(f"{value!r}: {unit} is bits; caps are in bytes (e.g. {number}{unit[:-1]}B)")
            raise ValueError(f"{value!r}: unknown unit {unit!r} (use B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)")
        n = int(float(number) * _UNITS[unit])
    else:
        raise ValueError(f"expected a size like 20GB or 500MiB, got {type(value).__name__}")
    if n <= 0:
        raise ValueError(f"{value!r} is not a positive size")
    return n


def format_bytes(n: float, digits: int = 1) -> str:
    """Decimal units as carriers bill: 20000000000 -> '20.0 GB' (digits=None-like via 0: '20 GB')."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.{digits}f} {unit}" if digits else f"{value:g} {unit}"
    return f"{n:.0f} B"


@dataclass(frozen=True)
class CapSettings:
    limit_bytes: int
    period: Literal["monthly", "daily"] = "monthly"
    reset_day: int = 1  # monthly: the period starts on this day of the month (1-28) at 00:00
    timezone: str = "UTC"  # IANA name: where 00:00 is


def zone(name: str) -> ZoneInfo:
    """The time zone ``name``; ValueError when this host does not know it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{name!r} is not a time zone this host knows (e.g. UTC, Europe/Berlin)") from None


def period_bounds(settings: CapSettings, now: datetime) -> tuple[datetime, datetime]:
    """The period ``[start, end)`` holding ``now`` (aware), in the cap's time zone."""
    tz = zone(settings.timezone)
    local = now.astimezone(tz)
    if settings.period == "daily":
        start = datetime(local.year, local.month, local.day, tzinfo=tz)
        nxt = start.date() + timedelta(days=1)
        return start, datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz)
    day = settings.reset_day
    year, month = local.year, local.month
    if local.day < day:
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    start = datetime(year, month, day, tzinfo=tz)
    ny, nm = (year + 1, 1) if month == 12 else (year, month + 1)
    return start, datetime(ny, nm, day, tzinfo=tz)


@dataclass(frozen=True)
class CapStatus:
    link: str
    limit_bytes: int
    used_bytes: int
    period_start: datetime
    period_end: datetime
    spent: bool

    @property
    def remaining_bytes(self) -> int:
        return max(self.limit_bytes - self.used_bytes, 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "link": self.link,
            "limit_bytes": self.limit_bytes,
            "used_bytes": self.used_bytes,
            "remaining_bytes": self.remaining_bytes,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "spent": self.spent,
        }


@dataclass(frozen=True)
class CapEvent:
    link: str
    kind: Literal["spent", "unspent", "period", "clock"]
    message: str


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M %Z")


class CapMeter:
    """One link's usage in the current period."""

    def __init__(self, link: str, settings: CapSettings, now: datetime) -> None:
        self.link = link
        self.settings = settings
        self.period_start, self.period_end = period_bounds(settings, now)
        self.used = 0
        self.spent = False
        self._counters: dict[str, int] = {}  # identity -> last value seen (insertion order = age)

    # ------------------------------------------------------------------ time and counters
    def sample(self, now: datetime, counters: dict[str, int]) -> list[CapEvent]:
        """Feed the current counter values; identities missing from ``counters`` are kept, not reset."""
        events = self._roll(now)
        for ident, value in counters.items():
            last = self._counters.pop(ident, None)
            if last is not None and value >= last:
                self.used += value - last
            self._counters[ident] = value  # a new or backwards counter is a new base
        while len(self._counters) > MAX_COUNTERS:
            del self._counters[next(iter(self._counters))]
        events += self._judge("")
        return events

    def _roll(self, now: datetime) -> list[CapEvent]:
        if now >= self.period_end:
            before, old_start = self.used, self.period_start
            self.period_start, self.period_end = period_bounds(self.settings, now)
            self.used = 0
            was_spent, self.spent = self.spent, False
            text = (
                f"{self.link} cap: new period from {_stamp(self.period_start)} to {_stamp(self.period_end)}"
                f" ({format_bytes(before)} used in the period from {_stamp(old_start)})"
            )
            return [CapEvent(self.link, "unspent" if was_spent else "period", text)]
        if now < self.period_start:
            old = self.period_start
            self.period_start, self.period_end = period_bounds(self.settings, now)
            return [
                CapEvent(
                    self.link,
                    "clock",
                    f"{self.link} cap: the clock ({_stamp(now)}) is before the period's start"
                    f" ({_stamp(old)}): period from {_stamp(self.period_start)} now, the"
                    f" {format_bytes(self.used)} used carried over",
                )
            ]
        return []

    def _judge(self, why: str) -> list[CapEvent]:
        spent = self.used >= self.settings.limit_bytes
        if spent == self.spent:
            return []
        self.spent = spent
        usage = (
            f"{format_bytes(self.used)} of {format_bytes(self.settings.limit_bytes, 0)} used in period"
            f" from {_stamp(self.period_start)} to {_stamp(self.period_end)}"
        )
        if spent:
            return [CapEvent(self.link, "spent", f"{self.link} cap spent: {usage}{why}")]
        return [CapEvent(self.link, "unspent", f"{self.link} cap no longer spent: {usage}{why}")]

    def status(self, now: datetime | None = None) -> CapStatus:
        """The current figures (with ``now``, after rolling the period over if it ended)."""
        if now is not None:
            self._roll(now)
        return CapStatus(
            self.link, self.settings.limit_bytes, self.used, self.period_start, self.period_end, self.spent
        )

    def reconfigure(self, settings: CapSettings, now: datetime) -> list[CapEvent]:
        """New cap settings (a reload): the usage is kept; a changed period is re-derived from now."""
        if settings == self.settings:
            return []
        old, self.settings = self.settings, settings
        events: list[CapEvent] = []
        if (old.period, old.reset_day, old.timezone) != (
            settings.period,
            settings.reset_day,
            settings.timezone,
        ):
            self.period_start, self.period_end = period_bounds(settings, now)
            events.append(
                CapEvent(
                    self.link,
                    "period",
                    f"{self.link} cap: period settings changed: period from {_stamp(self.period_start)}"
                    f" to {_stamp(self.period_end)}, the {format_bytes(self.used)} used carried over",
                )
            )
        return events + self._judge(" (cap changed)")

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> dict[str, Any]:
        return {
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "used_bytes": self.used,
            "spent": self.spent,
            "counters": dict(self._counters),
        }

    @classmethod
    def from_state(cls, link: str, settings: CapSettings, now: datetime, state: object) -> CapMeter:
        """A meter resumed from ``to_state``'s output; ValueError if the state is malformed.

        A period that ended meanwhile rolls over at once (the event comes with the first sample).
        """
        if not isinstance(state, dict):
            raise ValueError(f"link {link!r}: expected a mapping")
        meter = cls(link, settings, now)
        try:
            start = datetime.fromisoformat(state["period_start"])
            end = datetime.fromisoformat(state["period_end"])
            used = state["used_bytes"]
            spent = state["spent"]
            counters = state.get("counters", {})
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"link {link!r}: {type(exc).__name__}: {exc}") from None
        if start.tzinfo is None or end.tzinfo is None or not start < end:
            raise ValueError(f"link {link!r}: bad period {start} .. {end}")
        if isinstance(used, bool) or not isinstance(used, int) or used < 0 or not isinstance(spent, bool):
            raise ValueError(f"link {link!r}: bad used_bytes/spent")
        if not isinstance(counters, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in counters.items()
        ):
            raise ValueError(f"link {link!r}: bad counters")
        meter.period_start, meter.period_end = start, end
        meter.used, meter.spent = used, spent
        meter._counters = dict(list(counters.items())[-MAX_COUNTERS:])
        return meter

    def startup_events(self, now: datetime) -> list[CapEvent]:
        """After ``from_state``: roll over if the period ended while the agent was down, re-judge
        against the (maybe changed) limit."""
        return self._roll(now) + self._judge(" (limit changed since the last run)")


def file_state(meters: dict[str, CapMeter], saved_at: datetime) -> dict[str, Any]:
    """The persisted document for every link's meter."""
    return {
        "version": STATE_VERSION,
        "saved_at": saved_at.isoformat(),
        "links": {name: m.to_state() for name, m in meters.items()},
    }


def links_in_state(doc: object) -> dict[str, object]:
    """The per-link states of a loaded document; ValueError if it is not ours."""
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        raise ValueError(f"not a version {STATE_VERSION} cap state document")
    if not isinstance(doc.get("links"), dict):
        raise ValueError(f"not a version {STATE_VERSION} cap state document")
    links: dict[str, object] = doc["links"]
    return links
