"""Engineer credentials: who a bearer token belongs to, and which gateways they may ask.

``engineers.toml`` holds one ``[[engineer]]`` section per engineer: a name, the SHA-256 of their
token (never the token), ``gateways`` (glob patterns over gateway ids such as ``"plant7-*"``),
``created`` and an optional ``expires`` date.  `ICredentialStore` is the interface the relay's
engineer path uses (its authenticate step); a shared store for several relays will implement it
too.  It is synchronous on purpose: every stream asks, floods of bad tokens included, and engineer
credentials change rarely, so a shared store keeps a local copy current the way `TokenFile`
follows its file.

Everything here fails closed.  A file that cannot be read, an entry that is not valid, or a file
that others could write leaves *no* engineer authorised until it is fixed: keeping the previous
list would keep an engineer that was just removed.  An entry without ``gateways`` may reach no
gateway.  Names are compared without regard to case: ``Alice`` and ``alice`` are one engineer.

`add_engineer` and `remove_engineer` hold an exclusive lock on ``engineers.toml.lock`` beside
the file around their read-modify-write, so concurrent runs lose nothing.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import hmac
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from attrs import field, frozen
from twisted.logger import Logger
from zope.interface import Interface, implementer

from gateway._files import FileWriteError, private_file_problem, write_private
from gateway.relay.refusals import Refused
from gateway.wire import Refusal

log = Logger()

_ENGINEER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._ -]{0,63}$")
TOKEN_PREFIX = "rsg_"

GATEWAY_PATTERN_RULE = (
    "lower-case letters, digits and '-' (gateway-id characters) with the wildcards * ? [...]"
)
_PATTERN = re.compile(r"(?:[a-z0-9-]|\*|\?|\[!?[a-z0-9-]+\])+")
_MAX_PATTERN = 100
_KEYS = frozenset({"name", "token_sha256", "gateways", "created", "expires", "password", "totp"})
_ENGINEER_HEADER = re.compile(r"^\s*\[\[\s*engineer\s*\]\]", re.MULTILINE)
_TABLE_HEADER = re.compile(r"^\s*\[")

NEW_FILE_HEADER = (
    "# Engineer credentials for the relay. Only SHA-256 hashes of tokens are stored here;\n"
    "# add engineers with: gateway relay add-engineer NAME -c relay.toml --gateways PATTERN,...\n"
)


@frozen
class Engineer:
    """An engineer the relay authenticated: the identity the gateway is told."""

    name: str
    credential: str = field(default="", eq=False, repr=False)
    """The stored hash of the token they came in with: their streams last only while that same
    token is listed (removing and re-adding a name makes a new token)."""


class ICredentialStore(Interface):
    def authenticate(token: str) -> Engineer | None:
        """The engineer a bearer token belongs to, or None.

        Expiry and gateways are the authorisation step's business: an expired token still says
        who it belonged to.  May raise `CredentialsUnavailable` when no token can be checked."""


class CredentialsUnavailable(Refused):
    """The relay cannot tell any token apart (its engineer list is unusable): every engineer is
    refused, and it is not counted against the engineer as a failed login."""


def hash_token(token: str) -> str:
    """SHA-256 of a token.

    Tokens are 256 random bits, so a fast hash is enough to make a stolen ``engineers.toml``
    useless (nothing to brute-force), and it keeps the reactor free of slow KDF work.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class CredentialFileError(Exception):
    """engineers.toml is unusable; the message names the file, the line and the problem."""


def gateway_pattern_problem(pattern: object) -> str | None:
    """Why ``pattern`` cannot be a ``gateways`` pattern, or None.

    Only gateway-id characters and the wildcards: a pattern cannot say anything an id could not
    (``/``, spaces, upper case), so what it matches is plain to whoever reads the file.
    """
    if not isinstance(pattern, str):
        return "a gateway pattern must be text"
    if len(pattern) > _MAX_PATTERN or not _PATTERN.fullmatch(pattern):
        shown = pattern[:_MAX_PATTERN] + ("..." if len(pattern) > _MAX_PATTERN else "")
        return f"{shown!r} is not a gateway pattern: use {GATEWAY_PATTERN_RULE}"
    return None


