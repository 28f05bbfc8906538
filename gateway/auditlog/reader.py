"""Reading the audit trail back, and checking its chain: what ``gateway audit`` shows.

`read_trail` walks the files in chain order; `verify_trail` names the first record that was
edited, removed or reordered.  Both read the files only, so they work whether the daemon runs or
not.  What the chain can show: an edited line (the next line's ``prev`` no longer matches it), a
removed line (``seq`` jumps), swapped lines (``seq`` goes back), a cut-short line, a removed
beginning that rotation did not remove.  What it cannot: the last record edited, or the whole
trail rewritten with fresh hashes (there is no key); keep the head that ``--verify --json``
prints somewhere else to catch those.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from attrs import frozen

from gateway.auditlog.files import (
    GENESIS,
    first_line,
    format_time,
    line_hash,
    parse_record,
    trail_files,
)

__all__ = ["AuditReadError", "VerifyResult", "parse_since", "read_trail", "verify_trail"]

Record = dict[str, Any]

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class AuditReadError(Exception):
    """The trail's folder or a file in it cannot be read; the message says which and why."""


def parse_since(text: str, now: float) -> float:
    """``90s``, ``30m``, ``1h``, ``2d`` before ``now``, or an ISO date or date and time (local
    time unless it names its zone); the moment as POSIX seconds.  ValueError says what is wanted.
    """
    match = _DURATION.match(text)
    if match is not None:
        return now - int(match.group(1)) * _UNIT[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a time span like 90s, 30m, 1h, 2d nor an ISO date or time "
            "like 2024-05-01 or 2024-05-01T08:30"
        ) from None
    return moment.timestamp()  # a naive moment is local time


def _lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """``(line number, line without newline, complete)`` for each line of ``path``."""
    try:
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                complete = line.endswith(b"\n")
                yield number, line[:-1] if complete else line, complete
    except OSError as e:
        raise AuditReadError(f"cannot read {path}: {e.strerror or e}") from None


def _files(folder: Path) -> list[Path]:
    try:
        return trail_files(folder)
    except OSError as e:
        raise AuditReadError(
            f"cannot read the audit trail in {folder}: {e.strerror or e}"
        ) from None


def read_trail(folder: Path, since: float | None = None) -> Iterator[Record]:
    """The records in chain order (oldest first), from ``since`` (POSIX seconds) on if given.

    Lines that are not records (cut short, edited into nonsense) are skipped: `verify_trail`
    is what reports them.
    """
    start = format_time(since) if since is not None else None
    for path in _files(folder):
        for _, line, complete in _lines(path):
            record = parse_record(line) if complete else None
            if record is None:
                continue
            if start is not None and str(record.get("time", "")) < start:
                continue
            yield record


@frozen
class VerifyResult:
    """What `verify_trail` found: counts, and the first problem with where it is."""

    records: int
    files: int
    problem: str | None = None
    file: str | None = None
    line: int | None = None
    seq: int | None = None
    last_seq: int | None = None
    head: str | None = None
    """SHA-256 of the last line: the next record's ``prev`` (compare with a copy kept elsewhere)."""

    @property
    def ok(self) -> bool:
        return self.problem is None

    def __str__(self) -> str:
        if self.problem is not None:
            return f"audit trail NOT intact: {self.problem}"
        records = "record" if self.records == 1 else "records"
        files = "file" if self.files == 1 else "files"
        return f"audit trail OK: {self.records} {records} in {self.files} {files}"


class _Broken(Exception):
    def __init__(self, problem: str, file: str, line: int, seq: int | None) -> None:
        super().__init__(problem)
        self.problem, self.file, self.line, self.seq = problem, file, line, seq


@frozen
class _Seen:
    file: str
    line: int
    seq: int
    hash: str


