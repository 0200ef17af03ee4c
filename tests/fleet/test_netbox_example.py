"""inventory/netbox-example: NetBox's device data mapped onto the roles' variable contract.

The mapping (constructed.yml, the same `compose`/`groups` as netbox.yml's nb_inventory config) is run
on export.yml, devices as nb_inventory returns them, with the CPE secrets in one vault-encrypted file.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import mptcp_tunnel_fleet as fleet_filter
import pytest
import yaml
from ansible.constants import DEFAULT_VAULT_ID_MATCH
from ansible.inventory.manager import InventoryManager
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.parsing.dataloader import DataLoader
from ansible.parsing.vault import VaultLib, VaultSecret
from ansible.vars.hostvars import HostVars
from ansible.vars.manager import VariableManager
from conftest import REPO, VAULT_PASSWORD

EXAMPLE = REPO / "inventory" / "netbox-example"
SPECS = REPO / "roles" / "mptcp_tunnel" / "meta" / "argument_specs.yml"


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of the example with its secrets file vault-encrypted, as a real inventory has it."""
    copy = tmp_path / "netbox-example"
    shutil.copytree(EXAMPLE, copy)
    secrets = copy / "group_vars" / "cpe" / "vault.yml"
    vault = VaultLib([(DEFAULT_VAULT_ID_MATCH, VaultSecret(VAULT_PASSWORD))])
    secrets.write_bytes(vault.encrypt(secrets.read_bytes()))
    return copy


def load(example: Path) -> tuple[HostVars, InventoryManager]:
    loader = DataLoader()
    loader.set_vault_secrets([(DEFAULT_VAULT_ID_MATCH, VaultSecret(VAULT_PASSWORD))])
    inv = InventoryManager(
        loader=loader, sources=[str(example / "export.yml"), str(example / "constructed.yml")]
    )
    manager = VariableManager(loader=loader, inventory=inv)
    return HostVars(inventory=inv, variable_manager=manager, loader=loader), inv


def test_constructed_mapping_is_the_netbox_plugins_mapping() -> None:
    netbox = yaml.safe_load((EXAMPLE / "netbox.yml").read_text())
    constructed = yaml.safe_load((EXAMPLE / "constructed.yml").read_text())
    assert netbox["plugin"] == "netbox.netbox.nb_inventory"
    assert netbox["compose"] == constructed["compose"]
    assert netbox["groups"] == constructed["groups"]


def test_every_host_meets_the_roles_argument_specs(example: Path) -> None:
    hostvars, inv = load(example)
    assert sorted(h.name for h in inv.groups["bgw"].get_hosts()) == ["bgw-ber1", "bgw-fra1"]
    assert sorted(h.name for h in inv.groups["cpe"].get_hosts()) == [f"cpe-000{i}" for i in range(1, 6)]
    options: dict[str, Any] = yaml.safe_load(SPECS.read_text())["argument_specs"]["main"]["options"]
    validator = ArgumentSpecValidator(options)
    for role in ("cpe", "bgw"):
        for host in inv.groups[role].get_hosts():
            hv = hostvars[host.name]
            provided = {k: hv[k] for k in options if k in hv and hv[k] not in (None, "")}
            provided["mptcp_tunnel_role"] = role
            result = validator.validate(provided)
            assert result.error_messages == [], host.name
    cpe5 = hostvars["cpe-0005"]
    assert cpe5["mptcp_tunnel_cpe_bgw"] == "bgw-fra1"  # custom field overrides the site's BGW
    assert cpe5["mptcp_tunnel_cpe_prefixes"] == ["10.64.5.0/24"]  # no IPv6 prefix recorded
    assert hostvars["cpe-0004"]["mptcp_tunnel_cpe_policy"] == "backup"
    assert hostvars["cpe-0003"]["mptcp_tunnel_cpe_links"][1]["address"] == "100.127.3.2"
    assert hostvars["bgw-ber1"]["mptcp_tunnel_bgw_address"] == "198.51.100.20"


def test_the_fleet_from_netbox_with_one_decryption(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_decrypt = VaultLib.decrypt

    def counting_decrypt(self: VaultLib, vaulttext: Any, *args: Any, **kwargs: Any) -> bytes:
        calls.append(1)
        plain: bytes = real_decrypt(self, vaulttext, *args, **kwargs)
        return plain

    monkeypatch.setattr(VaultLib, "decrypt", counting_decrypt)  # counts the real decryptions
    hostvars, inv = load(example)
    cpes = [h.name for h in inv.groups["cpe"].get_hosts()]
    fleet = fleet_filter.mptcp_tunnel_fleet(hostvars, cpes, ["bgw-fra1", "bgw-ber1"])
    assert len(calls) == 1  # the whole secrets file, once, for every CPE
    assert fleet["orphans"] == [] and fleet["problems"] == {"bgw-fra1": [], "bgw-ber1": []}
    assert [c["id"] for c in fleet["cpes"]["bgw-fra1"]] == ["cpe-0001", "cpe-0002", "cpe-0005"]
    assert fleet["cpes"]["bgw-ber1"][0] == {
        "id": "cpe-0003",
        "secret": "example-secret-0003",
        "prefixes": ["10.64.3.0/24", "2001:db8:100:3::/64"],
    }


def test_a_netbox_data_error_is_named_by_the_fleet_check(example: Path) -> None:
    export = example / "export.yml"
    text = export.read_text()
    assert text.count("mptcp_lan4: 10.64.2.0/24") == 1
    export.write_text(text.replace("mptcp_lan4: 10.64.2.0/24", "mptcp_lan4: 10.64.0.0/16"))
    hostvars, inv = load(example)
    cpes = [h.name for h in inv.groups["cpe"].get_hosts()]
    fleet = fleet_filter.mptcp_tunnel_fleet(hostvars, cpes, ["bgw-fra1", "bgw-ber1"])
    assert fleet["problems"]["bgw-fra1"] == [
        "prefix 10.64.0.0/16 of CPE cpe-0002 overlaps 10.64.1.0/24 of CPE cpe-0001",
        "prefix 10.64.5.0/24 of CPE cpe-0005 overlaps 10.64.0.0/16 of CPE cpe-0002",
    ]
