"""The BGW play on generated fleets: the fleet checks' errors, and an incremental `--check --diff`."""

from __future__ import annotations

import re
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
    # preflight stops the play before anything is built or rendered
    assert "Build the agent's wheels" not in play.stdout
    assert "fleet-secret-" not in play.stdout


def diff_lines(stdout: str, task: str) -> list[str]:
    """The +/- lines of one task's diff in the default callback's output."""
    return [
        line
        for line in task_section(stdout, task).splitlines()
        if line[:1] in ("+", "-") and not line.startswith(("+++", "---"))
    ]


def test_incremental_check_diff_shows_exactly_one_cpe_added(
    tmp_path: Path, wheel_dir: Path, vault_file: Path
) -> None:
    """Deployed state = what the play renders for the fleet; then one CPE is added (vaulted secret)."""
    inventory, target = tmp_path / "inventory", tmp_path / "target"
    fleetgen.generate(inventory, N, bgws=1, vault_password=VAULT_PASSWORD, local_bgw=True)
    task = "List the CPEs this BGW serves (no secrets; shown by --diff)"

    first = bgw_play(inventory, target, wheel_dir, vault_file, "--diff")
    assert first.returncode == 0, first.stdout[-3000:]
    rendered = diff_lines(first.stdout, task)
    assert [line for line in rendered if not line.startswith("+cpe-")] == []
    assert len(rendered) == N
    (target / "etc").mkdir(parents=True)
    deployed = target / "etc" / "cpes.txt"
    deployed.write_text("".join(line[1:] + "\n" for line in rendered))
    deployed.chmod(0o640)

    again = bgw_play(inventory, target, wheel_dir, vault_file, "--diff")
    assert again.returncode == 0, again.stdout[-3000:]
    assert diff_lines(again.stdout, task) == []  # deployed == inventory: no change shown

    fleetgen.add_cpe(inventory, N + 1, "bgw-01", VAULT_PASSWORD)
    added = bgw_play(
        inventory, target, wheel_dir, vault_file, "--diff", "--limit", f"bgw-01,{fleetgen.cpe_name(N + 1)}"
    )
    assert added.returncode == 0, added.stdout[-3000:]
    assert diff_lines(added.stdout, task) == [
        f"+cpe-00{N + 1} 10.1.{N + 1 - 256}.0/24 2001:db8:0:{N + 1:x}::/64"
    ]
    assert "fleet-secret-" not in added.stdout  # secrets never appear, not even in the diff
    assert f"serving {N + 1} CPE(s)" in failure(added.stdout)
