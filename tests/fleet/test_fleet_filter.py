"""The fleet filter on real Ansible inventory objects (no playbook): what one walk over the CPE group gives.

No mocks: a counting wrapper around the real VaultLib.decrypt only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mptcp_tunnel_fleet as fleet_filter
import pytest
from ansible.constants import DEFAULT_VAULT_ID_MATCH
from ansible.errors import AnsibleFilterError
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.parsing.vault import VaultLib, VaultSecret
from ansible.vars.hostvars import HostVars
from ansible.vars.manager import VariableManager
from conftest import VAULT_PASSWORD
from run_bench import fleetgen


def load(inventory: Path) -> tuple[HostVars, list[str], list[str]]:
    loader = DataLoader()
    loader.set_vault_secrets([(DEFAULT_VAULT_ID_MATCH, VaultSecret(VAULT_PASSWORD))])
    inv = InventoryManager(loader=loader, sources=[str(inventory)])
    hostvars = HostVars(
        inventory=inv, variable_manager=VariableManager(loader=loader, inventory=inv), loader=loader
    )
    return (
        hostvars,
        [h.name for h in inv.groups["cpe"].get_hosts()],
        [h.name for h in inv.groups["bgw"].get_hosts()],
    )


def test_two_bgws_each_get_their_cpes_with_each_secret_decrypted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleetgen.generate(tmp_path / "inv", 400, bgws=2, vault_password=VAULT_PASSWORD)
    decrypted: list[bytes] = []
    real_decrypt = VaultLib.decrypt

    def counting_decrypt(self: VaultLib, vaulttext: Any, *args: Any, **kwargs: Any) -> bytes:
        plain: bytes = real_decrypt(self, vaulttext, *args, **kwargs)
        decrypted.append(plain)
        return plain

    monkeypatch.setattr(VaultLib, "decrypt", counting_decrypt)  # counts the real decryptions
    hostvars, cpes, bgws = load(tmp_path / "inv")
    result = fleet_filter.mptcp_tunnel_fleet(hostvars, cpes, bgws)
    assert sorted(decrypted) == sorted(set(decrypted)) and len(decrypted) == 400
    assert result["orphans"] == [] and result["problems"] == {"bgw-01": [], "bgw-02": []}
    first = result["cpes"]["bgw-01"][0]
    assert first == {
        "id": "cpe-00001",
        "secret": f"fleet-secret-00001-{2654435761 % 2**32:08x}",
        "prefixes": ["10.0.1.0/24", "2001:db8:0:1::/64"],
    }
    assert [c["id"] for c in result["cpes"]["bgw-02"][:3]] == ["cpe-00002", "cpe-00004", "cpe-00006"]
    assert len(result["cpes"]["bgw-01"]) == len(result["cpes"]["bgw-02"]) == 200
    assert hasattr(first["secret"], "__UNSAFE__")  # data, never re-templated


def test_reading_in_parallel_gives_the_same_fleet_in_the_same_order(tmp_path: Path) -> None:
    fleetgen.generate(tmp_path / "inv", 1_200, bgws=3)
    hostvars, cpes, bgws = load(tmp_path / "inv")
    serial = [fleet_filter._read_cpe(hostvars, h) for h in cpes]
    parallel = fleet_filter._parallel(lambda h: fleet_filter._read_cpe(hostvars, h), cpes)
    assert parallel == serial
    assert fleet_filter.mptcp_tunnel_orphan_cpes(hostvars, cpes, bgws[:2])[:1] == [
        "CPE cpe-00003 is assigned to BGW bgw-03, which is not in the inventory"
    ]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: no reader processes")
def test_an_error_in_a_reader_process_is_a_filter_error_in_the_play() -> None:
    hosts = [f"h{i}" for i in range(1_200)]

    def read(host: str) -> tuple[str]:
        if host == "h1199":  # in the last share, read by a forked process
            raise ValueError("cannot read h1199")
        return (host,)

    with pytest.raises(AnsibleFilterError, match="^cannot read h1199$"):
        fleet_filter._parallel(read, hosts)
    assert fleet_filter._parallel(lambda h: (h,), hosts)[-1] == ("h1199",)


def test_templated_host_variables_are_templated_with_the_hosts_vars(tmp_path: Path) -> None:
    fleetgen.generate(tmp_path / "inv", 3)
    host_vars = tmp_path / "inv" / "host_vars" / "cpe-00002.yml"
    text = host_vars.read_text().replace('["10.0.2.0/24", "2001:db8:0:2::/64"]', '["{{ lan4 }}"]')
    host_vars.write_text(text + 'lan4: "10.99.0.0/24"\nmptcp_tunnel_cpe_id: "{{ inventory_hostname }}b"\n')
    hostvars, cpes, bgws = load(tmp_path / "inv")
    result = fleet_filter.mptcp_tunnel_fleet(hostvars, cpes, bgws)
    assert result["cpes"]["bgw-01"][1]["id"] == "cpe-00002b"
    assert result["cpes"]["bgw-01"][1]["prefixes"] == ["10.99.0.0/24"]


def test_a_cpes_downstream_shape_reaches_its_bgw_entry_and_a_bad_one_is_named(tmp_path: Path) -> None:
    fleetgen.generate(tmp_path / "inv", 3)
    host_vars = tmp_path / "inv" / "host_vars"
    with (host_vars / "cpe-00001.yml").open("a") as fh:
        fh.write("mptcp_tunnel_cpe_downstream_shape_mbit: 45.5\n")
    hostvars, cpes, bgws = load(tmp_path / "inv")
    result = fleet_filter.mptcp_tunnel_fleet(hostvars, cpes, bgws)
    entries = result["cpes"]["bgw-01"]
    assert entries[0]["shape_mbit"] == 45.5
    assert "shape_mbit" not in entries[1]  # unset: the BGW's own mptcp_tunnel_shape_mbit applies
    manifest = fleet_filter.mptcp_tunnel_cpe_manifest(entries).splitlines()
    assert manifest[0] == "cpe-00001 10.0.1.0/24 2001:db8:0:1::/64 shape 45.5 Mbit/s"
    assert manifest[1] == "cpe-00002 10.0.2.0/24 2001:db8:0:2::/64"
    with (host_vars / "cpe-00002.yml").open("a") as fh:
        fh.write("mptcp_tunnel_cpe_downstream_shape_mbit: fast\n")
    hostvars, cpes, bgws = load(tmp_path / "inv")
    result = fleet_filter.mptcp_tunnel_fleet(hostvars, cpes, bgws)
    assert result["problems"]["bgw-01"] == [
        "CPE cpe-00002: mptcp_tunnel_cpe_downstream_shape_mbit must be a number of Mbit/s (0 = off)"
    ]
    assert [c["id"] for c in result["cpes"]["bgw-01"]] == ["cpe-00001", "cpe-00003"]


def test_prefix_problems_are_found_by_one_sorted_pass_and_capped() -> None:
    cpes = [{"id": f"c{i}", "prefixes": [f"10.{i}.0.0/16"]} for i in range(50)]
    cpes.append({"id": "wide", "prefixes": ["10.0.0.0/8", "fd00::/8"]})
    cpes.append({"id": "c7", "prefixes": ["fd12::/64"]})
    problems = fleet_filter.mptcp_tunnel_prefix_problems(cpes)
    assert problems[0] == "CPE id c7 is used twice"
    assert problems[1] == "prefix 10.0.0.0/8 of CPE wide overlaps 10.0.0.0/16 of CPE c0"
    assert problems[2] == "prefix 10.0.0.0/8 of CPE wide overlaps 10.1.0.0/16 of CPE c1"
    assert len(problems) == fleet_filter.MAX_LISTED + 1
    assert problems[-1] == f"... and {1 + 50 + 1 - fleet_filter.MAX_LISTED} more problem(s)"


def test_an_overlap_hidden_behind_a_neighbour_is_found() -> None:
    # sorted: fd00::/8 (a), fd00:1::/64 (b), fd12::/64 (c): c does not touch its neighbour b, only a
    cpes = [
        {"id": "a", "prefixes": ["fd00::/8"]},
        {"id": "b", "prefixes": ["fd00:1::/64"]},
        {"id": "c", "prefixes": ["fd12::/64", "192.0.2.0/24"]},
    ]
    assert fleet_filter.mptcp_tunnel_prefix_problems(cpes) == [
        "prefix fd00:1::/64 of CPE b overlaps fd00::/8 of CPE a",
        "prefix fd12::/64 of CPE c overlaps fd00::/8 of CPE a",
    ]


def test_manifest_is_sorted_by_id_without_secrets() -> None:
    cpes = [
        {"id": "b", "secret": "s3cr3t-b", "prefixes": ["10.0.2.0/24"]},
        {"id": "a", "secret": "s3cr3t-a", "prefixes": ["10.0.1.0/24", "fd00::/64"]},
    ]
    assert fleet_filter.mptcp_tunnel_cpe_manifest(cpes) == "a 10.0.1.0/24 fd00::/64\nb 10.0.2.0/24\n"
