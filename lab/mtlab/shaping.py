"""Link emulation on one side of an access link: rate (tbf), loss (nftables), delay (NFQUEUE/netem).

Every function acts on one namespace/interface:
- rate: ``tbf`` as the root qdisc of the interface's egress;
- loss: nftables ``netdev`` table ``mtlab``, chain per interface on the *ingress* hook,
  ``numgen random mod 10000 < N drop`` (dropping on the sender's own output would make ``send()``
  fail instead of emulating loss); a cut is an unconditional ``drop`` in the same chain;
- delay: where the kernel has netem, a netem qdisc under the tbf on the sender's egress; otherwise
  an iptables mangle PREROUTING rule queueing the interface's packets to the delayer process
  (``mtlab.delayer``) that runs in the *receiving* namespace.
"""

from __future__ import annotations

import subprocess

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .procs import ns_argv

TBF_BURST = 16 * 1024  # bytes, must exceed the MTU
NFT_TABLE = "mtlab"


def run(ns: str, argv: list[str], stdin: str | None = None) -> None:
    res = subprocess.run(
        ns_argv(ns, argv), check=False, input=stdin, capture_output=True, text=True, timeout=30
    )
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {ns}: {res.stderr.strip() or res.stdout.strip()}")


def _index(ipr: IPRoute, ifname: str) -> int:
    return int(ipr.link_lookup(ifname=ifname)[0])


def has_netem(ns: str, ifname: str) -> bool:
    """Whether the kernel offers netem (tried on ``ifname``, then removed)."""
    with IPRoute(netns=ns) as ipr:
        idx = _index(ipr, ifname)
        try:
            ipr.tc("add", "netem", idx, handle="9:", delay=1000)
        except NetlinkError:
            return False
        ipr.tc("del", index=idx, handle="9:")
        return True


def set_rate(ns: str, ifname: str, rate_mbit: float, queue_ms: float) -> None:
    """tbf at ``rate_mbit`` with a queue of ``queue_ms`` at that rate (plus the burst)."""
    with IPRoute(netns=ns) as ipr:
        ipr.tc(
            "replace",
            "tbf",
            _index(ipr, ifname),
            handle="1:",
            rate=f"{int(rate_mbit * 1000)}kbit",
            burst=TBF_BURST,
            latency=f"{int(queue_ms * 1000)}us",
        )


def set_netem_delay(ns: str, ifname: str, delay_ms: float) -> None:
    """netem delay under the tbf (only where the kernel has netem)."""
    with IPRoute(netns=ns) as ipr:
        ipr.tc(
            "replace",
            "netem",
            _index(ipr, ifname),
            parent="1:1",
            handle="10:",
            delay=int(delay_ms * 1000),
            limit=100000,
        )


def nft_ensure_chain(ns: str, ifname: str) -> None:
    run(
        ns,
        ["nft", "-f", "-"],
        f"table netdev {NFT_TABLE} {{\n"
        f'  chain {ifname} {{ type filter hook ingress device "{ifname}" priority 0; '
        "policy accept; }\n}\n",
    )


def set_ingress_drop(ns: str, ifname: str, loss_pct: float, cut: bool) -> None:
    """Replace the ingress chain's rules: drop everything when ``cut``, else ``loss_pct`` %."""
    rules = [f"flush chain netdev {NFT_TABLE} {ifname}"]
    if cut:
        rules.append(f"add rule netdev {NFT_TABLE} {ifname} counter drop")
    elif loss_pct > 0:
        n = round(loss_pct * 100)
        rules.append(
            f"add rule netdev {NFT_TABLE} {ifname} numgen random mod 10000 < {n} counter drop"
        )
    run(ns, ["nft", "-f", "-"], "\n".join(rules) + "\n")


def nfqueue_rule(ns: str, ifname: str, queue: int) -> None:
    """Queue every packet arriving on ``ifname`` (IPv4 and IPv6) to netfilter queue ``queue``."""
    for tool in ("iptables", "ip6tables"):
        run(
            ns,
            [
                tool,
                "-w",
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-i",
                ifname,
                "-j",
                "NFQUEUE",
                "--queue-num",
                str(queue),
            ],
        )


def tbf_state(ns: str, ifname: str) -> dict[str, float]:
    """The root tbf's rate (Mbit/s), counters (``packets``, ``drops``) and ``backlog`` (bytes) on
    ``ifname``."""
    with IPRoute(netns=ns) as ipr:
        idx = _index(ipr, ifname)
        for q in ipr.get_qdiscs(index=idx):
            if q.get_attr("TCA_KIND") != "tbf":
                continue
            parms = q.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")
            queue = dict(q.get_attr("TCA_STATS2").get_attr("TCA_STATS_QUEUE"))
            basic = dict(q.get_attr("TCA_STATS2").get_attr("TCA_STATS_BASIC"))
            return {
                "rate_mbit": parms["rate"] * 8 / 1e6,
                "packets": basic["packets"],
                "drops": queue["drops"],
                "backlog": queue["backlog"],
            }
    raise RuntimeError(f"no tbf on {ifname} in {ns}")
