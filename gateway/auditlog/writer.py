"""`FileAuditTrail`: the audit trail as hash-chained JSON lines in a folder, rotated by size.

Each record is one ``os.write`` of one line to an ``O_APPEND`` file descriptor, in the reactor
thread, as Twisted's own file log observers write their lines: a record is a few hundred bytes
into the page cache, which costs microseconds, far less than the network events it records, and
a record that is written before the call returns is what lets the consent service refuse a session
whose approval could not be recorded.  There is no fsync per line (that would put the disk's
latency on every stream); the file is fsynced when it is rotated and when the daemon stops, so a
power cut can lose the last few seconds of records but never reorders or rewrites earlier ones.

Never silently truncated: a write that fails (disk full, permissions, a removed folder) raises
`AuditWriteError` and leaves no half line behind (a short write is cut back); ``healthy`` turns
False until a write succeeds again, and that success is preceded by an ``audit.lost`` record
saying how many records were lost and why.  Several processes may write one trail (the daemon and
a CLI command): each write holds ``flock`` on ``audit.lock`` and first catches up with lines
another writer appended, so the chain never forks.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from gateway.audit import AuditWriteError, IAuditTrail, check_event
from gateway.auditlog.files import (
    CURRENT,
    GENESIS,
    LOCK,
    audit_folder,
    first_line,
    format_time,
    line_hash,
    parse_record,
    read_tail,
    rotated_name,
    trail_files,
)
from gateway.config import ConfigError

__all__ = [
    "DEFAULT_KEEP",
    "DEFAULT_MAX_BYTES",
    "FileAuditTrail",
    "WallClock",
    "open_daemon_trail",
]

log = Logger()

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
"""A file is rotated before it would grow past this."""
DEFAULT_KEEP = 20
"""Files kept, the one being written included; older ones are deleted by rotation."""

_RESERVED = frozenset({"time", "seq", "event", "sr", "who", "result", "prev"})
_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class WallClock:
    """``IReactorTime.seconds`` for a CLI command that records without a reactor."""

    def seconds(self) -> float:
        return time.time()


def _jsonable(value: object) -> object:
    """Details are JSON values; the few other things callers hand in, as people read them."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def _encode(record: dict[str, Any]) -> bytes:
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=_jsonable)
    return text.encode("utf-8", "backslashreplace")  # a lone surrogate: the JSON escape \udcxx