def parse_gateway_patterns(text: str) -> tuple[str, ...]:
    """``"plant7-*, demo-gateway"`` (the ``--gateways`` flag) as patterns; ValueError if bad.

    Upper case is folded (gateway ids are lower case), duplicates dropped, order kept.
    """
    patterns: list[str] = []
    for part in text.split(","):
        pattern = part.strip().lower()
        if not pattern:
            continue
        problem = gateway_pattern_problem(pattern)
        if problem is not None:
            raise ValueError(problem)
        if pattern not in patterns:
            patterns.append(pattern)
    return tuple(patterns)


def expiry_moment(expires: date) -> float:
    """The POSIX time a token that ``expires`` on that date stops working: 00:00 UTC that day.

    "Expires on 1 March" means it does not work on 1 March, anywhere in the world.
    """
    return datetime.combine(expires, time(0, 0), tzinfo=UTC).timestamp()


def expiry_after(days: int, now: datetime) -> date:
    """The ``expires`` date for ``--expires DAYS``: the token works at least ``days`` full days.

    It stops at 00:00 UTC after the day on which ``days`` times 24 hours from ``now`` end.
    """
    return (now.astimezone(UTC) + timedelta(days=days)).date() + timedelta(days=1)


@frozen
class EngineerEntry:
    """One ``[[engineer]]`` section of ``engineers.toml``."""

    name: str
    token_sha256: str = field(repr=False)
    gateways: tuple[str, ...] = ()
    """Glob patterns over gateway ids; none: the engineer may reach no gateway."""
    created: str | None = None
    expires: date | None = None
    """The token stops working at 00:00 UTC on this date (`expiry_moment`)."""
    line: int = 0
    """Where the section starts in the file (1-based; 0 if unknown)."""
    has_gateways: bool = True
    """False when the section has no ``gateways`` key at all (warned about at load)."""
    password: str | None = field(default=None, repr=False)
    """The portal password's slow salted hash (`gateway.relay.portal.passwords`), if set."""
    totp: str | None = field(default=None, repr=False)
    """The portal's second factor: a TOTP secret (base32), if the engineer enrolled one."""

    @property
    def key(self) -> str:
        """The name as compared: case does not make another engineer."""
        return self.name.casefold()

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= expiry_moment(self.expires)

    def may_reach(self, gateway_id: str) -> bool:
        """Whether a pattern matches the (lower-cased) gateway id; fnmatch with case."""
        wanted = gateway_id.lower()
        return any(fnmatch.fnmatchcase(wanted, pattern) for pattern in self.gateways)

    def engineer(self) -> Engineer:
        return Engineer(self.name, credential=self.token_sha256)


