"""Fleet filters for the mptcp_tunnel role: which CPEs each BGW serves, and the fleet checks.

Operators run thousands of CPEs per BGW, so everything here is linear or O(n log n) in the fleet size:
`mptcp_tunnel_fleet` walks the CPE group once for all BGWs (each CPE's variables read once, each
vault-encrypted secret decrypted once) and `mptcp_tunnel_prefix_problems` sorts the prefixes once per
address family instead of comparing every pair.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import pickle
import signal
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible.parsing.yaml.objects import AnsibleVaultEncryptedUnicode
from ansible.utils.unsafe_proxy import wrap_var
from ansible.vars.hostvars import HostVarsVars

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_LISTED = 10  # problems named in one message; the rest are counted
MAX_WORKERS = 8  # processes reading CPEs at once
PARALLEL_MIN_HOSTS = 500  # per process: below this, forking costs more than it saves
_TEMPLATE_MARKS = ("{{", "{%", "{#")


def _plain(value: Any) -> bool:
    """True if `value` needs no templating (no Jinja markers anywhere in it)."""
    if isinstance(value, AnsibleVaultEncryptedUnicode):
        return True
    if isinstance(value, str):
        return not any(mark in value for mark in _TEMPLATE_MARKS)
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(_plain(v) for v in value.values())
    return True


class _HostReader:
    """One CPE's variables, read once: raw where they are plain, templated (Ansible's way) where not."""

    def __init__(self, hostvars: Mapping[str, Any], host: str) -> None:
        self.hostvars, self.host = hostvars, host
        raw_get = getattr(hostvars, "raw_get", None)
        self.raw: Mapping[str, Any] = raw_get(host) if raw_get is not None else hostvars[host]
        self._templated: Mapping[str, Any] | None = None

    def _templating_view(self) -> Mapping[str, Any]:
        """What `hostvars[host]` gives (HostVarsVars over the host's raw vars), without reading them again."""
        loader = getattr(self.hostvars, "_loader", None)
        if loader is not None and hasattr(self.hostvars, "raw_get"):
            return HostVarsVars(self.raw, loader=loader)
        return self.hostvars[self.host]

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self.raw:
            return default
        value = self.raw[key]
        if not _plain(value):
            if self._templated is None:
                self._templated = self._templating_view()
            value = self._templated.get(key, default)
        if isinstance(value, AnsibleVaultEncryptedUnicode):
            return value.data  # the one decryption of this value
        return value


def _parallel(read: Callable[[str], tuple[Any, ...]], hosts: list[str]) -> list[tuple[Any, ...]]:
    """`[read(h) for h in hosts]`, spread over the controller's CPUs for large fleets.

    Reading a CPE costs ~1.5 ms (Ansible's variable precedence) plus ~4 ms per vault-encrypted value
    (PBKDF2, by design of the vault format); 10 000 CPEs are a minute on one core. Forked children
    each read a contiguous share and send plain tuples back through a pipe; the order is kept.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(cpus, MAX_WORKERS, len(hosts) // PARALLEL_MIN_HOSTS))
    if workers == 1:
        return [read(h) for h in hosts]
    n = len(hosts)
    chunks = [hosts[i * n // workers : (i + 1) * n // workers] for i in range(workers)]
    children: list[tuple[int, int]] = []
    try:
        for chunk in chunks[1:]:
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: read the share, send it, leave without running any cleanup
                try:  # whatever happens here, the child never returns into Ansible's code
                    os.close(rfd)
                    try:
                        payload: tuple[str, Any] = ("ok", [read(h) for h in chunk])
                    except Exception as exc:  # noqa: BLE001 -- reported by the parent as a filter error
                        payload = ("error", f"{exc}")
                    with os.fdopen(wfd, "wb") as out:
                        pickle.dump(payload, out)
                finally:
                    os._exit(0)
            os.close(wfd)
            children.append((pid, rfd))
        results = [read(h) for h in chunks[0]]
        for pid, rfd in list(children):
            children.remove((pid, rfd))
            try:
                with os.fdopen(rfd, "rb") as inp:
                    status, payload = pickle.load(inp)
            except (EOFError, pickle.UnpicklingError):
                status, payload = "error", "a process reading the fleet ended without an answer"
            finally:
                os.waitpid(pid, 0)
            if status != "ok":
                raise AnsibleFilterError(str(payload))
            results += payload
        return results
    finally:
        for pid, rfd in children:  # only after an error: stop and reap the rest
            os.close(rfd)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _read_cpe(hostvars: Mapping[str, Any], host: str) -> tuple[Any, ...]:
    """One CPE as plain data.

    ("orphan", None, text) | ("missing", bgw, text) | ("cpe", bgw, id, secret, prefixes, shape_mbit)
    """
    hv = _HostReader(hostvars, host)
    bgw = hv.get("mptcp_tunnel_cpe_bgw")
    if bgw is None or str(bgw) == "":
        return ("orphan", None, f"CPE {host} has no mptcp_tunnel_cpe_bgw")
    secret = hv.get("mptcp_tunnel_cpe_secret")
    if secret is None:
        return ("missing", str(bgw), f"CPE {host}: mptcp_tunnel_cpe_secret is not set")
    prefixes = hv.get("mptcp_tunnel_cpe_prefixes", [])
    if isinstance(prefixes, str) or not isinstance(prefixes, Iterable):
        prefixes = [prefixes]
    cpe_id = str(hv.get("mptcp_tunnel_cpe_id", host))
    shape = hv.get("mptcp_tunnel_cpe_downstream_shape_mbit")
    if shape is not None:
        try:
            shape = float(shape)
        except (TypeError, ValueError):
            shape = -1.0
        if not 0 <= shape <= 1_000_000:
            text = f"CPE {host}: mptcp_tunnel_cpe_downstream_shape_mbit must be a number of Mbit/s (0 = off)"
            return ("missing", str(bgw), text)
    return ("cpe", str(bgw), cpe_id, str(secret), [str(p) for p in prefixes], shape)


def _orphan_text(host: str, bgw: str) -> str:
    return f"CPE {host} is assigned to BGW {bgw}, which is not in the inventory"


def mptcp_tunnel_fleet(
    hostvars: Mapping[str, Any], cpe_hosts: Iterable[str], bgw_hosts: Iterable[str]
) -> dict[str, Any]:
    """Every BGW's CPE list and the fleet's problems, from one walk over the CPE group.

    Returns ``{"cpes": {bgw: [{"id", "secret", "prefixes"[, "shape_mbit"]}, ...]}, "problems": {bgw: [...]},
    "orphans": [str, ...]}`` with every BGW of `bgw_hosts` present (an empty list when it serves none).
    Values are marked unsafe: a secret or id containing ``{{`` is data, never a template.
    """
    hosts = [str(h) for h in cpe_hosts]
    cpes: dict[str, list[dict[str, Any]]] = {str(b): [] for b in bgw_hosts}
    missing: dict[str, list[str]] = {b: [] for b in cpes}
    orphans: list[str] = []
    for host, item in zip(hosts, _parallel(functools.partial(_read_cpe, hostvars), hosts), strict=True):
        kind, bgw = item[0], item[1]
        if kind == "orphan":
            orphans.append(item[2])
        elif bgw not in cpes:
            orphans.append(_orphan_text(host, bgw))
        elif kind == "missing":
            missing[bgw].append(item[2])
        else:
            entry = {"id": item[2], "secret": item[3], "prefixes": item[4]}
            if item[5] is not None:  # this CPE's downstream shaper on the BGW (else the BGW's own)
                entry["shape_mbit"] = item[5]
            cpes[bgw].append(entry)
    problems = {b: missing[b] + mptcp_tunnel_prefix_problems(cpes[b]) for b in cpes}
    return {"cpes": wrap_var(cpes), "problems": problems, "orphans": orphans}


def _read_bgw_name(hostvars: Mapping[str, Any], host: str) -> tuple[Any, ...]:
    return (_HostReader(hostvars, host).get("mptcp_tunnel_cpe_bgw"),)


def mptcp_tunnel_orphan_cpes(
    hostvars: Mapping[str, Any], cpe_hosts: Iterable[str], bgw_hosts: Iterable[str]
) -> list[str]:
    """CPE hosts whose mptcp_tunnel_cpe_bgw is missing or names no host of the BGW group (no secret read)."""
    bgws = {str(b) for b in bgw_hosts}
    hosts = [str(h) for h in cpe_hosts]
    problems = []
    names = _parallel(functools.partial(_read_bgw_name, hostvars), hosts)
    for host, (bgw,) in zip(hosts, names, strict=True):
        if bgw is None or str(bgw) == "":
            problems.append(f"CPE {host} has no mptcp_tunnel_cpe_bgw")
        elif str(bgw) not in bgws:
            problems.append(_orphan_text(host, str(bgw)))
    return problems


def mptcp_tunnel_prefix_problems(cpes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Problems in a BGW's CPE list: bad or missing prefixes, overlaps, duplicate ids. O(n log n).

    Overlaps: per address family the prefixes are sorted by first address (shorter prefix first on a
    tie); CIDR prefixes overlap only by containment, so a prefix overlaps an earlier one exactly when its
    first address is not above the highest last address seen so far, and the prefix that reached that
    address contains it. Each overlapping prefix is reported once, against that container.
    """
    problems: list[str] = []
    seen_ids: set[str] = set()
    # per family: (first address, prefix length, position in the fleet, prefix, CPE id)
    owned: dict[int, list[tuple[int, int, int, IPNetwork, str]]] = {4: [], 6: []}
    position = 0
    for cpe in cpes:
        cid = str(cpe["id"])
        if cid in seen_ids:
            problems.append(f"CPE id {cid} is used twice")
        seen_ids.add(cid)
        if not cpe.get("prefixes"):
            problems.append(f"CPE {cid} has no LAN prefixes (mptcp_tunnel_cpe_prefixes)")
        for text in cpe.get("prefixes", []):
            try:
                net = ipaddress.ip_network(str(text), strict=True)
            except ValueError as exc:
                problems.append(f"CPE {cid}: {text!r} is not a network prefix ({exc})")
                continue
            owned[net.version].append((int(net.network_address), net.prefixlen, position, net, cid))
            position += 1
    overlaps: list[tuple[int, str]] = []
    for entries in owned.values():
        entries.sort()
        reach, holder = -1, None  # highest last address so far, and the prefix that reached it
        for entry in entries:
            if holder is not None and entry[0] <= reach:
                later, earlier = (entry, holder) if entry[2] > holder[2] else (holder, entry)
                text = f"prefix {later[3]} of CPE {later[4]} overlaps {earlier[3]} of CPE {earlier[4]}"
                overlaps.append((later[2], text))
            last = int(entry[3].broadcast_address)
            if last > reach:
                reach, holder = last, entry
    problems += [text for _, text in sorted(overlaps)]
    if len(problems) > MAX_LISTED:
        problems = problems[:MAX_LISTED] + [f"... and {len(problems) - MAX_LISTED} more problem(s)"]
    return problems


def mptcp_tunnel_cpe_manifest(cpes: Iterable[Mapping[str, Any]]) -> str:
    """The BGW's CPE list without secrets, one CPE per line sorted by id: what `--diff` shows."""

    def line(c: Mapping[str, Any]) -> str:
        shape = f" shape {c['shape_mbit']:g} Mbit/s" if c.get("shape_mbit") is not None else ""
        return f"{c['id']} {' '.join(str(p) for p in c.get('prefixes', []))}".rstrip() + shape

    lines = sorted(line(c) for c in cpes)
    return "".join(f"{line}\n" for line in lines)


def mptcp_tunnel_is_prefix(text: Any) -> bool:
    try:
        ipaddress.ip_network(str(text), strict=True)
    except ValueError:
        return False
    return True


def mptcp_tunnel_is_address(text: Any) -> bool:
    try:
        ipaddress.ip_address(str(text))
    except ValueError:
        return False
    return True


def mptcp_tunnel_bad_prefixes(items: Iterable[Any]) -> list[str]:
    """The entries of `items` that are not network prefixes (host bits set count as bad)."""
    return [str(i) for i in items if not mptcp_tunnel_is_prefix(i)]


def mptcp_tunnel_bad_addresses(items: Iterable[Any]) -> list[str]:
    """The entries of `items` that are not IP addresses."""
    return [str(i) for i in items if not mptcp_tunnel_is_address(i)]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "mptcp_tunnel_fleet": mptcp_tunnel_fleet,
            "mptcp_tunnel_cpe_manifest": mptcp_tunnel_cpe_manifest,
            "mptcp_tunnel_prefix_problems": mptcp_tunnel_prefix_problems,
            "mptcp_tunnel_orphan_cpes": mptcp_tunnel_orphan_cpes,
            "mptcp_tunnel_is_prefix": mptcp_tunnel_is_prefix,
            "mptcp_tunnel_is_address": mptcp_tunnel_is_address,
            "mptcp_tunnel_bad_prefixes": mptcp_tunnel_bad_prefixes,
            "mptcp_tunnel_bad_addresses": mptcp_tunnel_bad_addresses,
        }
