"""TLS material for fake servers, made at test time with the `openssl` CLI in a temporary directory.

Nothing here is committed: keys live only in the pytest tmp dir. One CA signs a good certificate (for
`localhost` and 127.0.0.1), an expired one and one for the wrong host name; a fourth is self-signed.
"""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SERVER_NAME", "TlsMaterial", "make_tls_material"]

# The name a client must expect: the good certificate carries it (and 127.0.0.1 as an IP SAN).
SERVER_NAME = "localhost"

_CA_CONFIG = """\
[ca]
default_ca = fake
[fake]
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = any
copy_extensions = none
unique_subject = no
[any]
commonName = supplied
[good]
basicConstraints = CA:FALSE
subjectAltName = DNS:localhost,IP:127.0.0.1
[wrong]
basicConstraints = CA:FALSE
subjectAltName = DNS:wrong-host.invalid
[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[self_ext]
basicConstraints = CA:FALSE
subjectAltName = DNS:localhost,IP:127.0.0.1
"""


@dataclass(frozen=True)
class TlsMaterial:
    """Paths of the generated files, and server contexts built from them."""

    directory: Path
    ca: Path

    def cert(self, name: str) -> tuple[Path, Path]:
        return self.directory / f"{name}.pem", self.directory / f"{name}.key"

    def server_context(self, name: str) -> ssl.SSLContext:
        """A server-side context presenting certificate `name`: good, expired, wrong_host or self_signed."""
        cert, key = self.cert(name)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        return context


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def make_tls_material(directory: Path) -> TlsMaterial:
    """Generate a CA and four server certificates in `directory` (EC P-256 keys: fast to make)."""
    d = directory
    (d / "ca.cnf").write_text(_CA_CONFIG.format(dir=d))
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    cnf = ("-config", str(d / "ca.cnf"))
    _openssl("req", "-x509", *key, *cnf, "-extensions", "ca_ext", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "3", "-subj", "/CN=mailmon test CA", cwd=d)
    signed = {  # name: (extensions, start, end)
        "good": ("good", None, None),
        "expired": ("good", "20200101000000Z", "20200201000000Z"),
        "wrong_host": ("wrong", None, None),
    }
    for name, (ext, start, end) in signed.items():
        _openssl("req", *key, *cnf, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=mailmon fake",
                 cwd=d)
        dates = ("-startdate", start, "-enddate", end) if start and end else ("-days", "2")
        _openssl("ca", "-batch", *cnf, "-cert", "ca.pem", "-keyfile", "ca.key", "-in", f"{name}.csr",
                 "-out", f"{name}.pem", "-extensions", ext, "-notext", *dates, cwd=d)
    _openssl("req", "-x509", *key, *cnf, "-extensions", "self_ext", "-keyout", "self_signed.key",
             "-out", "self_signed.pem", "-days", "2", "-subj", "/CN=localhost", cwd=d)
    return TlsMaterial(directory=d, ca=d / "ca.pem")
