"""Portal passwords: a slow salted hash (scrypt) in the engineer's ``engineers.toml`` section.

``gateway relay set-password NAME`` writes ``password = "scrypt$..."`` into the engineer's
section; the relay re-reads the file as it does for tokens.  scrypt (``hashlib``, OpenSSL's) with
n=2**14, r=8, p=1 costs about 50 ms and 16 MiB per check: a stolen file is slow to guess from,
and the relay runs each check in a thread so the reactor never waits for one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from pathlib import Path

from gateway._files import FileWriteError, write_private
from gateway.relay.credentials import (
    CredentialFileError,
    EngineerNotFound,
    locked,
    parse_entries,
)

N, R, P = 2**14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
MIN_LENGTH = 10
MAX_LENGTH = 1024
_HEADER = re.compile(r"^\s*\[\[\s*engineer\s*\]\]")
_TABLE = re.compile(r"^\s*\[")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = N) -> str:
    """``scrypt$n$r$p$salt$key``: everything needed to check it later."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=R, p=P, maxmem=64 * 1024 * 1024, dklen=KEY_BYTES
    )
    return f"scrypt${n}${R}${P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches the stored hash (False for anything unreadable)."""
    if stored is None or len(password) > MAX_LENGTH:
        return False
    try:
        kind, n, r, p, salt, key = stored.split("$")
        if kind != "scrypt":
            return False
        expected = _unb64(key)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 1024 * 1024,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def password_problem(password: str) -> str | None:
    """Why ``password`` is not good enough for the portal, or None."""
    if len(password) < MIN_LENGTH:
        return f"a portal password has at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"a portal password has at most {MAX_LENGTH} characters"
    return None


def set_password(path: Path, name: str, password: str, *, n: int = N) -> str:
    """Store ``password``'s hash in ``name``'s section (any case); returns the name as written.

    The rest of the file (comments, other engineers) is kept as it was.
    """
    problem = password_problem(password)
    if problem is not None:
        raise CredentialFileError(problem)
    return set_key(path, name, "password", hash_password(password, n=n))


def set_key(path: Path, name: str, key: str, value: str | None) -> str:
    """Set (or, with None, remove) ``key = "value"`` in ``name``'s section, under the file's
    lock; returns the name as written.  ``value`` must need no TOML escaping."""
    line = None if value is None else f'{key} = "{value}"\n'
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    with locked(path):
        text = path.read_text("utf-8") if path.exists() else ""
        entries = parse_entries(text, path)
        match = [i for i, entry in enumerate(entries) if entry.key == name.casefold()]
        if not match:
            raise EngineerNotFound(f"{path}: no engineer named {name!r}")
        lines = text.splitlines(keepends=True)
        headers = [i for i, text_line in enumerate(lines) if _HEADER.match(text_line)]
        start = headers[match[0]]
        end = next((i for i in range(start + 1, len(lines)) if _TABLE.match(lines[i])), len(lines))
        body = [x for x in lines[start + 1 : end] if not pattern.match(x)]
        if not lines[start].endswith("\n"):
            lines[start] += "\n"
        new = [*lines[: start + 1], *([line] if line else []), *body, *lines[end:]]
        try:
            write_private(path, "".join(new))
        except FileWriteError as e:
            raise CredentialFileError(str(e)) from None
        return entries[match[0]].name