@implementer(IAuditTrail)
class FileAuditTrail:
    """Append-only, hash-chained audit records in ``folder`` (created 0700 if missing).

    The constructor creates the folder and the lock file and opens ``audit.jsonl``, continuing
    the chain from the last line on disk (a restart does not break ``--verify``); it raises
    `AuditWriteError` with a one-line reason if the folder cannot be written.
    ``on_failure`` is called once per record that could not be written (the metrics count it).
    """

    def __init__(
        self,
        folder: Path,
        *,
        clock: IReactorTime,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
        on_failure: Callable[[], object] | None = None,
    ) -> None:
        if max_bytes < 1024:
            raise ValueError("max_bytes must be at least 1024")
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.keep = keep
        self.on_failure = on_failure
        self.healthy = True
        self._clock = clock
        self._current = self.folder / CURRENT
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._end = 0  # the size of audit.jsonl after our last write
        self._seq = 0  # the last record's seq
        self._prev = GENESIS  # the last record's hash
        self._partial = 0  # bytes of a half-written line at the end of audit.jsonl
        self._lost = 0  # records lost since the last successful write
        self._lost_since = ""
        self._lost_why = ""
        try:
            _make_private_folder(self.folder)
            with self._locked():
                self._open()
        except OSError as e:
            self.close()
            raise AuditWriteError(_reason(self.folder, e)) from None

    # IAuditTrail

    def record(
        self, event: str, *, who: str | None = None, result: str = "ok", **details: Any
    ) -> None:
        sr = check_event(event)
        clash = _RESERVED.intersection(details)
        if clash:
            raise ValueError(f"audit detail {sorted(clash)[0]!r} is a reserved key")
        try:
            with self._locked():
                self._sync()
                if self._lost:
                    self._write_lost()
                line = self._line(event, sr, who, result, details)
                if self._end > 0 and self._end + len(line) + 1 > self.max_bytes:
                    self._rotate()
                    line = self._line(event, sr, who, result, details)
                self._append(line)
        except (OSError, AuditWriteError) as e:
            self._failed(e)
        if not self.healthy:
            log.info("audit trail {folder} is writable again", folder=str(self.folder))
        self.healthy = True

    # Lifecycle

    def close(self) -> None:
        """Flush to disk and close; a later `record` opens the files again."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as e:
                log.warn("audit trail {file}: fsync failed: {why}", file=str(self._current), why=e)
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def last_seq(self) -> int:
        return self._seq

    # Internals

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_fd is None:
            self._lock_fd = os.open(
                self.folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _open(self) -> None:
        """Open ``audit.jsonl`` and continue the chain from the last complete line on disk."""
        self._fd = os.open(self._current, _OPEN_FLAGS, 0o600)
        tail = read_tail(self._fd)
        self._end, self._partial = tail.size, tail.partial
        line = tail.line
        if line is None:  # a new file: the chain goes on from the newest rotated file
            for path in reversed(trail_files(self.folder)[:-1]):
                with path.open("rb") as f:
                    line = read_tail(f.fileno()).line
                if line is not None:
                    break
        if line is None:
            self._seq, self._prev = 0, GENESIS
        else:
            record = parse_record(line)
            self._seq = record["seq"] if record is not None else 0
            self._prev = line_hash(line)

    def _sync(self) -> None:
        """Catch up with the file as it is now: reopened, appended to, or cut by someone else."""
        size = 0
        if self._fd is not None:
            try:
                on_disk = os.stat(self._current)
            except FileNotFoundError:
                on_disk = None
            ours = os.fstat(self._fd)
            size = ours.st_size
            if on_disk is None or (on_disk.st_dev, on_disk.st_ino) != (ours.st_dev, ours.st_ino):
                # Rotated by another writer, or removed by an admin: write to the new file.  If
                # records were removed, the next line's prev shows it to --verify.
                log.info("audit trail {file} was replaced; reopening", file=str(self._current))
                os.close(self._fd)
                self._fd = None
        if self._fd is None:
            seq, prev = self._seq, self._prev
            _make_private_folder(self.folder)
            self._open()
            if self._end == 0 and self._seq < seq:
                self._seq, self._prev = seq, prev  # keep our chain rather than the older file's
        else:
            if size > self._end:  # another writer appended: continue after its lines
                tail = read_tail(self._fd)
                self._end, self._partial = tail.size, tail.partial
                if tail.line is not None:
                    record = parse_record(tail.line)
                    self._seq = record["seq"] if record is not None else self._seq
                    self._prev = line_hash(tail.line)
            elif size < self._end:
                log.warn(
                    "audit trail {file} is {cut} bytes shorter than it was: records were removed",
                    file=str(self._current),
                    cut=self._end - size,
                )
                self._end, self._partial = size, read_tail(self._fd).partial
        if self._partial:
            # A half-written line (a crash mid-write, or a cut): start a new file rather than
            # glue the next record to it; the new file says so and --verify accepts that.
            log.warn(
                "audit trail {file} ends in {n} bytes of an incomplete record; starting a new file",
                file=str(self._current),
                n=self._partial,
            )
            self._rotate(cut_short=self._partial)

    def _line(
        self, event: str, sr: tuple[str, ...], who: str | None, result: str, details: Any
    ) -> bytes:
        return _encode(
            {
                "time": format_time(self._clock.seconds()),
                "seq": self._seq + 1,
                "event": event,
                "sr": list(sr),
                "who": who,
                "result": result,
                **details,
                "prev": self._prev,
            }
        )

    def _append(self, line: bytes) -> None:
        """One write of one line; a short or failed write is cut back to where it began."""
        assert self._fd is not None
        data = line + b"\n"
        try:
            written = os.write(self._fd, data)
        except OSError:
            self._cut_back()
            raise
        if written != len(data):
            self._cut_back()
            raise AuditWriteError(
                f"cannot write the audit trail in {self.folder}: disk full "
                f"(wrote {written} of {len(data)} bytes, removed again)"
            )
        self._end += written
        self._seq += 1
        self._prev = line_hash(line)

    def _cut_back(self) -> None:
        assert self._fd is not None
        try:
            if os.fstat(self._fd).st_size > self._end:
                os.ftruncate(self._fd, self._end)
        except OSError as e:
            log.error(
                "audit trail {file}: cannot remove a half-written line: {why}",
                file=str(self._current),
                why=e,
            )

    def _rotate(self, *, cut_short: int = 0) -> None:
        """Close the full file under its first record's seq and start ``audit.jsonl`` anew.

        The new file's first record is ``audit.rotated``, chained to the old file's last line;
        it names the files deleted to keep ``keep`` and the oldest record still kept (``anchor``).
        """
        assert self._fd is not None
        os.fsync(self._fd)
        first = first_line(self._current)
        record = parse_record(first) if first is not None else None
        name = rotated_name(record["seq"] if record is not None else self._seq)
        rotated = self.folder / name
        while rotated.exists():  # an edited first line; keep the order, never overwrite
            name = rotated_name(int(name[6:-6]) + 1)
            rotated = self.folder / name
        os.rename(self._current, rotated)
        os.close(self._fd)
        self._fd = os.open(self._current, _OPEN_FLAGS, 0o600)
        self._end, self._partial = 0, 0
        old = trail_files(self.folder)[:-1]
        dropped = old[: max(0, len(old) - (self.keep - 1))]
        details: dict[str, Any] = {"previous": name, "dropped": [p.name for p in dropped]}
        if dropped:
            kept = old[len(dropped)] if len(dropped) < len(old) else None
            oldest = parse_record(first_line(kept) or b"") if kept is not None else None
            if oldest is not None:
                details["anchor"] = {"seq": oldest["seq"], "prev": oldest.get("prev")}
            else:  # nothing older is kept: this record is the start of the trail
                details["anchor"] = {"seq": self._seq + 1, "prev": self._prev}
        if cut_short:
            details["cut_short"] = cut_short
        self._append(self._line("audit.rotated", check_event("audit.rotated"), None, "ok", details))
        os.fsync(self._fd)
        for path in dropped:
            os.unlink(path)
        _fsync_folder(self.folder)

    def _write_lost(self) -> None:
        lost = {"lost": self._lost, "since": self._lost_since, "error": self._lost_why}
        self._append(self._line("audit.lost", check_event("audit.lost"), None, "error", lost))
        self._lost = 0

    def _failed(self, error: OSError | AuditWriteError) -> None:
        reason = _reason(self.folder, error) if isinstance(error, OSError) else str(error)
        if self.healthy:
            log.error("audit record not written: {why}", why=reason)
        if not self._lost:
            self._lost_since = format_time(self._clock.seconds())
        self._lost += 1
        self._lost_why = reason
        self.healthy = False
        if self.on_failure is not None:
            try:
                self.on_failure()
            except Exception:
                log.failure("audit on_failure callback failed")
        raise AuditWriteError(reason) from None


def _make_private_folder(folder: Path) -> None:
    """Create ``folder`` (and missing parents) 0700; an existing folder is left as it is."""
    if not folder.is_dir():
        os.makedirs(folder.parent, mode=0o700, exist_ok=True)
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(folder: Path, error: OSError) -> str:
    why = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        why = "disk full"
    return f"cannot write the audit trail in {folder}: {why}"


def open_daemon_trail(
    state_dir: Path,
    *,
    config_file: Path,
    clock: IReactorTime,
    on_failure: Callable[[], object] | None = None,
) -> FileAuditTrail:
    """A daemon's trail in ``STATE_DIR/audit``; an unwritable state directory stops start-up
    with one line naming the config file and ``service.state_dir`` (exit 2)."""
    try:
        return FileAuditTrail(audit_folder(state_dir), clock=clock, on_failure=on_failure)
    except AuditWriteError as e:
        raise ConfigError(config_file, "service.state_dir", str(e)) from None