class _Verifier:
    """Fed the trail's lines in order; raises `_Broken` at the first problem."""

    def __init__(self, anchors: set[tuple[int, str]]) -> None:
        self.anchors = anchors
        self.last: _Seen | None = None
        self.jump: tuple[_Seen, _Seen] | None = None  # a seq jump, held to tell it from a swap
        self.cut: tuple[str, int, int] | None = None  # file, line, bytes of a cut-short line
        self.records = 0

    def feed(self, file: str, number: int, line: bytes, complete: bool) -> None:
        if not complete:
            self.cut = (file, number, len(line))
            return
        record = parse_record(line)
        if record is None:
            raise _Broken(
                f"{file} line {number} is not a valid record (edited, or cut short)",
                file,
                number,
                None,
            )
        seq, prev = record["seq"], record.get("prev")
        here = _Seen(file, number, seq, line_hash(line))
        self._check_cut(record)
        self._check_jump(here)
        last = self.last
        if last is None:
            self._check_start(here, prev)
        elif seq == last.seq + 1:
            if prev != last.hash:
                raise _Broken(
                    f"{_where(last)} was edited: the next record's prev does not match it "
                    f"({_at(here)}; or that record's prev was edited)",
                    last.file,
                    last.line,
                    last.seq,
                )
        elif seq > last.seq + 1:
            self.jump = (last, here)
        else:
            raise _Broken(
                f"seq {seq} after {last.seq} ({_at(here)}): lines swapped or repeated",
                file,
                number,
                seq,
            )
        self.last = here
        self.records += 1

    def end(self) -> None:
        if self.jump is not None:
            self._report_jump()
        if self.cut is not None:
            file, number, size = self.cut
            raise _Broken(
                f"{file} line {number} is cut short ({size} bytes of a record that was not "
                "completely written, or was cut)",
                file,
                number,
                None,
            )

    def _check_cut(self, record: Record) -> None:
        if self.cut is None:
            return
        if record.get("event") == "audit.rotated" and record.get("cut_short") == self.cut[2]:
            self.cut = None  # the writer found it after a crash and went on in a new file
            return
        self.end()

    def _check_jump(self, here: _Seen) -> None:
        if self.jump is None:
            return
        after = self.jump[1]
        if here.seq < after.seq:
            raise _Broken(
                f"seq {here.seq} after {after.seq} ({_at(here)}): lines swapped",
                here.file,
                here.line,
                here.seq,
            )
        self._report_jump()

    def _report_jump(self) -> None:
        assert self.jump is not None
        before, after = self.jump
        missing = after.seq - before.seq - 1
        what = "a line was removed" if missing == 1 else f"{missing} lines were removed"
        raise _Broken(
            f"seq jumps from {before.seq} to {after.seq} ({_at(after)}): {what}",
            after.file,
            after.line,
            after.seq,
        )

    def _check_start(self, here: _Seen, prev: object) -> None:
        if (here.seq == 1 and prev == GENESIS) or (here.seq, prev) in self.anchors:
            return
        raise _Broken(
            f"the trail starts at seq {here.seq} ({_at(here)}): the records before it were "
            "removed, and not by rotation",
            here.file,
            here.line,
            here.seq,
        )


def _at(seen: _Seen) -> str:
    return f"{seen.file} line {seen.line}"


def _where(seen: _Seen) -> str:
    return f"{seen.file} line {seen.line} (seq {seen.seq})"


def _anchors(files: list[Path]) -> set[tuple[int, str]]:
    """Where rotation says the kept trail begins: in the first record of each file."""
    found: set[tuple[int, str]] = set()
    for path in files:
        try:
            line = first_line(path)
        except OSError as e:
            raise AuditReadError(f"cannot read {path}: {e.strerror or e}") from None
        record = parse_record(line) if line is not None else None
        if record is None or record.get("event") != "audit.rotated":
            continue
        anchor = record.get("anchor")
        if isinstance(anchor, dict) and isinstance(anchor.get("seq"), int):
            found.add((anchor["seq"], str(anchor.get("prev"))))
    return found


def verify_trail(folder: Path) -> VerifyResult:
    """Check the whole chain; the first record edited, removed or reordered, if any.

    Raises `AuditReadError` if a file cannot be read.
    """
    files = _files(folder)
    verifier = _Verifier(_anchors(files))
    try:
        for path in files:
            for number, line, complete in _lines(path):
                verifier.feed(path.name, number, line, complete)
        verifier.end()
    except _Broken as broken:
        return VerifyResult(
            records=verifier.records,
            files=len(files),
            problem=broken.problem,
            file=broken.file,
            line=broken.line,
            seq=broken.seq,
        )
    last = verifier.last
    return VerifyResult(
        records=verifier.records,
        files=len(files),
        last_seq=last.seq if last is not None else None,
        head=last.hash if last is not None else None,
    )
