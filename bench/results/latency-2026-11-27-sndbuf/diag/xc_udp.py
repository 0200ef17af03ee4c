import json
import time

from mtlab import Lab
from mtlab.topology import address

lab = Lab()
try:
    lab.up(agents=False)
    lab.agent_bin()
    srv = address("server", "eth0")
    for session in range(2):
        lab.start_agents(wait=True, timeout=40)
        for role in ("cpe", "bgw"):
            lab.stop_agent(role)
        for role in ("bgw", "cpe"):
            cfg = lab.agent_config(role)
            cfg["tunnel"].update(aqm="fq_codel", congestion_control="cubic")
            lab.start_agent(role, cfg)
        lab.wait_tunnel(30)
        time.sleep(3)
        lab.popen("server", ["iperf3", "-s", "-1"], name="xs")
        lab.popen("server", ["iperf3", "-s", "-1", "-p", "5202"], name="xu")
        time.sleep(1)
        import threading

        res = {}
        th = threading.Thread(
            target=lambda res=res: res.update(
                o=lab.exec(
                    "client",
                    [
                        "iperf3",
                        "-c",
                        srv,
                        "-p",
                        "5202",
                        "-u",
                        "-b",
                        "1M",
                        "-l",
                        "200",
                        "-t",
                        "21",
                        "-R",
                        "-J",
                    ],
                    check=False,
                ).stdout
            )
        )
        th.start()
        time.sleep(0.5)
        out = lab.exec(
            "client",
            ["iperf3", "-c", srv, "-C", "cubic", "-t", "16", "-O", "4", "-J", "-R"],
            check=False,
        ).stdout
        th.join()
        u = json.loads(res["o"])
        bps = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
        loss = u["end"]["sum"]["lost_percent"] if u else float("nan")
        print(
            f"session {session}: TCP {bps:.2f} Mbit/s = {bps / 14.35:.3f} of 14.35, "
            f"UDP loss {loss:.2f} %",
            flush=True,
        )
        for n in ("xs", "xu"):
            lab.stop(n)
        for role in ("cpe", "bgw"):
            lab.stop_agent(role)
finally:
    lab.down()
