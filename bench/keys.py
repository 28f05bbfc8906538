"""Throw-away keys for the peers: an X.509 CA with server and client certificates for stunnel
(made with the `openssl` command line), and ed25519 host and user keys for OpenSSH.

All certificates use ECDSA P-256 keys: the common modern choice, and cheap handshakes, so the
stunnel path's new-connection time is not inflated by RSA signatures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.procs import run_quiet

DAYS = "2"
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls(directory: Path) -> TlsFiles:
    """CA, a server certificate for localhost/127.0.0.1 and a client certificate, all PEM."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    run_quiet(
        [
            *("openssl", "req", "-x509", *EC, "-keyout", str(ca_key), "-out", str(ca)),
            *("-days", DAYS, "-subj", "/CN=bench throw-away CA"),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        ]
    )
    server = _issue(
        directory,
        "server",
        ca,
        ca_key,
        "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    client = _issue(
        directory, "client", ca, ca_key, "/CN=bench-gw", "extendedKeyUsage=clientAuth\n"
    )
    return TlsFiles(ca, server[0], server[1], client[0], client[1])


def _issue(
    directory: Path, name: str, ca: Path, ca_key: Path, subject: str, extensions: str
) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    ext = directory / f"{name}.ext"
    ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=digitalSignature\n" + extensions)
    run_quiet(["openssl", "req", *EC, "-keyout", str(key), "-out", str(csr), "-subj", subject])
    run_quiet(
        [
            *("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key)),
            *("-CAcreateserial", "-days", DAYS, "-extfile", str(ext), "-out", str(cert)),
        ]
    )
    key.chmod(0o600)
    return cert, key


@dataclass(frozen=True)
class SshFiles:
    host_key: Path
    user_key: Path
    authorized_keys: Path
    known_hosts: Path
    host_alias: str


def make_ssh(directory: Path) -> SshFiles:
    """Host key, user key, authorized_keys and a known_hosts entry under a fixed alias."""
    directory.mkdir(parents=True, exist_ok=True)
    host_key, user_key = directory / "ssh_host_ed25519_key", directory / "id_ed25519"
    for key in (host_key, user_key):
        run_quiet(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(key)])
    authorized = directory / "authorized_keys"
    authorized.write_text(user_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    alias = "bench-sshd"
    known = directory / "known_hosts"
    known.write_text(f"{alias} {host_key.with_suffix('.pub').read_text()}")
    return SshFiles(host_key, user_key, authorized, known, alias)
