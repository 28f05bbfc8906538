"""The operator password for the status page off loopback: stored hash, login limits, sessions.

On loopback the page needs no login (whoever sits at the edge PC is plant staff).  From any other
address it needs the operator password, set with ``gateway operator-password -c gateway.toml``
and kept in the state directory as a salted scrypt hash (``hashlib.scrypt``: memory-hard, in the
standard library), mode 0600.  The daemon reads that file at every login, so setting or changing
the password needs no restart.

- `hash_password` / `check_password`: the stored form is one JSON object (``scheme``, ``n``,
  ``r``, ``p``, ``salt``, ``hash``, base64); comparison in constant time.
- `LoginLimiter`: per client address, five wrong passwords are free; then the address is locked
  out for 30 seconds, doubling with each further failure up to 15 minutes.  A right password
  clears the count.
- `OperatorSessions`: a logged-in browser holds a random session id (cookie) and a random
  synchronizer token (sent back in the ``X-CSRF-Token`` header of every action).  Sessions end
  after 30 idle minutes, 12 hours at most, or at logout.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from collections import OrderedDict
from pathlib import Path

from attrs import define
from twisted.internet.interfaces import IReactorTime

__all__ = [
    "PASSWORD_FILE",
    "LoginLimiter",
    "OperatorSession",
    "OperatorSessions",
    "check_password",
    "hash_password",
    "password_file",
    "read_password",
    "write_password",
]

PASSWORD_FILE = "operator-password"
"""In the state directory: the hash, never the password."""
MIN_LENGTH = 10
"""Characters an operator password must have at least."""
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
"""32 MiB and ~0.1 s per check: cheap for one login, dear for a guesser with the file."""
SCRYPT_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The stored form of ``password``: a JSON object with a fresh 16-byte salt."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=SCRYPT_MAXMEM,
        dklen=32,
    )
    return json.dumps(
        {
            "scheme": "scrypt",
            "n": SCRYPT_N,
            "r": SCRYPT_R,
            "p": SCRYPT_P,
            "salt": base64.b64encode(salt).decode(),
            "hash": base64.b64encode(digest).decode(),
        }
    )


def check_password(stored: str, password: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from (False for a damaged file)."""
    try:
        data = json.loads(stored)
        if data.get("scheme") != "scrypt":
            return False
        salt = base64.b64decode(data["salt"], validate=True)
        want = base64.b64decode(data["hash"], validate=True)
        n, r, p = int(data["n"]), int(data["r"]), int(data["p"])
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=salt,
            n=n,
            r=r,
            p=p,
            maxmem=SCRYPT_MAXMEM,
            dklen=len(want),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    return hmac.compare_digest(got, want)


def password_tag(stored: str | None) -> str:
    """A short digest of the stored hash, to tell whether the password changed."""
    return "" if stored is None else hashlib.sha256(stored.encode()).hexdigest()[:32]


def password_file(state_dir: Path) -> Path:
    return state_dir / PASSWORD_FILE


def read_password(state_dir: Path) -> str | None:
    """The stored hash, or None when no operator password is set."""
    try:
        text = password_file(state_dir).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def write_password(state_dir: Path, password: str) -> Path:
    """Store the hash of ``password`` (0600, written whole and renamed into place)."""
    target = password_file(state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (hash_password(password) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(temporary, 0o600)
    os.replace(temporary, target)
    return target


# -- login limits -------------------------------------------------------------------------------

FREE_TRIES = 5
FIRST_LOCKOUT = 30.0
MAX_LOCKOUT = 15 * 60.0
MAX_TRACKED = 1024
"""Addresses remembered at once (the oldest forgotten first): bounded memory under a flood."""


@define
class _Tries:
    failures: int = 0
    locked_until: float = 0.0


class LoginLimiter:
    """Wrong passwords per client address, and the lockout they earn."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._by_address: OrderedDict[str, _Tries] = OrderedDict()

    def locked_until(self, address: str) -> float | None:
        """When ``address`` may try again, or None if it may now."""
        tries = self._by_address.get(address)
        if tries is None or tries.locked_until <= self._clock.seconds():
            return None
        return tries.locked_until

    def failed(self, address: str) -> float | None:
        """Count a wrong password; the end of the lockout it starts, if it starts one."""
        tries = self._by_address.pop(address, None) or _Tries()
        self._by_address[address] = tries
        while len(self._by_address) > MAX_TRACKED:
            self._by_address.popitem(last=False)
        tries.failures += 1
        if tries.failures < FREE_TRIES:
            return None
        seconds = min(MAX_LOCKOUT, FIRST_LOCKOUT * 2 ** min(tries.failures - FREE_TRIES, 20))
        tries.locked_until = self._clock.seconds() + seconds
        return tries.locked_until

    def succeeded(self, address: str) -> None:
        self._by_address.pop(address, None)


# -- sessions -----------------------------------------------------------------------------------

IDLE_SECONDS = 30 * 60.0
MAX_SECONDS = 12 * 3600.0
MAX_SESSIONS = 64


@define
class OperatorSession:
    id: str
    csrf: str
    address: str
    created: float
    last_used: float
    password: str = ""
    """A tag of the stored hash it logged in with: a new password ends the session."""


class OperatorSessions:
    """Logged-in browsers, by the random id in their cookie."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._sessions: OrderedDict[str, OperatorSession] = OrderedDict()

    def create(self, address: str, password: str = "") -> OperatorSession:
        now = self._clock.seconds()
        session = OperatorSession(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            address=address,
            created=now,
            last_used=now,
            password=password,
        )
        self._sessions[session.id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> OperatorSession | None:
        """The live session with this id (its idle time restarts), or None."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock.seconds()
        if now - session.last_used > IDLE_SECONDS or now - session.created > MAX_SECONDS:
            del self._sessions[session_id]
            return None
        session.last_used = now
        return session

    def alive(self, session: OperatorSession) -> bool:
        """Whether ``session`` still holds (a stream checks it without renewing it)."""
        now = self._clock.seconds()
        return (
            self._sessions.get(session.id) is session
            and now - session.last_used <= IDLE_SECONDS
            and now - session.created <= MAX_SECONDS
        )

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def expires(self, session: OperatorSession) -> float:
        return min(session.last_used + IDLE_SECONDS, session.created + MAX_SECONDS)
