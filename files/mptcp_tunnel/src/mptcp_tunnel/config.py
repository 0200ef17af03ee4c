"""Agent configuration: one YAML file, validated completely before anything starts.

Every problem is reported as one line that names the file and the key, e.g.
``/etc/mptcp-tunnel/cpe.yaml: cpe.links[1].address: '10.2.0.x' is not an IP address``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mptcp_tunnel.aqm import AqmSettings
from mptcp_tunnel.cap import CapSettings, parse_bytes, zone
from mptcp_tunnel.linkstate import FailoverSettings
from mptcp_tunnel.overflow import OverflowSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

CPE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,11}$")  # "mt-" + id fits IFNAMSIZ (15)
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
RESERVED_TABLES = {0, 253, 254, 255}  # unspec, default, main, local
MIN_SECRET_LEN = 16
DEFAULT_STATE_DIR = "/var/lib/mptcp-tunnel"


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator (one line)."""


@dataclass(frozen=True)
class TunnelSettings:
    port: int = 7440
    tun_name: str = "mt0"
    mtu: int = 1500
    batch_bytes: int = 65536
    batch_timeout_us: int = 1000
    max_frame_bytes: int = 65535
    keepalive_s: float = 10.0
    congestion_control: str = ""  # "" = the host's default
    queue_bytes: int = 131072  # unsent data the tunnel may hold; 0 = unbounded (blocking sends)
    offload: Literal["auto", "on", "off"] = "auto"  # TUN GSO/checksum offload, negotiated per session
    workers: int = 0  # BGW worker processes; 0 = one per core
    gro_interfaces: tuple[str, ...] = ()  # LAN-facing interfaces setup-network turns GRO on for
    encryption: Literal["tls", "none"] = "tls"  # none = the HMAC handshake and a plaintext stream
    aqm: AqmSettings | None = None  # None = the byte bound only (the default); codel, fq_codel opt-in
    shape_mbit: float = 0.0  # fq_codel: the rate the agent hands the kernel (0 = the links decide)

    @property
    def fq_codel(self) -> bool:
        return self.aqm is not None and self.aqm.kind == "fq_codel"


def tunnel_to_wire(t: TunnelSettings) -> dict[str, Any]:
    """TunnelSettings as JSON-able values (the control process sends them to its workers)."""
    return asdict(t)


def tunnel_from_wire(d: dict[str, Any]) -> TunnelSettings:
    aqm = d.get("aqm")
    return TunnelSettings(
        **{
            **d,
            "gro_interfaces": tuple(d.get("gro_interfaces", ())),
            "aqm": AqmSettings(**aqm) if aqm else None,
        }
    )


@dataclass(frozen=True)
class TlsSettings:
    """The operator PKI's files (PEM); read again at every reload."""

    ca_file: str
    cert_file: str
    key_file: str
    crl_file: str = ""


@dataclass(frozen=True)
class MptcpLimits:
    subflows: int = 2
    add_addr_accepted: int = 2


@dataclass(frozen=True)
class Link:
    name: str
    kind: Literal["fixed", "cellular"]
    interface: str
    address: IPAddress
    gateway: IPAddress | None
    table: int
    rate_mbit: float = 0.0  # declared capacity, upstream (and down without rate_down_mbit); 0 = unknown
    rate_down_mbit: float = 0.0  # declared downstream capacity; 0 = rate_mbit
    cap: CapSettings | None = None  # cellular links: data allowance per period


@dataclass(frozen=True)
class CpeSettings:
    id: str
    secret: bytes  # b"" with encryption tls (the certificate is the credential)
    bgw_address: IPAddress
    policy: Literal["aggregate", "backup", "overflow"]
    routes: tuple[IPNetwork, ...]
    reconnect_initial_s: float
    reconnect_max_s: float
    links: tuple[Link, ...]
    bgw_name: str = ""  # the name the BGW's certificate must carry (encryption tls)
    failover: FailoverSettings = field(default_factory=FailoverSettings)
    overflow: OverflowSettings = field(default_factory=OverflowSettings)
    state_dir: str = DEFAULT_STATE_DIR  # where the cap usage survives restarts
    shape_share: float = 0.0  # shape at this share of the carrying links' declared rates (0 = off)
    link_share: float = 0.0  # a tbf on each link's interface at this share of its declared rate (0 = off)


