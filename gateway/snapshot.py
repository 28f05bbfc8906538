"""The offline snapshot: one archive with what support would have looked at, and no secret.

For sites without internet: versions, the configuration (secrets redacted), the check results,
interfaces and routes, certificate summaries (never a key), the daemon's status, recent logs and
the audit trail, with a manifest of every member's SHA-256 so ``gateway snapshot --inspect``
can tell a complete archive from a damaged one.

Secrets are kept out twice over: by name (configuration and JSON keys such as ``password``,
``token``, ``code``) and by content (a PEM private key block anywhere, the proxy password, the
private key's body, any value the caller names).  The archive is checked once more before it is
written, and written 0600: it is refused rather than written if a private key is still in it.
This module knows nothing of Twisted; `gateway.cli.snapshot` gathers and calls it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from attrs import define, field, frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway._files import write_private

ROOT = "snapshot"
MANIFEST = "MANIFEST.json"
FORMAT = 1
REDACTED = "<redacted>"
KEY_REMOVED = "<private key removed>"

SECRET_NAMES = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|authori[sz]ation|cookie|credentials?|^code$|api_?key)",
    re.IGNORECASE,
)
"""Keys whose values never leave the gateway (``proxy_credentials`` names a file: its path
stays readable, see `_PATH_KEYS`)."""
_PATH_KEYS = frozenset({"proxy_credentials", "key", "cert", "ca", "tokens"})
"""Keys holding a file name, not the secret in it: support needs to see which file."""

PEM_PRIVATE_KEY = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(-----END \1PRIVATE KEY-----|\Z)", re.DOTALL
)
_SECRET_IN_TEXT = re.compile(
    r"(?i)\b(password|passwd|token|secret|authorization|code)(\"?\s*[:=]\s*\"?)"
    r"(?!<redacted>)((?:(?:bearer|basic)\s+)?[A-Za-z0-9._~+/=-]{4,})"
)
"""``password=...``, ``"token": "..."`` in free text."""
_LOOSE_SECRET = re.compile(r"(?i)\b(bearer|code|token)(\s+)(\d{6}\b|[A-Za-z0-9._~+/=-]{16,})")
"""``Bearer <token>``, ``code 123456``: six digits or a long token after the word."""
_URL_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)([^/@\s:]+):([^/@\s]+)@")


class SnapshotRefused(Exception):
    """The archive would hold a secret (a bug in the redaction): nothing was written."""


class SnapshotDamaged(Exception):
    """An archive that cannot be read as a snapshot."""


# -- redaction ------------------------------------------------------------------------------------


def redact_bytes(data: bytes, secrets: Iterable[str] = ()) -> bytes:
    """Private key blocks and the given secret values out of any member's bytes."""
    data = PEM_PRIVATE_KEY.sub(KEY_REMOVED.encode(), data)
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        data = data.replace(secret.encode(), REDACTED.encode())
    return data


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`redact_bytes` plus what looks like a secret in free text (logs): ``password=...``,
    ``Bearer ...``, ``code 123456``, ``http://user:pass@``."""
    text = redact_bytes(text.encode(), secrets).decode("utf-8", "replace")
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:{REDACTED}@", text)
    text = _SECRET_IN_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _LOOSE_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)


