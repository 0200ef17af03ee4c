"""TLS 1.3 mutual, sans-I/O: who may connect as what (real OpenSSL, memory BIOs, no sockets)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pki import Pki

from mptcp_tunnel import tls
from mptcp_tunnel.config import ConfigError, TlsSettings
from mptcp_tunnel.tls import TlsChannel, TlsError

BGW = "bgw1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    p = Pki(tmp_path_factory.mktemp("pki"))
    p.issue(BGW, "bgw")
    p.issue("cpe1", "cpe")
    p.issue("cpe2", "cpe")
    p.issue("cpe1", "cpe", expired=True, stem="cpe1-expired")
    p.issue("cpe1", "cpe", eku="server", stem="cpe1-server-eku")
    p.issue(BGW, "cpe", stem="bgw-with-cpe-eku")  # a CPE certificate carrying the BGW's name
    p.issue("cpe1", "cpe", names=["cpe1", "cpe2"], stem="cpe1-two-names")
    p.issue("cpe3", "cpe")
    p.revoke("cpe3")
    return p


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    p = Pki(tmp_path_factory.mktemp("other"), name="other")
    p.issue("cpe1", "cpe")
    p.issue(BGW, "bgw")
    return p


def settings_of(pki: Pki, stem: str, crl: bool = False) -> TlsSettings:
    return TlsSettings(**pki.tls_section(stem, crl))


def pump(a: TlsChannel, b: TlsChannel) -> None:
    for src, dst in ((a, b), (b, a)):
        data = src.take()
        if data:
            dst.feed(data)


def run(client: TlsChannel, server: TlsChannel) -> None:
    """Both handshakes, then one application message each way (the client learns of a refusal here)."""
    done_c = done_s = False
    for _ in range(10):
        if not done_c:
            done_c = client.handshake()
        pump(client, server)
        if not done_s:
            done_s = server.handshake()
        pump(client, server)
        if done_c and done_s:
            break
    assert done_c and done_s
    client.write(b"ping")
    pump(client, server)
    buf = memoryview(bytearray(100))
    assert bytes(buf[: server.read_into(buf)]) == b"ping"
    server.write(b"pong")
    pump(client, server)
    assert bytes(buf[: client.read_into(buf)]) == b"pong"


def channels(server: TlsSettings, client: TlsSettings, name: str = BGW) -> tuple[TlsChannel, TlsChannel]:
    c = TlsChannel(tls.client_context(client), server_side=False, server_hostname=name)
    s = TlsChannel(tls.server_context(server), server_side=True)
    return c, s


def test_a_cpe_and_its_bgw_connect_and_the_bgw_sees_the_cpe_id(pki: Pki) -> None:
    c, s = channels(settings_of(pki, BGW), settings_of(pki, "cpe1"))
    run(c, s)
    assert s.obj.version() == "TLSv1.3"
    assert s.peer_names() == ["cpe1"]
    tls.check_peer_is(s, "cpe1")
    with pytest.raises(TlsError) as err:
        tls.check_peer_is(s, "cpe2")  # a certificate of cpe1 claiming to be cpe2
    assert err.value.reason == "id_mismatch"
    assert s.peer_serial() == pki.serials["cpe1"]


def test_a_certificate_naming_two_cpes_binds_to_neither(pki: Pki) -> None:
    c, s = channels(settings_of(pki, BGW), settings_of(pki, "cpe1-two-names"))
    run(c, s)
    with pytest.raises(TlsError):
        tls.check_peer_is(s, "cpe1")


@pytest.mark.parametrize(
    "stem",
    ["cpe1-expired", "cpe1-server-eku", "other-cpe1", "cpe3"],
    ids=["expired", "wrong-eku", "wrong-ca", "revoked"],
)
def test_the_bgw_refuses_bad_cpe_certificates(pki: Pki, other_ca: Pki, stem: str) -> None:
    client = settings_of(other_ca, "cpe1") if stem == "other-cpe1" else settings_of(pki, stem)
    client = TlsSettings(str(pki.ca_file), client.cert_file, client.key_file)  # trusts the right CA
    c, s = channels(settings_of(pki, BGW, crl=True), client)
    with pytest.raises(TlsError) as err:
        run(c, s)
    assert err.value.reason in ("bad_certificate", "tls_failed", "bad_record")


@pytest.mark.parametrize("case", ["cpe-cert-as-bgw", "wrong-name", "wrong-ca"])
def test_the_cpe_refuses_a_bgw_that_is_not_its_bgw(pki: Pki, other_ca: Pki, case: str) -> None:
    server = {
        "cpe-cert-as-bgw": settings_of(pki, "bgw-with-cpe-eku"),
        "wrong-name": settings_of(pki, BGW),
        "wrong-ca": TlsSettings(
            str(pki.ca_file), *map(str, (other_ca.dir / f"{BGW}.crt", other_ca.dir / f"{BGW}.key"))
        ),
    }[case]
    name = "bgw2" if case == "wrong-name" else BGW
    c, s = channels(server, settings_of(pki, "cpe1"), name)
    with pytest.raises(TlsError) as err:
        run(c, s)
    assert err.value.reason == "bad_certificate"


def test_crl_serials_are_read(pki: Pki) -> None:
    assert tls.revoked_serials(str(pki.crl_file)) == {pki.serials["cpe3"]}
    assert tls.revoked_serials("") == frozenset()


def test_unreadable_pki_files_are_config_errors_naming_the_file(pki: Pki, tmp_path: Path) -> None:
    good = settings_of(pki, BGW)
    with pytest.raises(ConfigError, match="tls.ca_file: cannot load /nonexistent"):
        tls.server_context(TlsSettings("/nonexistent", good.cert_file, good.key_file))
    with pytest.raises(ConfigError, match="tls.cert_file/key_file"):
        tls.server_context(TlsSettings(good.ca_file, good.cert_file, str(pki.dir / "cpe1.key")))
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with pytest.raises(ConfigError, match="tls.crl_file"):
        tls.revoked_serials(str(junk))


def test_records_follow_writes(pki: Pki) -> None:
    """One small packet -> one small record; a 64 KiB batch -> full 16 KiB records."""
    c, s = channels(settings_of(pki, BGW), settings_of(pki, "cpe1"))
    run(c, s)
    c.write(b"x" * 60)
    small = c.take()
    assert len(small) == 60 + tls.RECORD_OVERHEAD
    c.write(b"x" * 65536)
    bulk = c.take()
    assert len(bulk) == 65536 + 4 * tls.RECORD_OVERHEAD


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=4096), st.integers(0, 64))
def test_garbage_inside_or_after_tls_is_a_tls_error_never_a_crash(pki: Pki, junk: bytes, cut: int) -> None:
    c, s = channels(settings_of(pki, BGW), settings_of(pki, "cpe1"))
    run(c, s)
    c.write(b"hello")
    record = c.take()
    data = record[:cut] + junk if cut < len(record) else record + junk
    buf = memoryview(bytearray(8192))
    s.feed(data)
    with pytest.raises(TlsError):
        for _ in range(100):
            if s.read_into(buf) < 0:
                s.feed_eof()  # the stream ends here: a partial record is an error too
    assert True


def test_ssl_is_tls13_only(pki: Pki) -> None:
    ctx = tls.server_context(settings_of(pki, BGW))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