@dataclass(frozen=True)
class CpeEntry:
    """A CPE as the BGW knows it."""

    id: str
    secret: bytes
    prefixes: tuple[IPNetwork, ...]
    shape_mbit: float | None = None  # this CPE's downstream rate; None = tunnel.shape_mbit


@dataclass(frozen=True)
class BgwSettings:
    listen_address: IPAddress
    cpes: tuple[CpeEntry, ...]
    name: str = ""  # informational: its certificate carries it
    max_pending_per_source: int = 8  # pending handshakes per source address (IPv6: per /64)


@dataclass(frozen=True)
class AgentConfig:
    path: str
    role: Literal["cpe", "bgw"]
    mode: Literal["mptcp", "hya"] = "mptcp"
    log_level: str = "info"
    metrics_listen: tuple[str, int] | None = ("127.0.0.1", 9477)
    control_socket: str = ""  # Unix socket `mptcp-tunnel status` reads; "" = none
    tunnel: TunnelSettings = field(default_factory=TunnelSettings)
    mptcp: MptcpLimits = field(default_factory=MptcpLimits)
    cpe: CpeSettings | None = None
    bgw: BgwSettings | None = None
    tls: TlsSettings | None = None  # set exactly when tunnel.encryption is tls
    hya: Any = None  # mptcp_tunnel.hya_core.HyaSettings when mode is "hya"


