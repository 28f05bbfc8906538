"""The audit trail's files: their names and order, a line's hash, and reading a file's ends.

Shared by the writer (which continues the chain from the last line on disk) and the reader (which
walks the files in chain order); the snapshot copies `trail_files`.  No Twisted here: the CLI
reads the trail without a reactor.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attrs import frozen

__all__ = [
    "AUDIT_FOLDER",
    "CURRENT",
    "GENESIS",
    "LOCK",
    "Tail",
    "audit_folder",
    "first_line",
    "format_time",
    "line_hash",
    "parse_record",
    "read_tail",
    "rotated_name",
    "trail_files",
]

AUDIT_FOLDER = "audit"
"""The trail's folder inside the state directory."""
CURRENT = "audit.jsonl"
LOCK = "audit.lock"
_ROTATED = re.compile(r"^audit-(\d{12,})\.jsonl$")
GENESIS = "0" * 64
"""The ``prev`` of the very first record of a trail."""

_CHUNK = 64 * 1024


def audit_folder(state_dir: Path) -> Path:
    return state_dir / AUDIT_FOLDER


def rotated_name(first_seq: int) -> str:
    return f"audit-{first_seq:012d}.jsonl"


def trail_files(folder: Path) -> list[Path]:
    """The trail's files in chain order: rotated ones oldest first, then ``audit.jsonl``.

    Raises ``OSError`` if the folder cannot be listed; a missing folder is an empty trail.
    """
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    rotated = sorted(
        (int(m.group(1)), name) for name in names if (m := _ROTATED.match(name)) is not None
    )
    files = [folder / name for _, name in rotated]
    if CURRENT in names:
        files.append(folder / CURRENT)
    return files


def line_hash(line: bytes) -> str:
    """What the next record's ``prev`` holds: SHA-256 of the line's bytes, newline excluded."""
    return hashlib.sha256(line).hexdigest()


def format_time(seconds: float) -> str:
    """``2024-05-01T12:00:00.123Z``: fixed width, so times compare as strings."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_record(line: bytes) -> dict[str, Any] | None:
    """A line as a record, or None if it is not a JSON object with an integer ``seq``."""
    try:
        record = json.loads(line)
    except ValueError:  # also UnicodeDecodeError
        return None
    if not isinstance(record, dict):
        return None
    seq = record.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    return record


@frozen
class Tail:
    """The end of a file: its last complete line (None if none) and the bytes after it."""

    line: bytes | None
    partial: int
    size: int


def read_tail(fd: int) -> Tail:
    """Read backwards from the end of an open file until the last complete line is found."""
    size = os.fstat(fd).st_size
    end = size
    buffer = b""
    partial: int | None = None
    while end > 0:
        start = max(0, end - _CHUNK)
        buffer = os.pread(fd, end - start, start) + buffer
        end = start
        if partial is None:
            if not buffer.endswith(b"\n"):
                cut = buffer.rfind(b"\n")
                if cut < 0 and end > 0:
                    continue
                partial = len(buffer) - (cut + 1)
            else:
                partial = 0
        body = buffer[: len(buffer) - partial]
        if not body:
            if end > 0:
                continue
            return Tail(None, partial, size)
        start_of_last = body.rfind(b"\n", 0, len(body) - 1)
        if start_of_last >= 0 or end == 0:
            return Tail(body[start_of_last + 1 : -1], partial, size)
    return Tail(None, partial or 0, size)


def first_line(path: Path) -> bytes | None:
    """The first complete line of a file (newline excluded), or None."""
    with path.open("rb") as f:
        line = f.readline(16 * 1024 * 1024)
    return line[:-1] if line.endswith(b"\n") else None
