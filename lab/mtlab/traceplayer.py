"""Trace player: make an access link's tbf rate follow a trace (``mtlab.trace``).

    python -m mtlab.traceplayer --spec SPEC --end NS:IFNAME [--end NS:IFNAME] \
        --queue-ms 50 --record FILE

Started by ``Lab.start_trace`` in the link's CPE namespace (so ``Lab.down()`` finds it there),
it holds one netlink socket per end (``IPRoute(netns=NS)``) and at each step replaces the tbf
(``tc replace``: same handle, new rate and a queue of ``--queue-ms`` at that rate) on every end.
Steps run on absolute monotonic deadlines, so the trace does not drift with the time the
changes take. Each applied rate is appended to ``--record`` as one JSON line
``{"t": CLOCK_MONOTONIC s, "wall": epoch s, "rate_mbit": r, "apply_ms": ...}``: what rate was in
force when (``Lab.trace_record``). SIGTERM/SIGINT end it (exit 0) with a ``{"t": ..., "stop":
true}`` line; restoring the link's static rate is the caller's job (``Lab.stop_trace``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError

from .trace import TraceError, parse_spec, steps

TBF_BURST = 16 * 1024  # as mtlab.shaping


def _apply(handles: list[tuple[object, int]], rate_mbit: float, queue_ms: float) -> None:
    for ipr, idx in handles:
        ipr.tc(  # type: ignore[attr-defined]
            "replace",
            "tbf",
            idx,
            handle="1:",
            rate=f"{int(rate_mbit * 1000)}kbit",
            burst=TBF_BURST,
            latency=f"{int(queue_ms * 1000)}us",
        )


def run(spec_text: str, ends: list[tuple[str, str]], queue_ms: float, record: Path) -> int:
    from pyroute2 import IPRoute

    spec = parse_spec(spec_text)
    if spec is None:
        print("traceplayer: spec 'none' plays nothing", file=sys.stderr)
        return 2
    source = steps(spec)
    first = next(source)  # reads a trace file before touching the link
    stop = threading.Event()

    def on_stop(_sig: int, _frm: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    handles = []
    for ns, ifname in ends:
        ipr = IPRoute(netns=ns)
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            print(f"traceplayer: no interface {ifname} in {ns}", file=sys.stderr)
            return 1
        handles.append((ipr, int(found[0])))
    n = 0
    with open(record, "a", buffering=1) as rec:
        deadline = time.monotonic()
        step: tuple[float, float] | None = first
        while not stop.is_set() and step is not None:
            duration, rate = step
            t0 = time.monotonic()
            _apply(handles, rate, queue_ms)
            apply_ms = (time.monotonic() - t0) * 1000.0
            rec.write(
                json.dumps(
                    {
                        "t": round(t0, 6),
                        "wall": round(time.time(), 6),
                        "rate_mbit": rate,
                        "apply_ms": round(apply_ms, 3),
                    }
                )
                + "\n"
            )
            if n == 0:
                print(f"traceplayer: playing {spec.text()} on {ends}", flush=True)
            n += 1
            deadline += duration
            stop.wait(max(0.0, deadline - time.monotonic()))
            step = next(source, None)
        rec.write(json.dumps({"t": round(time.monotonic(), 6), "stop": True}) + "\n")
    for ipr, _ in handles:
        ipr.close()  # type: ignore[attr-defined]
    print(f"traceplayer: stopped after {n} steps", flush=True)
    return 0


def _end(text: str) -> tuple[str, str]:
    ns, sep, ifname = text.partition(":")
    if not sep or not ns or not ifname:
        raise argparse.ArgumentTypeError(f"{text!r} is not NS:IFNAME")
    return ns, ifname


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(prog="mtlab.traceplayer", description=doc.split("\n")[0])
    parser.add_argument("--spec", required=True, help="walk:..., file:PATH,... (mtlab.trace)")
    parser.add_argument("--end", type=_end, action="append", required=True, help="NS:IFNAME")
    parser.add_argument("--queue-ms", type=float, default=50.0, help="tbf queue at each rate")
    parser.add_argument("--record", type=Path, required=True, help="JSON lines: rate per time")
    args = parser.parse_args(argv)
    try:
        return run(args.spec, args.end, args.queue_ms, args.record)
    except TraceError as exc:
        print(f"traceplayer: {exc}", file=sys.stderr)
        return 2
    except (OSError, NetlinkError) as exc:
        print(f"traceplayer: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