@implementer(ICredentialStore)
class TokenFile:
    """Engineer tokens from ``engineers.toml``, re-read when the file changes.

    ``gateway relay add-engineer`` writes the file while the relay runs; the next authentication
    (or the relay's watch, each second) sees the change without a restart.  A broken file is not
    a reason to keep the last good list: it leaves every engineer refused until it is fixed, with
    one log line per change of the file.

    ``private``: also refuse (at startup) and deny all (while running) when the file is readable
    or writable by group or others, or owned by someone else (the relay sets this; the example
    file in a checkout is world-readable).  ``on_reload`` is told each new reading: the problem,
    or None when the file was read (metrics and audit hook in there).
    """

    def __init__(
        self,
        path: Path,
        *,
        private: bool = False,
        on_reload: Callable[[TokenFile, str | None], None] | None = None,
    ) -> None:
        self.path = path
        self.private = private
        self.on_reload = on_reload
        self._hashes: dict[str, EngineerEntry] = {}
        self._entries: dict[str, EngineerEntry] = {}
        self._stamp: tuple[int, ...] | None = None
        self.problem: str | None = None
        """Why no engineer is let in now, or None while the file is usable."""
        self.generation = 0
        """Counts readings that changed what the file says (watchers compare it)."""
        self.reload(strict=True)

    @property
    def entries(self) -> Mapping[str, EngineerEntry]:
        """The engineers now, by `EngineerEntry.key`; empty while the file is unusable."""
        return self._entries

    def entry(self, name: str) -> EngineerEntry | None:
        return self._entries.get(name.casefold())

    def reload(self, *, strict: bool = False) -> bool:
        """Read the file again if it changed; True if that changed anything.

        Cheap when nothing changed (one ``stat``).  ``strict`` (startup): raise
        `CredentialFileError` instead of denying everyone.
        """
        try:
            info = self.path.stat()
        except FileNotFoundError:
            stamp: tuple[int, ...] | None = None
        except OSError as e:
            stamp = (-1, e.errno or 0)
        else:
            stamp = (
                info.st_ino,
                info.st_mtime_ns,
                info.st_ctime_ns,
                info.st_size,
                info.st_mode,
                info.st_uid,
            )
        if stamp == self._stamp and self.generation:
            return False
        try:
            problem = private_file_problem(self.path, "engineers.toml", if_writable=_IF_WRITABLE)
            if problem is not None and self.private:
                raise CredentialFileError(problem)
            entries = read_entries(self.path) if stamp is not None else []
        except CredentialFileError as e:
            if strict:
                raise
            self._stamp = stamp
            return self._broken(str(e))
        self._stamp = stamp
        self._use(entries)
        return True

    def _broken(self, problem: str) -> bool:
        changed = problem != self.problem or bool(self._entries)
        self._hashes, self._entries = {}, {}
        self.problem = problem
        self.generation += 1
        log.error(
            "refusing every engineer until engineers.toml is fixed: {problem}", problem=problem
        )
        if self.on_reload is not None:
            self.on_reload(self, problem)
        return changed

    def _use(self, entries: list[EngineerEntry]) -> None:
        was_broken = self.problem is not None
        self._hashes = {entry.token_sha256: entry for entry in entries}
        self._entries = {entry.key: entry for entry in entries}
        self.problem = None
        self.generation += 1
        if was_broken:
            log.info(
                "{file} is usable again: {count} engineer(s)", file=self.path, count=len(entries)
            )
        for entry in entries:
            if not entry.has_gateways:
                log.warn(
                    "{file} line {line}: engineer {name!r} has no gateways = [...] and may "
                    'reach no gateway; add e.g. gateways = ["plant7-*"] to their section',
                    file=self.path,
                    line=entry.line,
                    name=entry.name,
                )
        if self.on_reload is not None:
            self.on_reload(self, None)

    def authenticate(self, token: str) -> Engineer | None:
        self.reload()
        if self.problem is not None:
            raise CredentialsUnavailable(
                Refusal.BAD_TOKEN,
                "the relay cannot check engineer tokens now (its engineer list is unusable); "
                "nobody is let in until the relay's operator fixes it",
            )
        digest = hash_token(token)
        for known, entry in self._hashes.items():
            if hmac.compare_digest(known, digest):
                return entry.engineer()
        return None


_IF_WRITABLE = "anyone on this host could add an engineer"


def check_engineers_file(path: Path) -> None:
    """Refuse an ``engineers.toml`` that others could read or write (relay startup)."""
    problem = private_file_problem(path, "engineers.toml", if_writable=_IF_WRITABLE)
    if problem is not None:
        raise CredentialFileError(problem)


# -- reading ------------------------------------------------------------------------------------


