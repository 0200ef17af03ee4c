"""The BGW play on generated fleets: the fleet checks' errors, and an incremental `--check --diff`."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import VAULT_PASSWORD, bgw_play
from run_bench import fleetgen

N = 300  # CPEs in the generated fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    out = tmp_path / "inventory"
    fleetgen.generate(out, N, bgws=2, local_bgw=True)
    return out


def edit_cpe(inventory: Path, i: int, key: str, value: str) -> None:
    path = inventory / "host_vars" / f"{fleetgen.cpe_name(i)}.yml"
    text = path.read_text()
    text, count = re.subn(rf"^{key}: .*$", f"{key}: {value}", text, flags=re.MULTILINE)
    assert count == 1
    path.write_text(text)


def failure(play_stdout: str) -> str:
    """The play's output on one line, YAML quoting undone (the callback prints messages as YAML)."""
    return " ".join(play_stdout.split()).replace("''", "'")


def task_section(stdout: str, task: str) -> str:
    parts = stdout.split(f"TASK [mptcp_tunnel : {task}", 1)
    return parts[1].split("TASK [", 1)[0] if len(parts) == 2 else ""


@pytest.mark.parametrize(
    ("cpe", "key", "value", "message"),
    [
        # cpe-00250 is served by bgw-02 (round-robin), as is cpe-00004; far apart in the fleet
        (
            250,
            "mptcp_tunnel_cpe_prefixes",
            '["10.0.4.128/25"]',
            "BGW bgw-02: prefix 10.0.4.128/25 of CPE cpe-00250 overlaps 10.0.4.0/24 of CPE cpe-00004",
        ),
        (
            298,
            "mptcp_tunnel_cpe_id",
            "cpe-00002",
            "BGW bgw-02: CPE id cpe-00002 is used twice",  # cpe-00298's id
        ),
        (
            123,
            "mptcp_tunnel_cpe_bgw",
            "bgw-nowhere",
            (
                "CPE cpe-00123 is assigned to BGW bgw-nowhere, which is not in the inventory."
                " Set mptcp_tunnel_cpe_bgw to one of the group 'bgw': bgw-01, bgw-02."
            ),
        ),
    ],
    ids=["overlap", "duplicate-id", "orphan"],
)
def test_fleet_check_fails_early_naming_the_problem(
    fleet: Path, tmp_path: Path, wheel_dir: Path, cpe: int, key: str, value: str, message: str
) -> None:
    edit_cpe(fleet, cpe, key, value)
    # bgw-02 alone in the play (its fleet check still sees every CPE of the inventory); an orphan
    # is found whichever BGWs the play has
    play = bgw_play(fleet, tmp_path / "target", wheel_dir, None, "--limit", "bgw-02")
    assert play.returncode == 2, play.stdout[-3000:]
    out = failure(play.stdout)
    assert message in out, out[-3000:]
    assert "Traceback" not in play.stdout + play.stderr
    # preflight stops the play before anything is built or rendered, and before any other role ran
    assert "Build the agent's wheels" not in play.stdout
    assert "TASK [mptcp_kernel" not in play.stdout and "TASK [mptcp_pki" not in play.stdout
    assert "fleet-secret-" not in play.stdout


def diff_lines(stdout: str, task: str) -> list[str]:
    """The +/- lines of one task's diff in the default callback's output."""
    return [
        line
        for line in task_section(stdout, task).splitlines()
        if line[:1] in ("+", "-") and not line.startswith(("+++", "---"))
    ]


def test_incremental_check_diff_shows_exactly_the_cpe_added_or_removed(
    tmp_path: Path, wheel_dir: Path, vault_file: Path
) -> None:
    """A deployed BGW of N CPEs; then one CPE removed, or one added (vaulted secret), in check mode.

    The deployed CPE list is written in its documented format (`id prefixes`, sorted by id): a play
    that rendered it any differently would show far more than the one line asserted below.
    """
    inventory, target = tmp_path / "inventory", tmp_path / "target"
    fleetgen.generate(inventory, N, bgws=1, vault_password=VAULT_PASSWORD, local_bgw=True)
    task = "List the CPEs this BGW serves (no secrets; shown by --diff)"
    (target / "etc").mkdir(parents=True)
    deployed = target / "etc" / "cpes.txt"
    lines = sorted(f"{fleetgen.cpe_name(i)} {' '.join(fleetgen.cpe_prefixes(i))}" for i in range(1, N + 1))
    deployed.write_text("".join(f"{line}\n" for line in lines))
    deployed.chmod(0o640)

    # one CPE removed from (a copy of) the inventory: exactly its line goes, nothing else changes
    smaller = tmp_path / "inventory-minus-one"
    shutil.copytree(inventory, smaller)
    hosts = smaller / "hosts.yml"
    hosts.write_text(hosts.read_text().replace("        cpe-00150: {ansible_host: 192.0.2.1}\n", ""))
    (smaller / "host_vars" / "cpe-00150.yml").unlink()
    removed = bgw_play(smaller, target, wheel_dir, vault_file, "--diff", "--limit", "bgw-01")
    assert removed.returncode == 0, removed.stdout[-3000:]
    assert diff_lines(removed.stdout, task) == ["-cpe-00150 10.0.150.0/24 2001:db8:0:96::/64"]

    fleetgen.add_cpe(inventory, N + 1, "bgw-01", VAULT_PASSWORD)
    added = bgw_play(
        inventory, target, wheel_dir, vault_file, "--diff", "--limit", f"bgw-01,{fleetgen.cpe_name(N + 1)}"
    )
    assert added.returncode == 0, added.stdout[-3000:]
    assert diff_lines(added.stdout, task) == [
        f"+cpe-00{N + 1} 10.1.{N + 1 - 256}.0/24 2001:db8:0:{N + 1:x}::/64"
    ]
    assert "fleet-secret-" not in added.stdout + removed.stdout  # secrets never appear, not even in a diff
    assert f"serving {N + 1} CPE(s)" in failure(added.stdout)
