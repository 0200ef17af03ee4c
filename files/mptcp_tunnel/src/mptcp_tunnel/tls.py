"""TLS 1.3, mutual, over memory BIOs: the session's record layer without any socket (sans-I/O).

Contexts come from the operator's PKI (``tls:`` in the config): both sides verify the peer's chain
against the CA, and OpenSSL's purpose check holds each side to its extendedKeyUsage (a BGW accepts only
clientAuth certificates, a CPE only serverAuth), so a CPE's certificate can never act as a BGW. The CPE
also checks the BGW's name (``cpe.bgw_name``) against its certificate's subjectAltName; the BGW binds
the certificate to one CPE: its DNS subjectAltNames must be exactly the CPE id the connection claimed.

``TlsChannel`` is the record layer: ciphertext in (``feed``), plaintext out (``read_into``), plaintext
in (``write``: one call = the records of one batch), ciphertext out (``take``).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from mptcp_tunnel.config import ConfigError, TlsSettings

# Ciphertext beyond plaintext: a TLS 1.3 record adds 5 header + 16 tag + 1 content type bytes.
RECORD_PLAINTEXT = 16384
RECORD_OVERHEAD = 22


class TlsError(Exception):
    """The peer failed TLS (bad certificate, wrong name, garbage records). ``reason`` labels metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _context(settings: TlsSettings, server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    if server:
        ctx.num_tickets = 0  # no resumption: every session shows its certificate (and the CRL applies)
    for key, path in (("ca_file", settings.ca_file), ("crl_file", settings.crl_file)):
        if not path:
            continue
        try:
            ctx.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tls.{key}: cannot load {path}: {_why(exc)}") from None
    if settings.crl_file:
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    try:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"tls.cert_file/key_file: cannot load {settings.cert_file} with {settings.key_file}: {_why(exc)}"
        ) from None
    return ctx


def _why(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return str(getattr(exc, "strerror", None) or exc)


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    return _context(settings, server=True)


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    return _context(settings, server=False)  # check_hostname is on: bgw_name must match


def revoked_serials(crl_file: str) -> frozenset[int]:
    """Serial numbers listed in a PEM CRL (empty without a file). Raises ConfigError if unreadable."""
    if not crl_file:
        return frozenset()
    try:
        text = Path(crl_file).read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ConfigError(f"tls.crl_file: cannot read {crl_file}: {exc.strerror}") from None
    serials: set[int] = set()
    for block in text.split("-----BEGIN X509 CRL-----")[1:]:
        body = block.split("-----END X509 CRL-----")[0]
        try:
            serials |= crl_serials(ssl.PEM_cert_to_DER_cert(_as_cert_pem(body)))
        except (ValueError, IndexError) as exc:
            raise ConfigError(f"tls.crl_file: {crl_file} is not a valid CRL ({exc})") from None
    return frozenset(serials)


def _as_cert_pem(body: str) -> str:
    # PEM_cert_to_DER_cert only decodes base64 between certificate markers; the bytes are the CRL's.
    return f"{ssl.PEM_HEADER}\n{body.strip()}\n{ssl.PEM_FOOTER}\n"


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at ``pos``."""
    tag = der[pos]
    first = der[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("bad DER length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    if pos + length > len(der):
        raise ValueError("DER element runs past the end")
    return tag, pos, pos + length


def crl_serials(der: bytes) -> set[int]:
    """The revoked serials of a DER CertificateList (RFC 5280 5.1); its signature was checked by OpenSSL
    when the context loaded it, here only the list is read (to end sessions already up)."""
    tag, start, _ = _tlv(der, 0)  # CertificateList
    tag, pos, tbs_end = _tlv(der, start)  # TBSCertList
    if tag != 0x30:
        raise ValueError("not a CRL")
    items: list[tuple[int, int, int]] = []
    while pos < tbs_end:
        item = _tlv(der, pos)
        items.append(item)
        pos = item[2]
    # version (INTEGER, optional), signature, issuer, thisUpdate, nextUpdate (optional), revoked (SEQ)
    skip = 4 if items and items[0][0] == 0x02 else 3
    serials: set[int] = set()
    for tag, start, end in items[skip:]:
        if tag != 0x30:
            continue  # nextUpdate (a time) or the [0] extensions
        pos = start
        while pos < end:
            _, entry, entry_end = _tlv(der, pos)
            stag, sstart, send = _tlv(der, entry)
            if stag != 0x02:
                raise ValueError("revoked entry without a serial")
            serials.add(int.from_bytes(der[sstart:send], "big"))
            pos = entry_end
    return serials


class TlsChannel:
    """One side of a TLS connection over memory BIOs."""

    def __init__(self, ctx: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(
            self.incoming, self.outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self.eof = False

    def handshake(self) -> bool:
        """Advance the handshake with what was fed; True once it is complete."""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLCertVerificationError as exc:
            raise TlsError("bad_certificate", str(exc.verify_message or exc.reason)) from None
        except ssl.SSLError as exc:
            raise TlsError("tls_failed", str(exc.reason or exc)) from None
        return True

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.incoming.write(data)

    def feed_eof(self) -> None:
        self.incoming.write_eof()

    def take(self) -> bytes:
        """Ciphertext waiting to be sent."""
        return self.outgoing.read()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data``: full 16 KiB records, the last one as long as what is left."""
        try:
            self.obj.write(data)
        except ssl.SSLError as exc:
            raise TlsError("tls_failed", str(exc.reason or exc)) from None

    def read_into(self, buf: memoryview) -> int:
        """Decrypted bytes into ``buf``: their count, 0 at the peer's close_notify, -1 if none yet."""
        total = 0
        room = len(buf)
        try:
            while total < room:
                n: int = self.obj.read(room - total, buf[total:])  # type: ignore[assignment]  # with a buffer: a count
                if n == 0:
                    self.eof = True
                    break
                total += n
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self.eof = True
        except ssl.SSLError as exc:  # the session ends here, with what decrypted before the bad record
            raise TlsError("bad_record", str(exc.reason or exc)) from None
        if total == 0:
            return 0 if self.eof else -1
        return total

    def pending_plaintext(self) -> int:
        return self.obj.pending()

    def peer_names(self) -> list[str]:
        """The DNS subjectAltNames of the peer's (verified) certificate."""
        cert = self.obj.getpeercert()
        if not cert:
            return []
        names = cert.get("subjectAltName", ())
        return [str(v) for k, v in names if k == "DNS"]  # type: ignore[str-unpack]

    def peer_serial(self) -> int | None:
        cert = self.obj.getpeercert()
        serial = cert.get("serialNumber") if cert else None
        return int(str(serial), 16) if serial else None


def check_peer_is(channel: TlsChannel, cpe_id: str) -> None:
    """The BGW's binding: the certificate names exactly this CPE, nothing else."""
    names = channel.peer_names()
    if names != [cpe_id]:
        raise TlsError("id_mismatch", f"certificate names {names!r}, the connection claimed {cpe_id!r}")


def load_contexts(settings: TlsSettings, server: bool) -> tuple[ssl.SSLContext, frozenset[int]]:
    """The context and the CRL's serials; raises ConfigError naming the file that is wrong."""
    return _context(settings, server), revoked_serials(settings.crl_file)