def read_entries(path: Path) -> list[EngineerEntry]:
    """Every ``[[engineer]]`` of the file, validated; `CredentialFileError` names the line."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise CredentialFileError(f"{path}: cannot read engineer tokens: {e}") from None
    return parse_entries(text, path)


def parse_entries(text: str, path: Path) -> list[EngineerEntry]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CredentialFileError(f"{path}: cannot read engineer tokens: {e}") from None
    unknown = sorted(set(data) - {"engineer"})
    if unknown:
        raise CredentialFileError(f"{path}: {unknown[0]}: unknown key (only [[engineer]] sections)")
    sections = data.get("engineer", [])
    if not isinstance(sections, list):
        raise CredentialFileError(f"{path}: engineer: must be [[engineer]] sections")
    headers = [text.count("\n", 0, m.start()) + 1 for m in _ENGINEER_HEADER.finditer(text)]
    lines = headers if len(headers) == len(sections) else [0] * len(sections)
    entries: list[EngineerEntry] = []
    seen: dict[str, str] = {}
    for index, (section, line) in enumerate(zip(sections, lines, strict=True)):
        where = f"{path}: line {line}" if line else f"{path}: engineer[{index}]"
        entry = _entry(section, where, line)
        if entry.key in seen:
            raise CredentialFileError(
                f"{where}: {entry.name!r} is listed twice (as {seen[entry.key]!r} before; "
                "names differing only in case are the same engineer)"
            )
        if any(entry.token_sha256 == other.token_sha256 for other in entries):
            raise CredentialFileError(
                f"{where}: {entry.name!r} has another engineer's token_sha256"
            )
        seen[entry.key] = entry.name
        entries.append(entry)
    return entries


def _entry(section: object, where: str, line: int) -> EngineerEntry:
    if not isinstance(section, dict):
        raise CredentialFileError(f"{where}: engineer: must be an [[engineer]] section")
    name = section.get("name")
    digest = section.get("token_sha256")
    if not isinstance(name, str) or not isinstance(digest, str) or len(digest) != 64:
        raise CredentialFileError(f"{where}: needs a name and a 64-hex-digit token_sha256")
    if not _ENGINEER_NAME.fullmatch(name) or name.endswith("\n"):
        raise CredentialFileError(f"{where}: name {name[:70]!r}: {_NAME_RULE}")
    who = f"{where}: engineer {name!r}"
    unknown = sorted(set(section) - _KEYS)
    if unknown:
        raise CredentialFileError(f"{who}: {unknown[0]}: unknown key")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        raise CredentialFileError(f"{who}: token_sha256 must be 64 hex digits")
    password = section.get("password")
    if password is not None and not isinstance(password, str):
        raise CredentialFileError(f"{who}: password must be text (gateway relay set-password)")
    totp = section.get("totp")
    if totp is not None and (
        not isinstance(totp, str) or not re.fullmatch(r"[A-Z2-7]{16,128}", totp)
    ):
        raise CredentialFileError(f"{who}: totp must be a base32 secret (gateway relay set-totp)")
    patterns = section.get("gateways")
    if patterns is not None:
        if not isinstance(patterns, list):
            raise CredentialFileError(f'{who}: gateways must be a list, e.g. ["plant7-*"]')
        for pattern in patterns:
            problem = gateway_pattern_problem(pattern)
            if problem is not None:
                raise CredentialFileError(f"{who}: gateways: {problem}")
    return EngineerEntry(
        name=name,
        token_sha256=digest.lower(),
        gateways=tuple(dict.fromkeys(p.lower() for p in patterns or [])),
        created=_created(section.get("created"), who),
        expires=_expires(section.get("expires"), who),
        line=line,
        has_gateways=patterns is not None,
        password=password,
        totp=totp,
    )


def _created(value: object, who: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, date):  # a TOML date or date-time, written by hand
        return value.isoformat()
    raise CredentialFileError(f"{who}: created must be a date or text")


def _expires(value: object, who: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        raise CredentialFileError(f"{who}: expires must be a date such as 2026-03-01, not a time")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise CredentialFileError(f"{who}: expires must be a date such as 2026-03-01")


def read_engineers(path: Path) -> dict[str, str]:
    """``{name: sha256 hex}`` from an engineers file."""
    return {entry.name: entry.token_sha256 for entry in read_entries(path)}


# -- writing ------------------------------------------------------------------------------------

_NAME_RULE = "an engineer name must be 1-64 letters, digits, spaces or @ . _ -"


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold ``PATH.lock`` exclusively: one read-modify-write of the file at a time.

    The lock file stays (removing it would let two writers lock two different files).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as e:
        raise CredentialFileError(f"{lock_path}: cannot lock: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def add_engineer(
    path: Path,
    name: str,
    *,
    gateways: Sequence[str] = (),
    expires: date | None = None,
    now: datetime | None = None,
) -> str:
    """Create a token for ``name``, store only its hash (file mode 0600), return the token.

    ``gateways``: the patterns of the gateways they may reach (none: no gateway, until the file
    is edited).  ``expires``: the date the token stops working (`expiry_moment`).
    """
    if not _ENGINEER_NAME.fullmatch(name) or name.endswith("\n"):
        raise CredentialFileError(
            f"engineer name {name!r} must be 1-64 letters, digits, spaces or @ . _ -"
        )
    patterns = tuple(dict.fromkeys(p.lower() for p in gateways))
    for pattern in patterns:
        problem = gateway_pattern_problem(pattern)
        if problem is not None:
            raise CredentialFileError(f"--gateways: {problem}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    when = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    lines = [
        "",
        "[[engineer]]",
        f'name = "{name}"',
        f'token_sha256 = "{hash_token(token)}"',
        f"gateways = [{', '.join(_toml_string(p) for p in patterns)}]",
        f'created = "{when}"',
    ]
    if expires is not None:
        lines.append(f"expires = {expires.isoformat()}")
    with locked(path):
        existing = {entry.key: entry.name for entry in read_entries(path)}
        if name.casefold() in existing:
            raise CredentialFileError(
                f"{path}: an engineer named {existing[name.casefold()]!r} already exists; "
                "pick another name (names differing only in case are the same engineer)"
            )
        old = path.read_text("utf-8") if path.exists() else NEW_FILE_HEADER
        _write(path, old.rstrip("\n") + "\n" + "\n".join(lines) + "\n")
    return token


def remove_engineer(path: Path, name: str) -> str:
    """Delete ``name``'s section (any case); returns the name as it was written.

    Comments and the other sections are kept as they were.
    """
    with locked(path):
        text = path.read_text("utf-8") if path.exists() else ""
        entries = parse_entries(text, path)
        match = [entry for entry in entries if entry.key == name.casefold()]
        if not match:
            raise EngineerNotFound(f"{path}: no engineer named {name!r}")
        (entry,) = match
        _write(path, _without_section(text, entries.index(entry)))
    return entry.name


class EngineerNotFound(CredentialFileError):
    """``remove-engineer`` for a name that is not in the file."""


def _without_section(text: str, index: int) -> str:
    """``text`` without its ``index``-th ``[[engineer]]`` section.

    The section runs from its header to the next table header; comment and blank lines just
    before that next header belong to what follows and stay.
    """
    lines = text.splitlines(keepends=True)
    headers = [i for i, line in enumerate(lines) if _ENGINEER_HEADER.match(line)]
    start = headers[index]
    end = next(
        (i for i in range(start + 1, len(lines)) if _TABLE_HEADER.match(lines[i])), len(lines)
    )
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip()[:1] == "#"):
        end -= 1
    while start > 0 and not lines[start - 1].strip():
        start -= 1  # the blank line that separated it
    return "".join(lines[:start] + lines[end:])


def _write(path: Path, text: str) -> None:
    try:
        write_private(path, text)
    except FileWriteError as e:
        raise CredentialFileError(str(e)) from None


def _toml_string(value: str) -> str:
    return '"' + value + '"'  # patterns are validated: no quotes or backslashes


def describe_entry(entry: EngineerEntry, now: float) -> dict[str, Any]:
    """What ``gateway relay engineers --json`` shows of an entry: never the token or its hash."""
    return {
        "name": entry.name,
        "gateways": list(entry.gateways),
        "created": entry.created,
        "expires": entry.expires.isoformat() if entry.expires else None,
        "expired": entry.expired(now),
        "portal": portal_login(entry),
    }


def portal_login(entry: EngineerEntry) -> str | None:
    """How the engineer logs in to the portal: ``password``, ``password+totp``, or None."""
    if entry.password is None:
        return None
    return "password" if entry.totp is None else "password+totp"
