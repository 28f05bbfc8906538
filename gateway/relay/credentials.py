"""Engineer credentials: who a bearer token belongs to, from ``engineers.toml``.

Only SHA-256 hashes of tokens are stored.  `ICredentialStore` is the interface the relay's engineer
path uses (its authenticate step); a shared store for several relays will implement it too.  It is
synchronous on purpose: every stream asks, floods of bad tokens included, and engineer credentials
change rarely, so a shared store keeps a local copy current the way `TokenFile` follows its file.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from attrs import frozen
from twisted.logger import Logger
from zope.interface import Interface, implementer

from gateway._files import FileWriteError, write_private

log = Logger()

_ENGINEER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._ -]{0,63}$")
TOKEN_PREFIX = "rsg_"


@frozen
class Engineer:
    name: str


class ICredentialStore(Interface):
    def authenticate(token: str) -> Engineer | None:
        """The engineer a bearer token belongs to, or None."""


def hash_token(token: str) -> str:
    """SHA-256 of a token.

    Tokens are 256 random bits, so a fast hash is enough to make a stolen ``engineers.toml``
    useless (nothing to brute-force), and it keeps the reactor free of slow KDF work.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class CredentialFileError(Exception):
    """engineers.toml is unusable; the message names the file and the problem."""


@implementer(ICredentialStore)
class TokenFile:
    """Engineer tokens from ``engineers.toml``, re-read when the file changes.

    ``gateway relay add-engineer`` writes the file while the relay runs; the next authentication
    sees the new engineer without a restart.  A broken edit keeps the last good set and logs why.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._hashes: dict[str, Engineer] = {}
        self._stamp: tuple[int, int] | None = None
        self.reload(strict=True)

    def reload(self, *, strict: bool = False) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._hashes, self._stamp = {}, None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            self._hashes = {h: Engineer(name) for name, h in read_engineers(self.path).items()}
        except CredentialFileError as e:
            if strict:
                raise
            log.error("keeping the previous engineer list: {error}", error=str(e))
        self._stamp = stamp

    def authenticate(self, token: str) -> Engineer | None:
        self.reload()
        digest = hash_token(token)
        for known, engineer in self._hashes.items():
            if hmac.compare_digest(known, digest):
                return engineer
        return None


def read_engineers(path: Path) -> dict[str, str]:
    """``{name: sha256 hex}`` from an engineers file."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise CredentialFileError(f"{path}: cannot read engineer tokens: {e}") from None
    entries = data.get("engineer", [])
    result: dict[str, str] = {}
    if not isinstance(entries, list):
        raise CredentialFileError(f"{path}: engineer: must be [[engineer]] sections")
    for index, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        digest = entry.get("token_sha256") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(digest, str) or len(digest) != 64:
            raise CredentialFileError(
                f"{path}: engineer[{index}]: needs a name and a 64-hex-digit token_sha256"
            )
        if name in result:
            raise CredentialFileError(f"{path}: engineer[{index}]: {name!r} is listed twice")
        result[name] = digest
    return result


def add_engineer(path: Path, name: str, *, now: datetime | None = None) -> str:
    """Create a token for ``name``, store only its hash (file mode 0600), return the token."""
    if not _ENGINEER_NAME.fullmatch(name):
        raise CredentialFileError(
            f"engineer name {name!r} must be 1-64 letters, digits, spaces or @ . _ -"
        )
    existing = read_engineers(path)
    if name in existing:
        raise CredentialFileError(
            f"{path}: an engineer named {name!r} already exists; pick another name"
        )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    when = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    old = (
        path.read_text("utf-8")
        if path.exists()
        else (
            "# Engineer credentials for the relay. Only SHA-256 hashes of tokens are stored here;\n"
            "# add engineers with: gateway relay add-engineer NAME -c relay.toml\n"
        )
    )
    entry = (
        f'\n[[engineer]]\nname = "{name}"\ntoken_sha256 = "{hash_token(token)}"\n'
        f'created = "{when}"\n'
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, old.rstrip("\n") + "\n" + entry)
    except (FileWriteError, OSError) as e:
        raise CredentialFileError(
            f"{path}: cannot write: {e}" if isinstance(e, OSError) else str(e)
        ) from None
    return token
