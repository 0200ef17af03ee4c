"""Command line: ``python -m mtlab up|down|status|demo|set``."""

from __future__ import annotations

import argparse
import json
import sys

from pyroute2.netlink.exceptions import NetlinkError

from .lab import Lab, LabError, default_link_routers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtlab", description="mptcp-tunnel netns lab")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the lab (tearing down leftovers) and start the agents")
    up.add_argument("--no-agents", action="store_true", help="links only, no agents")
    up.add_argument(
        "--rate-on-ends",
        action="store_true",
        help="each link's rate limit on its ends' own interfaces instead of a link router"
        " (the lab until 27 Nov; also MT_LAB_LINK_ROUTERS=0)",
    )
    sub.add_parser("down", help="remove namespaces, processes and state")
    sub.add_parser("status", help="print the link parameters and leftovers as JSON")
    demo = sub.add_parser("demo", help="lab up, measure fixed/cellular/tunnel, lab down")
    demo.add_argument("--seconds", type=int, default=10, help="measured seconds per test")
    demo.add_argument("--output", default=None, help="JSON result file (default: repo root)")
    demo.add_argument(
        "--fleet",
        action="store_true",
        help="measure the Ansible-deployed podman lab fleet instead of the netns lab",
    )
    st = sub.add_parser("set", help="change an access link at runtime")
    st.add_argument("link", choices=["fixed", "cellular"])
    st.add_argument("--rate-mbit", type=float)
    st.add_argument("--delay-ms", type=float)
    st.add_argument("--loss-pct", type=float)
    st.add_argument("--cut", action="store_true")
    st.add_argument("--restore", action="store_true")
    st.add_argument(
        "--trace",
        metavar="SPEC",
        help="rate follows a trace: walk:seed=1,mean=5,min=2,max=10,step_ms=100-1000 |"
        " file:PATH[,interval_ms=1000,mean=M] (Mahimahi format) | none (back to the static rate)",
    )
    args = parser.parse_args(argv)

    lab = Lab()
    try:
        if args.cmd == "up":
            # a new lab: not the kind of the one it replaces (attaching loaded that one's state)
            lab.link_routers = default_link_routers() and not args.rate_on_ends
            lab.up(agents=not args.no_agents)
            print(f"lab up: namespaces {', '.join(lab.names.values())}; state in {lab.state_dir}")
        elif args.cmd == "down":
            lab.down()
            left = lab.leftovers()
            if left:
                print("left behind: " + "; ".join(left), file=sys.stderr)
                return 1
            print("lab down: nothing left")
        elif args.cmd == "status":
            print(
                json.dumps(
                    {
                        "up": lab.is_up(),
                        "delay_mode": lab.delay_mode,
                        "link_routers": lab.link_routers,
                        "links": {k: vars(v) for k, v in lab.links.items()},
                        "leftovers": lab.leftovers(),
                    },
                    indent=2,
                )
            )
        elif args.cmd == "set":
            if not lab.is_up():
                raise LabError("the lab is not up (make lab-up)")
            if args.trace is not None and args.trace.strip() == "none":
                lab.stop_trace(args.link)
            p = lab.set_link(
                args.link, rate_mbit=args.rate_mbit, delay_ms=args.delay_ms, loss_pct=args.loss_pct
            )
            if args.trace is not None and args.trace.strip() != "none":
                lab.start_trace(args.link, args.trace)
            if args.cut:
                lab.cut(args.link)
            if args.restore:
                lab.restore(args.link)
            print(json.dumps({args.link: vars(p)}))
        elif args.cmd == "demo" and args.fleet:
            from .fleet_demo import run_fleet_demo

            return run_fleet_demo(seconds=args.seconds, output=args.output)
        elif args.cmd == "demo":
            from .demo import run_demo

            return run_demo(lab, seconds=args.seconds, output=args.output)
    except (LabError, RuntimeError, OSError, NetlinkError) as exc:
        print(f"mtlab: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
