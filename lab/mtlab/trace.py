"""Rate traces for an emulated access link (sans-I/O: specs in, rate steps out).

A trace is a sequence of steps ``(duration_s, rate_mbit)`` that the trace player
(``mtlab.traceplayer``) applies to the link's tbf one after the other. Two sources:

- ``walk:seed=1,mean=5,min=2,max=10,step_ms=100-1000[,sigma=1.5,revert=0.2]`` — a seeded,
  mean-reverting random walk: each step lasts a uniform random time in ``step_ms`` (one number
  for a fixed step), and the next rate is ``r + revert * (mean - r) + sigma * N(0, 1)``, clamped
  to ``[min, max]``. The same parameters and seed always give the same trace (Python's
  ``random.Random``, Mersenne Twister, stable across versions). Endless.
- ``file:PATH[,interval_ms=1000][,mean=M][,min=0.1]`` — a Mahimahi trace (the ``mm-link`` format
  of ravinet/mahimahi ``traces/``): one line per delivery opportunity, a millisecond timestamp
  from the start of the trace, each one 1500-byte packet; the same timestamp repeated means
  several packets in that millisecond. It becomes one step per ``interval_ms`` with the rate
  those opportunities carry, scaled so the trace's mean is ``M`` if ``mean`` is given, and no
  lower than ``min`` Mbit/s (tbf needs a rate above zero). Like ``mm-link``, it repeats at its end.
- ``none`` — no trace (the link's static rate).

``parse_spec`` raises ``TraceError`` with a one-line message naming the bad key.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MTU_BYTES = 1500  # one Mahimahi delivery opportunity


class TraceError(ValueError):
    """A trace spec or trace file that cannot be used (one-line message naming the key)."""


@dataclass(frozen=True)
class WalkSpec:
    seed: int = 1
    mean: float = 5.0
    min: float = 2.0
    max: float = 10.0
    step_ms: tuple[float, float] = (100.0, 1000.0)
    sigma: float = 1.5
    revert: float = 0.2

    def text(self) -> str:
        lo, hi = self.step_ms
        step = f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"
        return (
            f"walk:seed={self.seed},mean={self.mean:g},min={self.min:g},max={self.max:g},"
            f"step_ms={step},sigma={self.sigma:g},revert={self.revert:g}"
        )


@dataclass(frozen=True)
class FileSpec:
    path: Path
    interval_ms: float = 1000.0
    mean: float | None = None
    min: float = 0.1

    def text(self) -> str:
        out = f"file:{self.path},interval_ms={self.interval_ms:g},min={self.min:g}"
        return out + (f",mean={self.mean:g}" if self.mean is not None else "")


Spec = WalkSpec | FileSpec


def _number(key: str, value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise TraceError(f"trace: {key}={value!r} is not a number") from None
    if not math.isfinite(x):
        raise TraceError(f"trace: {key}={value!r} is not a finite number")
    return x


def _options(text: str, allowed: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (p for p in text.split(",") if p):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise TraceError(f"trace: {item!r} is not key=value")
        if key not in allowed:
            raise TraceError(f"trace: unknown key {key!r} (have: {', '.join(allowed)})")
        out[key] = value.strip()
    return out


def parse_spec(text: str) -> Spec | None:
    """``walk:...``, ``file:PATH,...`` or ``none`` (→ None); see the module docstring."""
    kind, _, rest = text.strip().partition(":")
    if kind == "none" and not rest:
        return None
    if kind == "walk":
        o = _options(rest, ("seed", "mean", "min", "max", "step_ms", "sigma", "revert"))
        d = WalkSpec()
        seed = d.seed
        if "seed" in o:
            try:
                seed = int(o["seed"])
            except ValueError:
                raise TraceError(f"trace: seed={o['seed']!r} is not an integer") from None
        lo, hi = d.step_ms
        if "step_ms" in o:
            a, sep, b = o["step_ms"].partition("-")
            lo = _number("step_ms", a)
            hi = _number("step_ms", b) if sep else lo
        spec = WalkSpec(
            seed=seed,
            mean=_number("mean", o["mean"]) if "mean" in o else d.mean,
            min=_number("min", o["min"]) if "min" in o else d.min,
            max=_number("max", o["max"]) if "max" in o else d.max,
            step_ms=(lo, hi),
            sigma=_number("sigma", o["sigma"]) if "sigma" in o else d.sigma,
            revert=_number("revert", o["revert"]) if "revert" in o else d.revert,
        )
        if not 0 < spec.min <= spec.mean <= spec.max:
            raise TraceError(
                f"trace: need 0 < min <= mean <= max (min={spec.min:g}, mean={spec.mean:g},"
                f" max={spec.max:g})"
            )
        if not 10 <= lo <= hi:
            raise TraceError(f"trace: step_ms={o.get('step_ms')!r} needs 10 <= low <= high")
        if spec.sigma < 0 or not 0 <= spec.revert <= 1:
            raise TraceError("trace: need sigma >= 0 and 0 <= revert <= 1")
        return spec
    if kind == "file":
        path_text, _, opts = rest.partition(",")
        if not path_text:
            raise TraceError("trace: file needs a path (file:PATH)")
        o = _options(opts, ("interval_ms", "mean", "min"))
        fspec = FileSpec(
            path=Path(path_text),
            interval_ms=_number("interval_ms", o["interval_ms"]) if "interval_ms" in o else 1000.0,
            mean=_number("mean", o["mean"]) if "mean" in o else None,
            min=_number("min", o["min"]) if "min" in o else 0.1,
        )
        if fspec.interval_ms < 10:
            raise TraceError("trace: interval_ms must be >= 10")
        if (fspec.mean is not None and fspec.mean <= 0) or fspec.min <= 0:
            raise TraceError("trace: mean and min must be > 0")
        return fspec
    raise TraceError(f"trace: {text!r} is not walk:..., file:PATH or none")


def walk(spec: WalkSpec) -> Iterator[tuple[float, float]]:
    """The endless random walk of ``spec``: ``(duration_s, rate_mbit)`` steps."""
    rng = random.Random(spec.seed)
    rate = spec.mean
    lo, hi = spec.step_ms
    while True:
        duration = rng.uniform(lo, hi) / 1000.0
        yield round(duration, 4), round(rate, 3)
        rate += spec.revert * (spec.mean - rate) + spec.sigma * rng.gauss(0.0, 1.0)
        rate = min(spec.max, max(spec.min, rate))


def mahimahi_steps(lines: Iterable[str], interval_ms: float) -> list[tuple[float, float]]:
    """A Mahimahi trace (one 1500-byte packet per line) as ``(duration_s, rate_mbit)`` steps of
    ``interval_ms``. The trace lasts until its last timestamp (at least 1 ms), as ``mm-link``
    replays it, so the last step may be shorter."""
    stamps: list[int] = []
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s:
            continue
        try:
            t = int(s)
        except ValueError:
            raise TraceError(f"trace: line {n}: {s[:40]!r} is not a millisecond count") from None
        if t < 0 or (stamps and t < stamps[-1]):
            raise TraceError(f"trace: line {n}: timestamp {t} goes backwards")
        stamps.append(t)
    if not stamps:
        raise TraceError("trace: the file holds no delivery opportunities")
    length_ms = max(stamps[-1], 1)
    bins = max(1, math.ceil(length_ms / interval_ms))
    counts = [0] * bins
    for t in stamps:
        counts[min(int(t // interval_ms), bins - 1)] += 1
    out = []
    for i, c in enumerate(counts):
        width_ms = min(interval_ms, length_ms - i * interval_ms)
        out.append((width_ms / 1000.0, c * MTU_BYTES * 8 / (width_ms / 1000.0) / 1e6))
    return out


def file_steps(spec: FileSpec) -> list[tuple[float, float]]:
    """One pass of a trace file as steps (scaled to ``spec.mean``, floored at ``spec.min``)."""
    try:
        with open(spec.path) as fh:
            raw = mahimahi_steps(fh, spec.interval_ms)
    except OSError as exc:
        raise TraceError(f"trace: cannot read {spec.path}: {exc.strerror}") from None
    scale = 1.0
    if spec.mean is not None:
        mean = sum(r * d for d, r in raw) / sum(d for d, _ in raw)
        if mean <= 0:
            raise TraceError(f"trace: {spec.path} carries nothing, cannot scale to a mean")
        scale = spec.mean / mean
    return [(round(d, 4), round(max(spec.min, r * scale), 3)) for d, r in raw]


def steps(spec: Spec) -> Iterator[tuple[float, float]]:
    """Endless steps of ``spec`` (a file trace repeats)."""
    if isinstance(spec, WalkSpec):
        return walk(spec)
    return itertools.cycle(file_steps(spec))


def mean_rate(record: list[tuple[float, float]], start: float, end: float) -> float | None:
    """Time-weighted mean rate (Mbit/s) between ``start`` and ``end`` of a player's record.

    ``record`` is ``[(time, rate_mbit), ...]`` in time order: each rate holds from its time until
    the next entry's (the last until ``end``). None when the record does not cover ``start``.
    """
    if end <= start or not record or record[0][0] > start:
        return None
    total = 0.0
    for i, (t, rate) in enumerate(record):
        t_next = record[i + 1][0] if i + 1 < len(record) else end
        a, b = max(t, start), min(t_next, end)
        if b > a:
            total += rate * (b - a)
    return total / (end - start)


def per_second(record: list[tuple[float, float]], start: float, seconds: int) -> list[float]:
    """Mean rate of each whole second from ``start`` (as ``mean_rate``)."""
    out = []
    for k in range(seconds):
        m = mean_rate(record, start + k, start + k + 1)
        if m is None:
            break
        out.append(round(m, 3))
    return out
