"""The mptcp_tunnel role exposes the cellular data cap and the links' rate limits: argument specs, the
rendered config (which the agent must accept as it is) and the unit's StateDirectory, rendered by
Ansible on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from conftest import BIN, REPO
from mptcp_tunnel.cap import CapSettings
from mptcp_tunnel.config import parse_config

ROLE = REPO / "roles" / "mptcp_tunnel"
SPECS = ROLE / "meta" / "argument_specs.yml"
LINKS: list[dict[str, Any]] = [
    {
        "name": "fixed",
        "kind": "fixed",
        "interface": "eth1",
        "address": "10.1.0.1",
        "table": 101,
        "rate_mbit": 40,
    },
    {
        "name": "lte",
        "kind": "cellular",
        "interface": "wwan0",
        "address": "10.2.0.1",
        "table": 102,
        "rate_mbit": 10,
        "cap": {"bytes": "20GB", "reset_day": 15, "timezone": "Europe/Berlin"},
    },
    {
        "name": "lte2",
        "kind": "cellular",
        "interface": "wwan1",
        "address": "10.3.0.1",
        "table": 103,
        "rate_mbit": 8,
        "cap": {"bytes": 500000000, "period": "daily"},
    },
]


def test_argument_specs_describe_the_cap() -> None:
    options: dict[str, Any] = yaml.safe_load(SPECS.read_text())["argument_specs"]["main"]["options"]
    validator = ArgumentSpecValidator(options)
    ok = validator.validate({"mptcp_tunnel_role": "cpe", "mptcp_tunnel_cpe_links": LINKS})
    assert ok.error_messages == []
    bad = [dict(LINKS[1], cap={"bytes": "1GB", "period": "weekly"})]
    result = validator.validate({"mptcp_tunnel_role": "cpe", "mptcp_tunnel_cpe_links": bad})
    assert any("period" in m and "weekly" in m for m in result.error_messages), result.error_messages
    missing = [dict(LINKS[1], cap={"period": "daily"})]
    result = validator.validate({"mptcp_tunnel_role": "cpe", "mptcp_tunnel_cpe_links": missing})
    assert any("bytes" in m for m in result.error_messages), result.error_messages


def test_the_role_renders_the_cap_and_the_state_directory(tmp_path: Path) -> None:
    play = [
        {
            "name": "Render the CPE's config and unit",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
            "tasks": [
                {
                    "name": f"Render {name}",
                    "ansible.builtin.template": {
                        "src": str(ROLE / "templates" / src),
                        "dest": str(tmp_path / name),
                        "mode": "0600",
                    },
                }
                for src, name in (("config.yaml.j2", "config.yaml"), ("mptcp-tunnel.service.j2", "unit"))
            ],
        }
    ]
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump(play))
    host_vars = {  # extra vars: above the role's defaults, as inventory variables are
        "ansible_python_interpreter": sys.executable,
        "mptcp_tunnel_role": "cpe",
        "mptcp_tunnel_cpe_secret": "a-secret-of-16-bytes",
        "mptcp_tunnel_cpe_bgw_address": "10.1.0.2",
        "mptcp_tunnel_cpe_bgw_name": "bgw1",
        "mptcp_tunnel_cpe_id": "cpe1",
        "mptcp_tunnel_encryption": "none",
        "mptcp_tunnel_cpe_links": LINKS,
        "mptcp_tunnel_cpe_link_share": 0.99,
    }
    (tmp_path / "vars.json").write_text(json.dumps(host_vars))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    res = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-e", f"@{tmp_path}/vars.json", str(playbook)],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    cpe = parse_config(raw, str(tmp_path / "config.yaml")).cpe
    assert cpe is not None and cpe.state_dir == "/var/lib/mptcp-tunnel"
    assert cpe.link_share == 0.99 and [link.rate_mbit for link in cpe.links] == [40, 10, 8]
    assert [link.cap for link in cpe.links] == [
        None,
        CapSettings(20 * 10**9, "monthly", 15, "Europe/Berlin"),
        CapSettings(500_000_000, "daily", 1, "UTC"),
    ]
    unit = (tmp_path / "unit").read_text()
    assert "\nStateDirectory=mptcp-tunnel\n" in unit and "\nProtectSystem=strict\n" in unit
