"""NFQUEUE delayer: hold every packet of one netfilter queue for a fixed time, then accept it.

Runs inside the *receiving* network namespace of an emulated link, fed by
``iptables -t mangle -A PREROUTING -i DEV -j NFQUEUE --queue-num N`` (MACHINE-NOTES: delaying on
the sender's OUTPUT would keep socket buffers charged and cap throughput).

    python -m mtlab.delayer --queue N --delay-ms 25 [--control FILE]

Verdicts are deferred: the callback only records (deadline, packet); the main loop waits with
``select()`` until the queue fd is readable or the oldest deadline is due. Deadlines never go
backwards, so a delay change cannot reorder packets. SIGHUP re-reads the delay (milliseconds, one
number) from ``--control``; SIGTERM/SIGINT release everything still held and exit 0.
"""

from __future__ import annotations

import argparse
import collections
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any

MAX_QUEUE_LEN = 65536  # packets the kernel may hold for us
SOCK_LEN = 32 * 1024 * 1024  # netlink receive buffer


def _read_delay(path: Path | None, default: float) -> float:
    if path is None:
        return default
    try:
        return max(0.0, float(path.read_text().strip()))
    except (OSError, ValueError) as exc:
        print(f"delayer: cannot read delay from {path}: {exc}", file=sys.stderr, flush=True)
        return default


def run(queue: int, delay_ms: float, control: Path | None) -> int:
    from netfilterqueue import COPY_META, NetfilterQueue

    state: dict[str, Any] = {"delay": delay_ms / 1000.0, "stop": False, "reload": False}
    pending: collections.deque[tuple[float, Any]] = collections.deque()
    last_deadline = 0.0

    def on_packet(pkt: Any) -> None:
        nonlocal last_deadline
        deadline = max(time.monotonic() + state["delay"], last_deadline)
        last_deadline = deadline
        pending.append((deadline, pkt))

    def on_stop(_sig: int, _frm: object) -> None:
        state["stop"] = True

    def on_hup(_sig: int, _frm: object) -> None:
        state["reload"] = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)

    nfq = NetfilterQueue()
    nfq.bind(queue, on_packet, max_len=MAX_QUEUE_LEN, mode=COPY_META, sock_len=SOCK_LEN)
    fd = nfq.get_fd()
    print(f"delayer: queue {queue}, delay {delay_ms} ms", flush=True)
    try:
        while not state["stop"]:
            if state["reload"]:
                state["reload"] = False
                state["delay"] = _read_delay(control, state["delay"] * 1000.0) / 1000.0
                print(f"delayer: delay now {state['delay'] * 1000.0} ms", flush=True)
            timeout = 0.5
            if pending:
                timeout = max(0.0, min(timeout, pending[0][0] - time.monotonic()))
            try:
                readable, _, _ = select.select([fd], [], [], timeout)
            except InterruptedError:
                continue
            if readable:
                nfq.run(block=False)
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                pending.popleft()[1].accept()
    finally:
        while pending:
            pending.popleft()[1].accept()
        nfq.unbind()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtlab.delayer", description=__doc__.split("\n")[0])
    parser.add_argument("--queue", type=int, required=True, help="netfilter queue number")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    parser.add_argument("--control", type=Path, help="file holding the delay, re-read on SIGHUP")
    args = parser.parse_args(argv)
    if args.delay_ms < 0 or not 0 <= args.queue < 65536:
        parser.error("delay must be >= 0 and queue in 0..65535")
    try:
        return run(args.queue, _read_delay(args.control, args.delay_ms), args.control)
    except OSError as exc:
        print(f"delayer: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
