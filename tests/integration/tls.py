"""Test certificates made with the ``openssl`` command line (no Python dependency).

:func:`make_ca` creates a certificate authority (key and self-signed certificate);
:func:`make_server_cert` a broker certificate for ``127.0.0.1`` / ``localhost`` signed by a CA,
with its private key as unencrypted PKCS#8 (``openssl genpkey`` writes PKCS#8) and a
``keystore.pem`` holding that key followed by the certificate chain: what Kafka's PEM keystore
(``ssl.keystore.type=PEM``) reads.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Days the test certificates are valid for.
DAYS = 30


class OpensslMissing(RuntimeError):
    """The ``openssl`` command is not on the PATH."""


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA's private key and self-signed certificate (PEM files)."""

    key: Path
    cert: Path


@dataclass(frozen=True)
class ServerCert:
    """A server's PKCS#8 key, its certificate, and both in one PEM keystore file."""

    key: Path
    cert: Path
    keystore_pem: Path


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise OpensslMissing("the tests' certificates need the `openssl` command "
                             "(Debian: apt-get install openssl)")
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({result.returncode}):\n"
                           f"{result.stderr}")


def _key(path: Path, folder: Path) -> None:
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", str(path), cwd=folder)


def make_ca(folder: Path, name: str = "storestream test CA") -> CertificateAuthority:
    """A new CA in ``folder`` (``<slug>-ca.key`` and ``<slug>-ca.pem``)."""
    folder.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    key, cert = folder / f"{slug}-ca.key", folder / f"{slug}-ca.pem"
    _key(key, folder)
    _openssl("req", "-x509", "-new", "-key", str(key), "-sha256", "-days", str(DAYS),
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(cert),
             cwd=folder)
    return CertificateAuthority(key=key, cert=cert)


def make_server_cert(folder: Path, ca: CertificateAuthority, name: str = "broker",
                     hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> ServerCert:
    """A server certificate for ``hosts`` (IP or DNS subjectAltNames) signed by ``ca``."""
    folder.mkdir(parents=True, exist_ok=True)
    key, csr = folder / f"{name}.key", folder / f"{name}.csr"
    cert, keystore = folder / f"{name}.pem", folder / f"{name}-keystore.pem"
    extensions = folder / f"{name}.ext"
    alt_names = ",".join(
        f"IP:{host}" if host.replace(".", "").isdigit() or ":" in host else f"DNS:{host}"
        for host in hosts)
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        f"subjectAltName={alt_names}\n")
    _key(key, folder)
    _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={hosts[0]}", "-out", str(csr),
             cwd=folder)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
             "-CAcreateserial", "-days", str(DAYS), "-sha256", "-extfile", str(extensions),
             "-out", str(cert), cwd=folder)
    keystore.write_text(key.read_text() + cert.read_text() + ca.cert.read_text())
    return ServerCert(key=key, cert=cert, keystore_pem=keystore)
