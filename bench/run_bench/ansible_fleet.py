"""Benchmark ``ansible_fleet``: the Ansible side and the agent's config check at fleet size.

    python -m run_bench.ansible_fleet [--sizes 100,1000,10000] [--out bench/results]

For each size N a synthetic fleet (``run_bench.fleetgen``: one BGW, N CPEs, per-CPE host_vars
with vault-encrypted secrets) is generated in a temporary directory, then timed (wall time, CPU time
and the peak RSS of the largest process, from ``wait4``):

- ``inventory``: ``ansible-inventory --list``;
- ``bgw_play``: ``ansible-playbook playbooks/bgw.yml --check`` against this machine (the BGW is
  ``ansible_connection: local``, every path under the temporary directory): the controller's work of
  the BGW play, fleet assembly and checks included; the per-task times come from ``profile_tasks``;
- ``incremental``: one CPE added to the inventory, then
  ``bgw.yml --check --diff --limit bgw-01,<new CPE>``; the diff of the BGW's CPE list is recorded;
- ``check_config``: ``mptcp-tunnel check-config`` on the BGW config rendered by the role's template.

Writes ``<out>/ansible_fleet.json`` and ``<out>/ansible_fleet.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from run_bench import fleetgen

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VAULT_PASSWORD = b"ansible-fleet-bench"
LIST_TASK = "List the CPEs this BGW serves (no secrets; shown by --diff)"


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[dict[str, float], str]:
    """Run `cmd`; its wall and CPU seconds and peak RSS (largest process of its tree) and stdout."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = f"{stdout[-2000:]}\n{stderr[-2000:]}"
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {code}:\n{tail}")
    figures = {
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }
    return figures, stdout


def task_times(stdout: str) -> dict[str, float]:
    """profile_tasks' summary: task name -> seconds."""
    times: dict[str, float] = {}
    for m in re.finditer(r"^(\S+ : .+?) -+ (\d+\.\d+)s$", stdout, re.M):
        # a preflight task is listed twice (pre_tasks, then skipped in the role): keep the run
        times[m.group(1)] = max(times.get(m.group(1), 0.0), float(m.group(2)))
    return times


def diff_lines(stdout: str) -> list[str]:
    parts = stdout.split(f"TASK [mptcp_tunnel : {LIST_TASK}]", 1)
    section = parts[1].split("TASK [", 1)[0] if len(parts) == 2 else ""
    return [
        line
        for line in section.splitlines()
        if line[:1] in ("+", "-") and not line.startswith(("+++", "---"))
    ]


