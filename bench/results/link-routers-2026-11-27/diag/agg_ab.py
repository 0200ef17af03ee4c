"""A/B on the lab with link routers: the aggregation test's measurement (fixed alone, cellular
alone, then one tunnel upload client -> server, iperf3 10 s after 3 s, the lab host's default
end-host TCP unless CC is given) with the agents restarted on each ``tunnel`` setting in turn."""

import sys
import time

from mtlab import Lab
from mtlab.measure import iperf3
from mtlab.topology import address

SETTINGS = {
    "default": {"congestion_control": "bbr"},  # the lab's agents before 27 Nov 22:00 (host's BBR)
    "cubic-subflows": {"congestion_control": "cubic"},
    "fq-cubic": {"congestion_control": "cubic", "aqm": "fq_codel"},
}


def restart(lab: Lab, tunnel: dict) -> None:
    for role in ("cpe", "bgw"):
        lab.stop_agent(role)
    for role in ("bgw", "cpe"):
        cfg = lab.agent_config(role)
        cfg["tunnel"].update(tunnel)
        lab.start_agent(role, cfg)
    lab.wait_tunnel(30)
    time.sleep(3)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    cc = sys.argv[2] if len(sys.argv) > 2 else None
    names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(SETTINGS)
    lab = Lab()
    lab.up(agents=True)
    print(f"link_routers={lab.link_routers} inner cc={cc or 'host default'}", flush=True)
    try:
        for r in range(rounds):
            for name in names:
                restart(lab, SETTINGS[name])
                fixed = iperf3(
                    lab, "cpe", "bgw", "10.1.0.2", bind="10.1.0.1", seconds=10, omit=3
                ).mbps
                cell = iperf3(
                    lab, "cpe", "bgw", "10.2.0.2", bind="10.2.0.1", seconds=10, omit=3
                ).mbps
                for rev in (False, True):
                    t = iperf3(
                        lab,
                        "client",
                        "server",
                        address("server", "eth0"),
                        seconds=10,
                        omit=3,
                        reverse=rev,
                        extra=["-C", cc] if cc else None,
                    ).mbps
                    print(
                        f"round {r + 1} {name:15s} {'down' if rev else 'up  '}: tunnel {t:.2f}"
                        f" fixed {fixed:.2f} cell {cell:.2f} ratio {t / (fixed + cell):.3f}",
                        flush=True,
                    )
    finally:
        lab.down()


if __name__ == "__main__":
    main()
