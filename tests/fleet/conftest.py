"""Fleet tests: the mptcp_tunnel role's fleet assembly and checks on generated inventories.

They run the real playbooks/bgw.yml in check mode against this machine (`ansible_connection: local`,
every path under the test's tmp dir): nothing is installed or changed, nothing leaves the host.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ansible.plugins.loader import init_plugin_loader

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "roles" / "mptcp_tunnel" / "filter_plugins"))
BIN = Path(sys.executable).parent
VAULT_PASSWORD = b"fleet-test-password"
init_plugin_loader()  # as the ansible CLIs do: collections (e.g. ansible.builtin.constructed) resolve


@pytest.fixture(scope="session")
def wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One wheel build directory for the session (the role builds the agent's wheels on the controller)."""
    return tmp_path_factory.mktemp("wheels")


@pytest.fixture
def vault_file(tmp_path: Path) -> Path:
    path = tmp_path / "vault-password"
    path.write_bytes(VAULT_PASSWORD + b"\n")
    return path


def bgw_play(
    inventory: Path, target: Path, wheels: Path, vault: Path | None, *args: str
) -> subprocess.CompletedProcess[str]:
    """ansible-playbook playbooks/bgw.yml --check against this machine; every path under `target`."""
    extra = {
        "mptcp_tunnel_wheel_build_dir": str(wheels),
        "mptcp_tunnel_install_dir": str(target / "opt"),
        "mptcp_tunnel_config_dir": str(target / "etc"),
        "mptcp_network_agent_bin": str(target / "opt" / "venv" / "bin" / "mptcp-tunnel"),
        "mptcp_network_agent_config": str(target / "etc" / "config.yaml"),
        "mptcp_network_sysctl_file": str(target / "sysctl.conf"),
        "mptcp_pki_dir": str(target / "pki"),
        "mptcp_pki_ca_dir": str(target / "ca"),
    }
    cmd = [
        str(BIN / "ansible-playbook"),
        "-i",
        str(inventory),
        str(REPO / "playbooks" / "bgw.yml"),
        "--check",
    ]
    for key, value in extra.items():
        cmd += ["-e", f"{key}={value}"]
    if vault is not None:
        cmd += ["--vault-password-file", str(vault)]
    env = dict(
        os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"
    )
    return subprocess.run(
        [*cmd, *args], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