def measure(n: int, work: Path) -> dict[str, Any]:
    fleet, target = work / f"fleet-{n}", work / f"target-{n}"
    pw = work / "vault-password"
    pw.write_bytes(VAULT_PASSWORD + b"\n")
    t0 = time.monotonic()
    fleetgen.generate(fleet, n, bgws=1, vault_password=VAULT_PASSWORD, local_bgw=True)
    generate_s = time.monotonic() - t0
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks",
    )
    vault = ["--vault-password-file", str(pw)]
    extra: list[str] = []
    for key, value in {
        "mptcp_tunnel_wheel_build_dir": work / "wheels",
        "mptcp_tunnel_install_dir": target / "opt",
        "mptcp_tunnel_config_dir": target / "etc",
        "mptcp_network_agent_bin": target / "opt/venv/bin/mptcp-tunnel",
        "mptcp_network_agent_config": target / "etc/config.yaml",
        "mptcp_network_sysctl_file": target / "sysctl.conf",
        "mptcp_pki_dir": target / "pki",
        "mptcp_pki_ca_dir": target / "ca",
    }.items():
        extra += ["-e", f"{key}={value}"]
    inv = ["-i", str(fleet)]
    play = [str(BIN / "ansible-playbook"), *inv, "playbooks/bgw.yml", "--check", *vault, *extra]

    point: dict[str, Any] = {"cpes": n, "bgws": 1, "vaulted_secrets": True}
    point["loadavg_1m_before"] = round(os.getloadavg()[0], 2)  # other jobs on the machine
    point["generate_s"] = round(generate_s, 1)
    point["inventory"], _ = timed([str(BIN / "ansible-inventory"), *inv, "--list", *vault], env)
    point["bgw_play"], out = timed(play, env)
    tasks = task_times(out)
    point["bgw_play"]["fleet_assembly_s"] = tasks.get(
        "mptcp_tunnel : Assemble the fleet (every BGW's CPEs and the fleet checks, once per play)"
    )
    point["bgw_play"]["render_config_s"] = tasks.get(
        "mptcp_tunnel : Render the agent configuration (validated by the agent)"
    )
    point["bgw_play"]["slowest_tasks"] = dict(list(tasks.items())[:5])

    # deployed state: the BGW's CPE list as the play above would write it (ids + prefixes, by id)
    (target / "etc").mkdir(parents=True, exist_ok=True)
    deployed = target / "etc" / "cpes.txt"
    lines = sorted(
        f"{fleetgen.cpe_name(i)} {' '.join(fleetgen.cpe_prefixes(i))}" for i in range(1, n + 1)
    )
    deployed.write_text("".join(f"{line}\n" for line in lines))
    deployed.chmod(0o640)
    new = fleetgen.add_cpe(fleet, n + 1, "bgw-01", VAULT_PASSWORD)
    point["incremental"], out = timed([*play, "--diff", "--limit", f"bgw-01,{new}"], env)
    point["incremental"]["diff"] = diff_lines(out)

    config = work / f"bgw-{n}.yaml"
    render = [str(BIN / "ansible-playbook"), *inv, "bench/run_bench/render_bgw_config.yml"]
    # encryption none: a TLS config makes check-config load the PKI files, which this machine has
    # not; the CPE list it checks (ids, prefixes, and here the secrets too) is the same
    tls_off = ["-e", "mptcp_tunnel_encryption=none"]
    timed([*render, *vault, *tls_off, "-e", "bgw=bgw-01", "-e", f"dest={config}"], env)
    point["check_config"], _ = timed([str(BIN / "mptcp-tunnel"), "check-config", str(config)])
    point["check_config"]["config_bytes"] = config.stat().st_size
    point["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    shutil.rmtree(fleet)
    return point


def markdown(doc: dict[str, Any]) -> str:
    rows = [
        "# ansible_fleet",
        "",
        f"Started {doc['started']} on {doc['machine']['cpus']} CPUs, "
        f"ansible-core {doc['ansible_core']}, Python {doc['python']}. One BGW, N CPEs with "
        "vault-encrypted per-CPE secrets (`python -m run_bench.ansible_fleet`; method in its "
        "docstring). Peak RSS: the largest process.",
        "",
        "| N | inventory parse s | BGW play s (check mode) | of it: fleet assembly s "
        "| +1 CPE `--check --diff` s | check-config s "
        "| peak RSS MiB (inventory / play / check-config) |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in doc["points"]:
        rows.append(
            f"| {p['cpes']} | {p['inventory']['wall_s']} | {p['bgw_play']['wall_s']} "
            f"| {p['bgw_play']['fleet_assembly_s']} | {p['incremental']['wall_s']} "
            f"| {p['check_config']['wall_s']} | {p['inventory']['peak_rss_mib']} / "
            f"{p['bgw_play']['peak_rss_mib']} / {p['check_config']['peak_rss_mib']} |"
        )
    rows += ["", "Incremental diffs (the BGW's CPE list):", ""]
    for p in doc["points"]:
        diff = p["incremental"]["diff"]
        shown = " ".join(f"`{line}`" for line in diff) if len(diff) <= 3 else f"{len(diff)} lines"
        rows.append(f"- N={p['cpes']}: {shown}")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    doc_line = (__doc__ or "").splitlines()[0]
    ap = argparse.ArgumentParser(prog="python -m run_bench.ansible_fleet", description=doc_line)
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    from ansible.release import __version__ as ansible_core

    doc: dict[str, Any] = {
        "scenario": "ansible_fleet",
        "kernel": platform.release(),
        "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": len(os.sched_getaffinity(0))},
        "ansible_core": ansible_core,
        "python": platform.python_version(),
        "points": [],
    }
    with tempfile.TemporaryDirectory(prefix="ansible-fleet-") as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            point = measure(n, Path(tmp))
            print(json.dumps(point), flush=True)
            doc["points"].append(point)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ansible_fleet.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "ansible_fleet.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
