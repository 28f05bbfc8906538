"""Writing files so that a crash never leaves half of one, and secrets are never readable.

Each file is written to a temporary name in its own folder, created with its final mode (0600 for
keys and credentials) before a byte is written, synced, and renamed over the old one: readers see
the old file or the new one, never a mix, and a private file is never readable by others, not
even for a moment.  Used by the PKI tooling, the relay's credential file and the demo.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

PRIVATE = 0o600
PUBLIC = 0o644


class FileWriteError(Exception):
    """A file could not be written; the message names the file and the reason."""


def install(files: Sequence[tuple[Path, bytes, int]]) -> None:
    """Write each ``(path, data, mode)`` atomically: temp file beside it, fsync, rename.

    All temp files are written before the first rename, so the window in which a reader could
    see a new certificate beside an old key is as small as it can be.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in files:
            staged.append((_write_temp(path, data, mode), path))
        for temp, path in list(staged):
            try:
                os.replace(temp, path)
            except OSError as e:
                raise FileWriteError(f"{path}: cannot write: {e.strerror or e}") from None
            staged.remove((temp, path))
    finally:
        for temp, _ in staged:
            _unlink_quietly(temp)
    for directory in {path.parent for path, _, _ in files}:
        _fsync_directory(directory)


def write_atomically(path: Path, data: str | bytes, *, mode: int = PUBLIC) -> None:
    """Replace ``path`` with ``data`` in one step; the file has ``mode`` from its first byte."""
    install([(path, data.encode("utf-8") if isinstance(data, str) else data, mode)])


def write_private(path: Path, data: str | bytes) -> None:
    """`write_atomically` for secrets and credentials: owner read/write only (0600)."""
    write_atomically(path, data, mode=PRIVATE)


class UnsafeFileError(Exception):
    """A secret is readable or writable by others, or owned by someone else; the message says
    which file, what is wrong and the command that fixes it."""


def private_file_problem(path: Path, what: str, *, if_writable: str = "") -> str | None:
    """Why ``path`` (a key or credential file, called ``what``) is not private, or None.

    Private means: owned by the user we run as, and neither readable nor writable by its group or
    by others.  A secret anyone on the host can read is no secret, and a credential file anyone
    can write lets them add themselves.  ``if_writable`` says what that would allow ("anyone on
    this host could add an engineer").  A missing file is not a permission problem: the caller's
    own loading reports it.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{path}: cannot check {what}: {e.strerror or e}"
    if not stat.S_ISREG(info.st_mode):
        return None
    mode = stat.S_IMODE(info.st_mode)
    fix = f"run: chmod 600 {path}"
    if mode & 0o022:
        by = "others" if mode & 0o002 else "its group"
        consequence = if_writable or f"anyone on this host could replace the {what}"
        return f"{path}: {what} is writable by {by}: {consequence}; {fix}"
    if mode & 0o044:
        by = "others" if mode & 0o004 else "its group"
        return f"{path}: {what} is readable by {by}; {fix}"
    euid = os.geteuid()
    if info.st_uid != euid:
        return (
            f"{path}: {what} is owned by uid {info.st_uid}, not by this user (uid {euid}); "
            f"run: chown {euid} {path}"
        )
    return None


def check_private_file(path: Path, what: str, *, if_writable: str = "") -> None:
    """Raise `UnsafeFileError` if `private_file_problem` finds one; used at startup."""
    problem = private_file_problem(path, what, if_writable=if_writable)
    if problem is not None:
        raise UnsafeFileError(problem)


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    directory = path.parent
    temp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(temp, flags, mode)
    except FileNotFoundError:
        raise FileWriteError(
            f"{path}: cannot write: directory {directory} does not exist"
        ) from None
    except OSError as e:
        raise FileWriteError(f"{path}: cannot write: {e.strerror or e}") from None
    try:
        # umask may only have removed bits; make certificates readable by the daemon's user.
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        _unlink_quietly(temp)
        raise FileWriteError(f"{path}: cannot write: {e.strerror or e}") from None
    os.close(fd)
    return temp


def _fsync_directory(directory: Path) -> None:
    """Make the renames durable; best effort, some filesystems refuse fsync on a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
