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
