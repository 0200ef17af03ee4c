"""Watch cpe.shape_adapt's estimates during one download on the varying cellular link: the lab's
fq-adapt agents, the walk of fig9_varying (seed from argv), one cubic flow for 20 s, and every
0.25 s the CPE's status (measured rates, queue, cuts, shaper) beside the trace's rate now."""

import sys
import threading
import time

from mptcp_tunnel.control import query
from mtlab import Lab
from mtlab.measure import iperf3
from mtlab.topology import address

from run_bench.contenders import Agents


def main() -> None:
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    rtt = float(sys.argv[2]) if len(sys.argv) > 2 else 80.0
    spec = f"walk:seed={seed},mean=5,min=2,max=10,step_ms=100-1000"
    lab = Lab()
    lab.up(agents=False)
    lab.set_link("cellular", delay_ms=rtt / 2, loss_pct=0.01)
    agents = Agents(lab)
    agents.ensure("mptcp-adapt")
    sock = str(lab.state_dir / "cpe.sock")
    rows: list[str] = []
    done = threading.Event()

    def poll() -> None:
        t0 = time.monotonic()
        while not done.is_set():
            try:
                st = query(sock)
            except (OSError, ValueError):
                time.sleep(0.25)
                continue
            sh = st.get("shaper", {})
            m = sh.get("measured", {})
            trace = lab.trace_record("cellular")
            now_rate = trace[-1][1] if trace else float("nan")
            q = "  ".join(f"{n} q{v:5.1f}" for n, v in m.get("queue_ms", {}).items())
            cells = (
                f"rate {m.get('up_mbps', 0):5.2f}/{m.get('down_mbps', 0):5.2f}"
                f" carried {m.get('carried_up_mbps', 0):5.2f}/{m.get('carried_down_mbps', 0):5.2f}"
                f" cuts {m.get('cuts', 0):3d}  {q}  base {m.get('base_rtt_ms')}"
            )
            rows.append(
                f"{time.monotonic() - t0:6.2f} trace {now_rate:5.2f}  shaper down"
                f" {sh.get('down_mbps', 0):5.2f}  {cells}"
            )
            time.sleep(0.2)

    try:
        time.sleep(3)
        lab.start_trace("cellular", spec)
        th = threading.Thread(target=poll)
        th.start()
        r = iperf3(lab, "client", "server", address("server", "eth0"), seconds=20, reverse=True,
                   extra=["-C", "cubic"])
        done.set()
        th.join()
        lab.stop_trace("cellular")
        print(f"download {r.mbps:.2f} Mbit/s", flush=True)
        print("\n".join(rows))
    finally:
        done.set()
        lab.stop_trace("cellular")
        agents.stop()


main()