def redact_json(value: Any) -> Any:
    """Values of secret-named keys replaced, at any depth."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if _secret_key(k) and v not in (None, "", [], {}) else redact_json(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_json(v) for v in value]
    return value


def _secret_key(name: object) -> bool:
    return isinstance(name, str) and name not in _PATH_KEYS and bool(SECRET_NAMES.search(name))


_TOML_KEY = re.compile(r"^(\s*)([A-Za-z0-9_.-]+)(\s*=\s*)(.*)$")


def redact_toml(text: str, secrets: Iterable[str] = ()) -> str:
    """A configuration file as its owner wrote it (comments kept), secret values replaced."""
    out = []
    for line in text.splitlines():
        match = _TOML_KEY.match(line)
        if match and _secret_key(match.group(2).rsplit(".", 1)[-1]):
            line = f'{match.group(1)}{match.group(2)}{match.group(3)}"{REDACTED}"'
        out.append(line)
    return redact_text("\n".join(out) + "\n", secrets)


def redact_jsonl(data: bytes, secrets: Iterable[str] = ()) -> bytes:
    """JSON lines (the audit trail): a line is rewritten only if it held a secret-named value,
    so untouched lines keep their bytes (and the hash chain support verifies)."""
    lines = []
    for line in data.split(b"\n"):
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            record = None
        if isinstance(record, dict):
            cleaned = redact_json(record)
            if cleaned != record:
                line = json.dumps(cleaned, separators=(",", ":")).encode()
        lines.append(line)
    return redact_bytes(b"\n".join(lines), secrets)


# -- certificates and versions ------------------------------------------------------------------


def certificate_summary(certificate: x509.Certificate) -> dict[str, Any]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in san]
    except x509.ExtensionNotFound:
        names = []
    return {
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "serial": format(certificate.serial_number, "x"),
        "not_before": certificate.not_valid_before_utc.isoformat(),
        "not_after": certificate.not_valid_after_utc.isoformat(),
        "names": names,
        "sha256": certificate.fingerprint(hashes.SHA256()).hex(),
        "public_key": type(certificate.public_key()).__name__.lstrip("_"),
    }


def certificate_file_summary(path: Path, role: str) -> dict[str, Any]:
    """Every certificate in a PEM file, summarised; a private key in it is not read."""
    entry: dict[str, Any] = {"role": role, "file": str(path)}
    try:
        data = path.read_bytes()
    except OSError as e:
        entry["error"] = e.strerror or str(e)
        return entry
    try:
        entry["certificates"] = [
            certificate_summary(c) for c in x509.load_pem_x509_certificates(data)
        ]
    except ValueError as e:
        entry["error"] = f"not a PEM certificate file ({e})"
    if PEM_PRIVATE_KEY.search(data):
        entry["warning"] = "this file also holds a private key (not copied)"
    return entry


def versions() -> dict[str, Any]:
    import platform
    import sys

    import cryptography
    import OpenSSL
    import twisted
    from OpenSSL import SSL

    from gateway import __version__

    os_name = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = f"{line.split('=', 1)[1].strip(chr(34))} ({os_name})"
    except OSError:
        pass
    return {
        "product": __version__,
        "python": sys.version.split()[0],
        "openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        "pyopenssl": OpenSSL.__version__,
        "cryptography": cryptography.__version__,
        "twisted": twisted.__version__,
        "os": os_name,
        "machine": platform.machine(),
    }


# -- the archive ---------------------------------------------------------------------------------


@define
class Snapshot:
    """Members by name (inside ``snapshot/``), redacted as they are added."""

    secrets: list[str] = field(factory=list)
    """Values that must not appear anywhere (the proxy password, the key's body, ...)."""
    members: dict[str, bytes] = field(factory=dict)
    notes: list[str] = field(factory=list)
    """What is missing and why, for README.txt and the command's output."""

    def add_bytes(self, name: str, data: bytes) -> None:
        self.members[name] = redact_bytes(data, self.secrets)

    def add_text(self, name: str, text: str) -> None:
        self.members[name] = redact_text(text, self.secrets).encode()

    def add_json(self, name: str, value: Any) -> None:
        text = json.dumps(redact_json(value), indent=2, sort_keys=False, default=str)
        self.members[name] = redact_bytes(text.encode() + b"\n", self.secrets)

    def add_jsonl(self, name: str, data: bytes) -> None:
        self.members[name] = redact_jsonl(data, self.secrets)

    def add_toml(self, name: str, text: str) -> None:
        self.members[name] = redact_toml(text, self.secrets).encode()

    def missing(self, name: str, why: str) -> None:
        """A part that could not be taken: a member saying why, and a note."""
        self.notes.append(f"{name}: {why}")
        self.members[f"{name}.MISSING.txt"] = (why + "\n").encode()

    def leaks(self) -> list[str]:
        """Members that still hold a private key or a named secret (should be none)."""
        bad = []
        for name, data in self.members.items():
            if b"PRIVATE KEY-----" in data and PEM_PRIVATE_KEY.search(data):
                bad.append(f"{name}: a private key")
            for secret in self.secrets:
                if secret and len(secret) >= 4 and secret.encode() in data:
                    bad.append(f"{name}: a secret value")
                    break
        return bad

    def archive(self, *, created: float | None = None) -> bytes:
        """The ``.tar.gz``: README, every member, and the manifest last."""
        bad = self.leaks()
        if bad:
            raise SnapshotRefused("the snapshot would hold a secret: " + "; ".join(bad))
        created = time.time() if created is None else created
        members = dict(self.members)
        members["README.txt"] = readme(self.notes).encode()
        manifest = {
            "format": FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
            "members": [
                {"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                for name, data in sorted(members.items())
            ],
            "missing": self.notes,
        }
        members[MANIFEST] = json.dumps(manifest, indent=2).encode() + b"\n"
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name in [*sorted(n for n in members if n != MANIFEST), MANIFEST]:
                data = members[name]
                info = tarfile.TarInfo(f"{ROOT}/{name}")
                info.size, info.mtime, info.mode = len(data), int(created), 0o600
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    def write(self, path: Path, *, created: float | None = None) -> None:
        """Write the archive atomically, readable only by its owner (0600)."""
        write_private(path, self.archive(created=created))


def readme(notes: list[str]) -> str:
    lines = [
        "Remote service gateway: offline snapshot for support.",
        "",
        "versions.json        product, Python, OpenSSL and OS versions",
        "config/gateway.toml  the configuration, secrets redacted",
        "checks.json          the connectivity checks (gateway check --json)",
        "network.json         interfaces, addresses, default routes; routes.txt: the route table",
        "certificates.json    summaries of the pinned CA and this gateway's certificate",
        "status.json          the running daemon's status (/api/status)",
        "logs/                recent logs (journal, or the log files given)",
        "audit/               the audit trail (verify with: gateway audit --verify)",
        "MANIFEST.json        every member's SHA-256 (gateway snapshot --inspect FILE)",
        "",
        "Never included: private keys, tokens, passwords, proxy credentials, session codes.",
    ]
    if notes:
        lines += ["", "Missing from this snapshot:"] + [f"  {n}" for n in notes]
    return "\n".join(lines) + "\n"


@frozen
class Inspection:
    members: list[tuple[str, int, str]]
    """(name, bytes, "ok" | what is wrong)."""
    problems: list[str]
    manifest: Mapping[str, Any]

    @property
    def ok(self) -> bool:
        return not self.problems


def inspect(path: Path) -> Inspection:
    """List an archive's members and check each against the manifest."""
    try:
        tar = tarfile.open(path, mode="r:gz")  # noqa: SIM115 -- closed by the with below
    except (OSError, tarfile.TarError, EOFError) as e:
        raise SnapshotDamaged(f"{path}: not a snapshot archive ({e})") from None
    found: dict[str, bytes] = {}
    with tar:
        try:
            for info in tar.getmembers():
                if not info.isfile() or not info.name.startswith(ROOT + "/"):
                    raise SnapshotDamaged(f"{path}: unexpected member {info.name!r}")
                handle = tar.extractfile(info)
                found[info.name[len(ROOT) + 1 :]] = handle.read() if handle else b""
        except (tarfile.TarError, EOFError, OSError) as e:
            raise SnapshotDamaged(f"{path}: the archive is damaged ({e})") from None
    if MANIFEST not in found:
        raise SnapshotDamaged(f"{path}: no {MANIFEST} in it")
    try:
        manifest = json.loads(found[MANIFEST])
        listed = {m["name"]: m for m in manifest["members"]}
    except (ValueError, KeyError, TypeError):
        raise SnapshotDamaged(f"{path}: {MANIFEST} cannot be read") from None
    rows, problems = [], []
    for name, data in sorted(found.items()):
        if name == MANIFEST:
            continue
        entry = listed.get(name)
        if entry is None:
            verdict = "not in the manifest"
        elif hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            verdict = "SHA-256 does not match the manifest"
        else:
            verdict = "ok"
        if verdict != "ok":
            problems.append(f"{name}: {verdict}")
        rows.append((name, len(data), verdict))
    for name in sorted(set(listed) - set(found)):
        problems.append(f"{name}: listed in the manifest but missing")
        rows.append((name, 0, "missing"))
    return Inspection(rows, problems, manifest)
