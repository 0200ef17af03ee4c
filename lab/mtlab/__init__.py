"""mtlab — the mptcp-tunnel network-namespace lab.

Four namespaces per DESIGN.md's addressing plan (``<prefix>client``, ``<prefix>cpe``,
``<prefix>bgw``, ``<prefix>server``; prefix from ``MT_LAB_PREFIX``, default ``mt-``), two
emulated access links between cpe and bgw, and the real agents as processes. State (pid files,
agent configs, logs, link parameters) lives in ``/run/mtlab/<prefix>/``.

Link emulation, per access link and direction: rate by ``tbf`` on the sender's egress; one-way
delay by netem where the kernel has it, else by the NFQUEUE delayer (``mtlab.delayer``) in the
receiving namespace; loss by an nftables netdev-ingress ``numgen`` drop on the receiving side.

Python API (root required)::

    from mtlab import Lab
    lab = Lab()                      # prefix from MT_LAB_PREFIX; attaches to a running lab
    lab.up(agents=True)              # tears down leftovers first; waits for ping via the tunnel
    lab.exec("client", ["ping", "-c1", "172.16.0.2"])      # -> CompletedProcess (text), LabError
    lab.popen("server", ["iperf3", "-s"], name="iperf")     # background, pid file, log
    lab.serve("server", lab.python("mtlab.probes", "tcp-server", "--port", "9000"),
              name="probe", ready="ready")                  # popen + wait for "ready" in its log
    lab.stop("iperf")                                       # SIGTERM, then SIGKILL
    lab.set_link("fixed", rate_mbit=20, delay_ms=10, loss_pct=1.0)   # at runtime, both directions
    lab.links["fixed"]                                      # current LinkParams
    lab.cut("fixed"); lab.restore("fixed")                  # 100 % drop both ways / back
    lab.start_trace("cellular", "walk:seed=1,mean=5,min=2,max=10,step_ms=100-1000")  # rate trace
    lab.trace_record("cellular")     # [(monotonic s, Mbit/s), ...] as applied; stop_trace() ends it
    lab.link_bytes("cellular")       # {"up": cpe->bgw tx bytes, "down": bgw->cpe tx bytes}
    lab.start_agents(); lab.stop_agent("bgw"); lab.restart_agent("bgw"); lab.agent_alive("cpe")
    cfg = lab.agent_config("cpe"); cfg["cpe"]["policy"] = "backup"
    lab.stop_agent("cpe"); lab.start_agent("cpe", cfg)      # run an agent with another config
    lab.metrics("bgw")               # {'mptcp_tunnel_session_up{cpe="cpe1"}': 1.0, ...}
    lab.wait_tunnel(timeout=30)
    lab.down(); lab.leftovers()      # everything gone -> []

``mtlab.measure`` runs iperf3 between lab hosts; ``mtlab.demo`` is ``make demo``.
Command line: ``python -m mtlab up [--no-agents] | down | status | set LINK ... [--trace SPEC|none]
| demo``.
"""

from .lab import Lab, LabError, LinkParams
from .topology import address

__all__ = ["Lab", "LabError", "LinkParams", "address"]