class _Section:
    """Reads one mapping of the YAML tree, remembering where it is for error messages."""

    def __init__(self, raw: object, where: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where or 'top level'}: expected a mapping, got {_kind(raw)}")
        for k in raw:  # YAML allows `1: x` next to `zz: y`; every key here is a name
            if not isinstance(k, str):
                raise ConfigError(f"{where or 'top level'}: key {k!r} is not a name (a {_kind(k)})")
        self.raw: dict[str, object] = raw
        self.where = where
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, default: object = None, *, required: bool = False) -> object:
        self.seen.add(name)
        if name not in self.raw or self.raw[name] is None:
            if required:
                raise ConfigError(f"{self.key(name)}: missing (required)")
            return default
        return self.raw[name]

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.key(name)}: expected an integer, got {_kind(value)}")
        if not lo <= value <= hi:
            raise ConfigError(f"{self.key(name)}: {value} is out of range {lo}..{hi}")
        return value

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self.key(name)}: expected a number, got {_kind(value)}")
        if not lo <= value <= hi:
            raise ConfigError(f"{self.key(name)}: {value} is out of range {lo}..{hi}")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(name)}: expected true or false, got {_kind(value)}")
        return value

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.get(name, default, required=required)
        if not isinstance(value, str):
            raise ConfigError(f"{self.key(name)}: expected a string, got {_kind(value)}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise ConfigError(f"{self.key(name)}: {value!r} is not one of {', '.join(choices)}")
        return value

    def address(self, name: str, *, required: bool = True) -> IPAddress | None:
        value = self.get(name, required=required)
        if value is None:
            return None
        try:
            return ipaddress.ip_address(str(value))
        except ValueError:
            raise ConfigError(f"{self.key(name)}: {value!r} is not an IP address") from None

    def networks(self, name: str) -> tuple[IPNetwork, ...]:
        value = self.get(name, required=True)
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{self.key(name)}: expected a non-empty list of prefixes")
        nets = []
        for i, item in enumerate(value):
            try:
                nets.append(ipaddress.ip_network(str(item), strict=True))
            except ValueError as exc:
                raise ConfigError(f"{self.key(name)}[{i}]: {item!r} is not a prefix ({exc})") from None
        return tuple(nets)

    def section(self, name: str, *, required: bool = False) -> _Section:
        return _Section(self.get(name, {}, required=required), self.key(name))

    def sections(self, name: str) -> list[_Section]:
        value = self.get(name, required=True)
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{self.key(name)}: expected a non-empty list")
        return [_Section(item, f"{self.key(name)}[{i}]") for i, item in enumerate(value)]

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise ConfigError(f"{self.key(str(unknown[0]))}: unknown key")


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _secret(sec: _Section, base_dir: Path, required: bool = True) -> bytes:
    inline = sec.get("secret")
    path = sec.get("secret_file")
    if not required:  # encryption tls: the certificate is the credential; a secret left here is unused
        return b""
    if (inline is None) == (path is None):
        raise ConfigError(f"{sec.key('secret')}: set exactly one of secret or secret_file")
    if inline is not None:
        if not isinstance(inline, str):
            raise ConfigError(f"{sec.key('secret')}: expected a string, got {_kind(inline)}")
        secret = inline.encode()
    else:
        file = base_dir / str(path)
        try:
            secret = file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"{sec.key('secret_file')}: cannot read {file}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_LEN:
        raise ConfigError(f"{sec.key('secret')}: shorter than {MIN_SECRET_LEN} bytes")
    return secret


def _cpe_id(sec: _Section) -> str:
    value = sec.string("id", required=True)
    if not CPE_ID_RE.match(value):
        raise ConfigError(f"{sec.key('id')}: {value!r} must match {CPE_ID_RE.pattern}")
    return value


def _interface(sec: _Section, name: str, default: str | None = None) -> str:
    value = sec.string(name, default, required=default is None)
    if not IFNAME_RE.match(value):
        raise ConfigError(f"{sec.key(name)}: {value!r} is not a valid interface name")
    return value


def _interface_list(sec: _Section, name: str) -> tuple[str, ...]:
    value = sec.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(f"{sec.key(name)}: expected a list of interface names, got {_kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not IFNAME_RE.match(item):
            raise ConfigError(f"{sec.key(name)}[{i}]: {item!r} is not a valid interface name")
    return tuple(value)


def _tunnel(sec: _Section) -> TunnelSettings:
    t = TunnelSettings(
        port=sec.integer("port", 7440, 1, 65535),
        tun_name=_interface(sec, "tun_name", "mt0"),
        mtu=sec.integer("mtu", 1500, 1280, 65535),
        batch_bytes=sec.integer("batch_bytes", 65536, 1500, 4 * 1024 * 1024),
        batch_timeout_us=sec.integer("batch_timeout_us", 1000, 0, 1_000_000),
        max_frame_bytes=sec.integer("max_frame_bytes", 65535, 1280, 65535),
        keepalive_s=sec.number("keepalive_s", 10.0, 0.5, 3600.0),
        congestion_control=sec.string("congestion_control", ""),
        queue_bytes=sec.integer("queue_bytes", 131072, 0, 64 * 1024 * 1024),
        offload=sec.choice("offload", "auto", ("auto", "on", "off")),  # type: ignore[arg-type]
        workers=sec.integer("workers", 0, 0, 256),
        gro_interfaces=_interface_list(sec, "gro_interfaces"),
        encryption=sec.choice("encryption", "tls", ("tls", "none")),  # type: ignore[arg-type]
        aqm=_aqm(sec),
        shape_mbit=sec.number("shape_mbit", 0.0, 0.0, 1_000_000.0),
    )
    sec.finish()
    if t.shape_mbit and not t.fq_codel:
        raise ConfigError(f"{sec.key('shape_mbit')}: needs aqm fq_codel (its queue is the flow queues)")
    if t.fq_codel and t.queue_bytes == 0:
        raise ConfigError(f"{sec.key('aqm')}: fq_codel needs queue_bytes > 0 (the kernel's part of it)")
    if t.max_frame_bytes < t.mtu:
        raise ConfigError(f"{sec.key('max_frame_bytes')}: {t.max_frame_bytes} is below mtu {t.mtu}")
    return t


def _aqm(sec: _Section) -> AqmSettings | None:
    kind = sec.choice("aqm", "none", ("codel", "fq_codel", "none"))
    target = sec.number("aqm_target_ms", 5.0, 0.5, 1000.0)
    interval = sec.number("aqm_interval_ms", 100.0, 1.0, 10000.0)
    ecn = sec.boolean("ecn", True)
    limit = sec.integer("aqm_limit_bytes", 4 * 1024 * 1024, 65536, 256 * 1024 * 1024)
    if target >= interval:
        raise ConfigError(f"{sec.key('aqm_target_ms')}: {target:g} is not below aqm_interval_ms {interval:g}")
    if kind == "none":
        return None
    return AqmSettings(
        target_s=target / 1000, interval_s=interval / 1000, ecn=ecn, kind=kind, limit_bytes=limit
    )


def _links(sec: _Section) -> tuple[Link, ...]:
    links = []
    for ls in sec.sections("links"):
        gateway = ls.address("gateway", required=False)
        link = Link(
            name=ls.string("name", required=True),
            kind=ls.choice("kind", "fixed", ("fixed", "cellular")),  # type: ignore[arg-type]
            interface=_interface(ls, "interface"),
            address=ls.address("address"),  # type: ignore[arg-type]
            gateway=gateway,
            table=ls.integer("table", 0, 1, 2**31 - 1),
            rate_mbit=ls.number("rate_mbit", 0.0, 0.0, 1_000_000.0),
            rate_down_mbit=ls.number("rate_down_mbit", 0.0, 0.0, 1_000_000.0),
            cap=_cap(ls.section("cap")) if ls.get("cap") is not None else None,
        )
        if link.cap is not None and link.kind != "cellular":
            raise ConfigError(
                f"{ls.key('cap')}: only cellular links take a data cap (this one is {link.kind})"
            )
        if link.table in RESERVED_TABLES:
            raise ConfigError(f"{ls.key('table')}: {link.table} is a reserved routing table")
        if gateway is not None and gateway.version != link.address.version:
            raise ConfigError(f"{ls.key('gateway')}: address family differs from address")
        ls.finish()
        links.append(link)
    for attr in ("name", "interface", "address", "table"):
        values = [getattr(link, attr) for link in links]
        dupes = {v for v in values if values.count(v) > 1}
        if dupes:
            raise ConfigError(f"{sec.key('links')}: duplicate {attr} {sorted(map(str, dupes))[0]}")
    return tuple(links)


def _cap(sec: _Section) -> CapSettings:
    raw = sec.get("bytes", required=True)
    try:
        limit = parse_bytes(raw)
    except ValueError as exc:
        raise ConfigError(f"{sec.key('bytes')}: {exc}") from None
    period = sec.choice("period", "monthly", ("monthly", "daily"))
    if period == "daily" and sec.get("reset_day") is not None:
        raise ConfigError(f"{sec.key('reset_day')}: only for period monthly (a daily period starts at 00:00)")
    reset_day = sec.integer("reset_day", 1, 1, 28)
    tz = sec.string("timezone", "UTC")
    try:
        zone(tz)
    except ValueError as exc:
        raise ConfigError(f"{sec.key('timezone')}: {exc}") from None
    sec.finish()
    return CapSettings(limit_bytes=limit, period=period, reset_day=reset_day, timezone=tz)  # type: ignore[arg-type]


def _state_dir(sec: _Section) -> str:
    value = sec.string("state_dir", DEFAULT_STATE_DIR)
    if not value.startswith("/"):
        raise ConfigError(f"{sec.key('state_dir')}: {value!r} must be an absolute path")
    return value


def _failover(sec: _Section) -> FailoverSettings:
    f = FailoverSettings(
        probe_interval_s=sec.integer("probe_interval_ms", 100, 0, 10_000) / 1000,
        down_after_s=sec.integer("down_after_ms", 500, 50, 600_000) / 1000,
        up_after_probes=sec.integer("up_after_probes", 3, 1, 100),
    )
    sec.finish()
    if f.probe_interval_s and f.down_after_s < 2 * f.probe_interval_s:
        raise ConfigError(f"{sec.key('down_after_ms')}: must be at least twice probe_interval_ms")
    return f


def _overflow(sec: _Section) -> OverflowSettings:
    o = OverflowSettings(
        join_at=sec.number("join_at", 0.85, 0.05, 2.0),
        join_after_s=sec.number("join_after_s", 2.0, 0.0, 3600.0),
        leave_at=sec.number("leave_at", 0.6, 0.0, 2.0),
        leave_after_s=sec.number("leave_after_s", 10.0, 0.0, 3600.0),
    )
    sec.finish()
    if o.leave_at >= o.join_at:
        raise ConfigError(f"{sec.key('leave_at')}: must be below join_at (hysteresis)")
    return o


def _tls(sec: _Section, base_dir: Path) -> TlsSettings:
    def file(name: str, required: bool = True) -> str:
        value = sec.string(name, "", required=required)
        if not value:
            if required:
                raise ConfigError(f"{sec.key(name)}: missing (required with tunnel.encryption tls)")
            return ""
        return str(base_dir / value)  # read (and checked) by tls.load_contexts

    tls = TlsSettings(
        ca_file=file("ca_file"),
        cert_file=file("cert_file"),
        key_file=file("key_file"),
        crl_file=file("crl_file", required=False),
    )
    sec.finish()
    return tls


def _name(sec: _Section, key: str, required: bool) -> str:
    value = sec.string(key, "", required=required)
    if required and not value:
        raise ConfigError(f"{sec.key(key)}: missing (required with tunnel.encryption tls)")
    if value and not re.match(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$", value):
        raise ConfigError(f"{sec.key(key)}: {value!r} is not a DNS name")
    return value


def _check_shape_share(sec: _Section, cpe: CpeSettings, tunnel: TunnelSettings) -> None:
    if not cpe.shape_share:
        return
    key = sec.key("shape_share")
    if cpe.shape_share < 0.5:
        raise ConfigError(f"{key}: {cpe.shape_share:g} is below 0.5 (a share of the links' rates; 0 = off)")
    if not tunnel.fq_codel:
        raise ConfigError(f"{key}: needs tunnel.aqm fq_codel (its queue is the flow queues)")
    if tunnel.shape_mbit:
        raise ConfigError(f"{key}: tunnel.shape_mbit sets a fixed rate already; set one of the two")
    _require_rates(sec, cpe, "shape_share")


def _check_link_share(sec: _Section, cpe: CpeSettings) -> None:
    if not cpe.link_share:
        return
    key = sec.key("link_share")
    if cpe.link_share < 0.5:
        raise ConfigError(f"{key}: {cpe.link_share:g} is below 0.5 (a share of each link's rate; 0 = off)")
    if cpe.shape_share > cpe.link_share:
        # Below the shaper's share the links' limits, not the flow queues, would hold the queue.
        raise ConfigError(f"{key}: {cpe.link_share:g} is below shape_share {cpe.shape_share:g}")
    _require_rates(sec, cpe, "link_share")


def _require_rates(sec: _Section, cpe: CpeSettings, setting: str) -> None:
    for i, link in enumerate(cpe.links):
        if not link.rate_mbit:
            raise ConfigError(f"{sec.key('links')}[{i}].rate_mbit: required on every link with {setting}")


def _cpe(sec: _Section, base_dir: Path, tls: bool, tunnel: TunnelSettings) -> CpeSettings:
    cpe = CpeSettings(
        id=_cpe_id(sec),
        secret=_secret(sec, base_dir, required=not tls),
        bgw_address=sec.address("bgw_address"),  # type: ignore[arg-type]
        policy=sec.choice("policy", "aggregate", ("aggregate", "backup", "overflow")),  # type: ignore[arg-type]
        routes=sec.networks("routes"),
        reconnect_initial_s=sec.number("reconnect_initial_s", 0.5, 0.05, 60.0),
        reconnect_max_s=sec.number("reconnect_max_s", 30.0, 0.1, 3600.0),
        links=_links(sec),
        bgw_name=_name(sec, "bgw_name", required=tls),
        failover=_failover(sec.section("failover")),
        overflow=_overflow(sec.section("overflow")),
        state_dir=_state_dir(sec),
        shape_share=sec.number("shape_share", 0.0, 0.0, 1.0),
        link_share=sec.number("link_share", 0.0, 0.0, 1.0),
    )
    sec.finish()
    _check_shape_share(sec, cpe, tunnel)
    _check_link_share(sec, cpe)
    if cpe.policy == "overflow":
        kinds = {link.kind for link in cpe.links}
        if kinds != {"fixed", "cellular"}:
            raise ConfigError(f"{sec.key('policy')}: overflow needs at least one fixed and one cellular link")
        for i, link in enumerate(cpe.links):
            if link.kind == "fixed" and not link.rate_mbit:
                raise ConfigError(
                    f"{sec.key('links')}[{i}].rate_mbit: required on fixed links for policy overflow"
                )
    if cpe.reconnect_max_s < cpe.reconnect_initial_s:
        raise ConfigError(f"{sec.key('reconnect_max_s')}: below reconnect_initial_s")
    families = {link.address.version for link in cpe.links}
    if cpe.bgw_address.version not in families:
        raise ConfigError(f"{sec.key('bgw_address')}: no link has an address of the same family")
    return cpe


def _bgw(sec: _Section, base_dir: Path, tls: bool, tunnel: TunnelSettings) -> BgwSettings:
    cpes = []
    for cs in sec.sections("cpes"):
        entry = CpeEntry(
            id=_cpe_id(cs),
            secret=_secret(cs, base_dir, not tls),
            prefixes=cs.networks("prefixes"),
            shape_mbit=cs.number("shape_mbit", 0.0, 0.0, 1_000_000.0) if "shape_mbit" in cs.raw else None,
        )
        if entry.shape_mbit and not tunnel.fq_codel:
            key = cs.key("shape_mbit")
            raise ConfigError(f"{key}: needs tunnel.aqm fq_codel (its queue is the flow queues)")
        for i, net in enumerate(entry.prefixes):
            if net.prefixlen == 0:
                raise ConfigError(f"{cs.key('prefixes')}[{i}]: {net} is a default route, not a CPE's LAN")
        cpes.append(entry)
        cs.finish()
    bgw = BgwSettings(
        listen_address=sec.address("listen_address"),  # type: ignore[arg-type]
        cpes=tuple(cpes),
        name=_name(sec, "name", required=False),
        max_pending_per_source=sec.integer("max_pending_per_source", 8, 1, 1_000_000),
    )
    sec.finish()
    _check_unique_ids(sec, cpes)
    _check_no_overlaps(sec, cpes)
    _check_own_address(sec, cpes, bgw.listen_address)
    if not tls:
        _check_unique_secrets(sec, cpes)
    return bgw


def _check_own_address(sec: _Section, cpes: list[CpeEntry], own: IPAddress) -> None:
    """A CPE prefix holding the BGW's service address would route the BGW's own traffic to a customer."""
    if own.is_unspecified:
        return  # the host's addresses are checked when the BGW starts (BgwAgent)
    for cpe in cpes:
        for net in cpe.prefixes:
            if own in net:
                raise ConfigError(
                    f"{sec.key('cpes')}: prefix {net} of {cpe.id!r} holds the BGW's address {own}"
                )


def _check_unique_secrets(sec: _Section, cpes: list[CpeEntry]) -> None:
    """A secret shared by two CPEs lets either one be the other."""
    seen: dict[bytes, str] = {}
    for cpe in cpes:
        other = seen.setdefault(cpe.secret, cpe.id)
        if other != cpe.id:
            raise ConfigError(f"{sec.key('cpes')}: CPEs {other!r} and {cpe.id!r} share a secret")


def _check_unique_ids(sec: _Section, cpes: list[CpeEntry]) -> None:
    """Duplicate CPE ids, in one pass (a BGW serves thousands of CPEs)."""
    seen: set[str] = set()
    for cpe in cpes:
        if cpe.id in seen:
            raise ConfigError(f"{sec.key('cpes')}: duplicate CPE id {cpe.id!r}")
        seen.add(cpe.id)


def _check_no_overlaps(sec: _Section, cpes: list[CpeEntry]) -> None:
    """Overlapping prefixes (between CPEs or within one), O(n log n).

    Per address family the prefixes are sorted by first address (the shorter prefix first on a tie).
    Two CIDR prefixes overlap only if one contains the other, so a prefix overlaps some earlier one
    exactly when its first address is not above the highest last address seen so far, and the
    prefix that reached that address contains it. The message names the earlier of the two in the file.
    """
    # (first address, prefix length, position in the file, prefix, CPE id) per address family
    owned: dict[int, list[tuple[int, int, int, IPNetwork, str]]] = {4: [], 6: []}
    for cpe in cpes:
        for net in cpe.prefixes:
            owned[net.version].append(
                (int(net.network_address), net.prefixlen, len(owned[4]) + len(owned[6]), net, cpe.id)
            )
    for entries in owned.values():
        entries.sort()
        reach, holder = -1, None  # the highest last address so far, and the prefix that reached it
        for entry in entries:
            if holder is not None and entry[0] <= reach:
                a, b = (holder, entry) if holder[2] < entry[2] else (entry, holder)
                raise ConfigError(f"{sec.key('cpes')}: prefix {a[3]} of {a[4]!r} overlaps {b[3]} of {b[4]!r}")
            last = int(entry[3].broadcast_address)
            if last > reach:
                reach, holder = last, entry


def _listen(sec: _Section) -> tuple[str, int] | None:
    value = sec.string("metrics_listen", "127.0.0.1:9477")
    if value == "":
        return None
    host, sep, port = value.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        port_no = int(port)
    except ValueError:
        port_no = -1
    if not sep or not 1 <= port_no <= 65535:
        raise ConfigError(f"metrics_listen: {value!r} is not 'address:port'")
    return host.strip("[]"), port_no


def parse_config(raw: object, path: str) -> AgentConfig:
    """Validate an already-loaded YAML document. Raises ConfigError naming file and key."""
    try:
        top = _Section(raw, "")
        role = top.choice("role", "", ("cpe", "bgw"))
        mode = top.choice("mode", "mptcp", ("mptcp", "hya"))
        base_dir = Path(path).parent
        tunnel = _tunnel(top.section("tunnel"))
        # The HYA baseline has no session of ours to encrypt.
        tls = tunnel.encryption == "tls" and mode == "mptcp"
        cfg = AgentConfig(
            path=path,
            role=role,  # type: ignore[arg-type]
            mode=mode,  # type: ignore[arg-type]
            log_level=top.choice("log_level", "info", ("debug", "info", "warning", "error")),
            metrics_listen=_listen(top),
            control_socket=_control_socket(top, role),
            tunnel=tunnel,
            mptcp=_limits(top.section("mptcp")),
            cpe=_cpe(top.section("cpe", required=True), base_dir, tls, tunnel) if role == "cpe" else None,
            bgw=_bgw(top.section("bgw", required=True), base_dir, tls, tunnel) if role == "bgw" else None,
            tls=_tls(top.section("tls", required=True), base_dir) if tls else None,
            hya=_hya(top.section("hya")) if mode == "hya" else None,
        )
        if not tls and "tls" in top.raw:
            top.seen.add("tls")  # kept for switching back; not read
        other = "bgw" if role == "cpe" else "cpe"
        if other in top.raw:
            raise ConfigError(f"{other}: not allowed when role is {role}")
        top.finish()
        return cfg
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def default_control_socket(role: str) -> str:
    return f"/run/mptcp-tunnel/{role}.sock"


def _control_socket(top: _Section, role: str) -> str:
    value = top.string("control_socket", default_control_socket(role))
    if value and not value.startswith("/"):
        raise ConfigError(f'control_socket: {value!r} must be an absolute path (or "" for none)')
    if len(value.encode()) > 107:  # sun_path
        raise ConfigError("control_socket: longer than a Unix socket path may be (107 bytes)")
    return value


def _limits(sec: _Section) -> MptcpLimits:
    limits = MptcpLimits(
        subflows=sec.integer("subflows", 2, 0, 8),
        add_addr_accepted=sec.integer("add_addr_accepted", 2, 0, 8),
    )
    sec.finish()
    return limits


def _hya(sec: _Section) -> Any:
    from mptcp_tunnel import hya_core  # only needed for the HYA baseline mode

    sec.seen.update(sec.raw)
    return hya_core.parse_hya(sec.raw, sec.where)


# libyaml's safe loader when PyYAML has it: 5x faster on a 10 000-CPE BGW file.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_BaseLoader):  # type: ignore[misc]
    """The safe loader, but a key given twice in one mapping is an error.

    YAML loaders keep the last value silently: a second ``cpes:`` in a BGW file would drop every
    CPE of the first list without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        # Compared as resolved tag and text, not constructed: constructing every key a second time
        # made a 10 000-CPE file load 20-60 % slower, this ~15 %. Every key the config accepts is a
        # string, and two strings with one tag and one text are one key.
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: str) -> AgentConfig:
    """Read and validate a config file. Raises ConfigError with a one-line message."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start]
        raise ConfigError(f"{path}: not UTF-8 text (byte {bad:#04x} at offset {exc.start})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: {where}{problem}") from None
    return parse_config(raw, path)


def load_for_reload(current: AgentConfig, restart_keys: dict[str, object]) -> AgentConfig | None:
    """Re-read ``current``'s file for a reload; None (with the reason logged) if it must be refused.

    ``restart_keys`` maps the names of settings that only a restart can change to their running values.
    """
    log = logging.getLogger("mptcp_tunnel.config")
    try:
        new = load_config(current.path)
    except ConfigError as exc:
        log.error("reload refused, keeping the running config: %s", exc)
        return None
    if new.tls is not None:
        from mptcp_tunnel.tls import load_contexts  # the files must load, or nothing changes

        try:
            load_contexts(new.tls, server=new.role == "bgw")
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s: %s", new.path, exc)
            return None
    changed = [
        key for key, value in {"role": current.role, **restart_keys}.items() if _lookup(new, key) != value
    ]
    if changed:
        log.error("reload refused: changing %s needs a restart", ", ".join(changed))
        return None
    return new


def _lookup(cfg: AgentConfig, dotted: str) -> object:
    node: object = cfg
    for part in dotted.split("."):
        node = getattr(node, part, None)
    return node
