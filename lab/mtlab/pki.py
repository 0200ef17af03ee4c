"""A throw-away operator PKI for the lab and the tests (``cryptography``, from the venv).

Writes PEM files into a directory: an operator CA, certificates for CPEs (SAN DNS:<id>, CN=<id>,
extendedKeyUsage clientAuth) and BGWs (SAN DNS:<name>, serverAuth), and on request the bad ones the
tests need: a second CA, an expired certificate, a certificate with the wrong EKU, a revoked one and
the CA's CRL. Keys are EC P-256 (fast to make and to verify) and written 0600.

    pki = Pki(directory)            # creates ca.crt/ca.key
    pki.issue("cpe1", "cpe")        # -> (cert path, key path)
    pki.revoke("cpe1")              # -> crl.pem listing cpe1's serial
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = dt.timedelta(days=1)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class Pki:
    def __init__(self, directory: Path, name: str = "ca") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.ca_file = self.dir / f"{name}.crt"
        self.crl_file = self.dir / f"{name}-crl.pem"
        self._key = _key()
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mptcp-tunnel lab {name}")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.serials: dict[str, int] = {}
        self.revoked: list[int] = []

    @classmethod
    def existing(cls, directory: Path, name: str = "ca") -> Pki:
        """A PKI made earlier (paths only: enough for ``tls_section``, not for issuing)."""
        pki = cls.__new__(cls)
        pki.dir, pki.name = Path(directory), name
        pki.ca_file, pki.crl_file = pki.dir / f"{name}.crt", pki.dir / f"{name}-crl.pem"
        pki.serials, pki.revoked = {}, []
        return pki

    def issue(
        self,
        ident: str,
        kind: str,
        *,
        expired: bool = False,
        eku: str | None = None,
        names: list[str] | None = None,
        stem: str | None = None,
    ) -> tuple[Path, Path]:
        """A certificate for a ``cpe`` (clientAuth) or ``bgw`` (serverAuth); ``eku`` overrides."""
        key = _key()
        now = dt.datetime.now(dt.UTC)
        usage = eku or ("client" if kind == "cpe" else "server")
        oid = (
            ExtendedKeyUsageOID.CLIENT_AUTH
            if usage == "client"
            else ExtendedKeyUsageOID.SERVER_AUTH
        )
        serial = x509.random_serial_number()
        start, end = (now - 30 * DAY, now - DAY) if expired else (now - DAY, now + 825 * DAY)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ident)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in (names or [ident])]),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([oid]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        stem = stem or ident
        cert_path, key_path = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        self.serials[stem] = serial
        return cert_path, key_path

    def revoke(self, *stems: str) -> Path:
        """(Re)write the CA's CRL with these certificates added; returns its path."""
        self.revoked.extend(self.serials[s] for s in stems)
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - DAY)
            .next_update(now + 30 * DAY)
        )
        for serial in self.revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - DAY)
                .build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        tmp = self.crl_file.with_suffix(".tmp")
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        tmp.replace(self.crl_file)
        return self.crl_file

    def tls_section(self, stem: str, crl: bool = False) -> dict[str, str]:
        """The agent config's ``tls:`` for the certificate ``stem``."""
        return {
            "ca_file": str(self.ca_file),
            "cert_file": str(self.dir / f"{stem}.crt"),
            "key_file": str(self.dir / f"{stem}.key"),
            "crl_file": str(self.crl_file) if crl else "",
        }


def lab_pki(directory: Path, cpes: list[str], bgw: str = "bgw1") -> Pki:
    """The lab's PKI: one CA, the BGW's certificate and one per CPE; an empty CRL."""
    pki = Pki(directory)
    pki.issue(bgw, "bgw")
    for cpe in cpes:
        pki.issue(cpe, "cpe")
    pki.revoke()
    return pki
