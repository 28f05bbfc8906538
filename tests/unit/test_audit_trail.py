"""`FileAuditTrail`: the chain on disk, across restarts, rotations, other writers and failures."""

from __future__ import annotations

import errno
import itertools
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.audit import EVENTS, AuditWriteError, IAuditTrail
from gateway.auditlog.files import CURRENT, GENESIS, line_hash, trail_files
from gateway.auditlog.reader import read_trail, verify_trail
from gateway.auditlog.writer import FileAuditTrail, open_daemon_trail
from gateway.config import ConfigError

START = 1_714_560_000.0  # 2024-05-01T10:40:00Z


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines_of(path)]


class TrailCase(SynchronousTestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-audit-")
        self.addCleanup(tmp.cleanup)
        self.root = Path(tmp.name)
        self.folder = self.root / "state" / "audit"
        self.clock = Clock()
        self.clock.advance(START)

    def trail(self, **options: Any) -> FileAuditTrail:
        trail = FileAuditTrail(self.folder, clock=self.clock, **options)
        self.addCleanup(trail.close)
        return trail

    def assertVerifies(self, records: int | None = None) -> None:
        result = verify_trail(self.folder)
        self.assertTrue(result.ok, str(result))
        if records is not None:
            self.assertEqual(result.records, records)


class ChainTests(TrailCase):
    def test_it_provides_the_audit_trail_interface(self) -> None:
        self.assertTrue(verifyObject(IAuditTrail, self.trail()))

    def test_a_record_is_one_line_with_the_fixed_keys_in_order(self) -> None:
        trail = self.trail()
        self.clock.advance(1.5)
        trail.record("session.approved", who="alice", request="r1", minutes=60)
        (record,) = records_of(self.folder / CURRENT)
        self.assertEqual(
            list(record),
            ["time", "seq", "event", "sr", "who", "result", "request", "minutes", "prev"],
        )
        self.assertEqual(record["time"], "2024-05-01T10:40:01.500Z")
        self.assertEqual(record["seq"], 1)
        self.assertEqual(record["event"], "session.approved")
        self.assertEqual(record["sr"], list(EVENTS["session.approved"]))
        self.assertEqual((record["who"], record["result"]), ("alice", "ok"))
        self.assertEqual((record["request"], record["minutes"]), ("r1", 60))
        self.assertEqual(record["prev"], GENESIS)

    def test_each_line_carries_the_hash_of_the_line_before(self) -> None:
        trail = self.trail()
        for n in range(5):
            trail.record("stream.opened", who="bob", target="web", n=n)
        lines = lines_of(self.folder / CURRENT)
        records = [json.loads(line) for line in lines]
        self.assertEqual([r["seq"] for r in records], [1, 2, 3, 4, 5])
        for before, after in zip(lines, records[1:], strict=False):
            self.assertEqual(after["prev"], line_hash(before))
        self.assertVerifies(records=5)

    def test_a_restart_continues_the_chain(self) -> None:
        trail = self.trail()
        trail.record("mode.changed", who="alice", mode="attended")
        trail.record("mode.changed", who="alice", mode="disabled")
        trail.close()
        again = self.trail()
        self.assertEqual(again.last_seq, 2)
        again.record("mode.changed", who="carol", mode="unattended")
        lines = lines_of(self.folder / CURRENT)
        self.assertEqual(json.loads(lines[2])["seq"], 3)
        self.assertEqual(json.loads(lines[2])["prev"], line_hash(lines[1]))
        self.assertVerifies(records=3)

    def test_a_record_after_close_opens_the_trail_again(self) -> None:
        trail = self.trail()
        trail.record("mode.changed", who="alice", mode="attended")
        trail.close()
        trail.record("mode.changed", who="alice", mode="disabled")
        self.assertVerifies(records=2)

    def test_folder_and_files_are_private(self) -> None:
        trail = self.trail()
        trail.record("engineer.added", who="admin", engineer="bob")
        self.assertEqual(stat.S_IMODE(os.stat(self.folder).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(self.folder.parent).st_mode), 0o700)
        for path in self.folder.iterdir():
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path.name)

    def test_details_that_are_not_json_are_written_as_text(self) -> None:
        from gateway.config import AccessMode

        trail = self.trail()
        trail.record("mode.changed", who="alice", mode=AccessMode.DISABLED, path=Path("/x"))
        (record,) = records_of(self.folder / CURRENT)
        self.assertEqual((record["mode"], record["path"]), ("disabled", "/x"))

    def test_newlines_in_details_stay_inside_the_line(self) -> None:
        trail = self.trail()
        trail.record("session.requested", who="bob", reason="line one\nline two\u2028three")
        (record,) = records_of(self.folder / CURRENT)
        self.assertEqual(record["reason"], "line one\nline two\u2028three")
        self.assertVerifies(records=1)

    def test_an_unknown_event_or_a_reserved_detail_is_a_programming_error(self) -> None:
        trail = self.trail()
        self.assertRaises(ValueError, trail.record, "session.teleported", who="bob")
        self.assertRaises(ValueError, trail.record, "mode.changed", who="bob", seq=7)
        self.assertEqual(lines_of(self.folder / CURRENT), [])

    def test_two_writers_on_one_trail_keep_one_chain(self) -> None:
        """The daemon and a CLI command (``relay add-engineer``) record on the same files."""
        daemon, command = self.trail(), self.trail()
        daemon.record("gateway.connected", gateway="plant7-gw")
        command.record("engineer.added", who="admin", engineer="bob")
        daemon.record("gateway.disconnected", gateway="plant7-gw")
        command.record("engineer.removed", who="admin", engineer="bob")
        records = records_of(self.folder / CURRENT)
        self.assertEqual([r["seq"] for r in records], [1, 2, 3, 4])
        self.assertVerifies(records=4)


class RotationTests(TrailCase):
    def fill(self, trail: FileAuditTrail, count: int) -> None:
        for n in range(count):
            trail.record("stream.closed", who="bob", target="web", n=n, pad="x" * 200)

    def test_a_full_file_is_rotated_and_the_chain_spans_the_files(self) -> None:
        trail = self.trail(max_bytes=2048, keep=100)
        self.fill(trail, 40)
        files = trail_files(self.folder)
        self.assertGreater(len(files), 3)
        for older, newer in itertools.pairwise(files):
            first = json.loads(lines_of(newer)[0])
            self.assertEqual(first["event"], "audit.rotated")
            self.assertEqual(first["previous"], older.name)
            self.assertEqual(first["prev"], line_hash(lines_of(older)[-1]))
        for path in files:
            self.assertLessEqual(path.stat().st_size, 2048, path.name)
        self.assertVerifies()
        self.assertEqual(
            [r["n"] for r in read_trail(self.folder) if r["event"] == "stream.closed"],
            list(range(40)),
        )

    def test_rotated_files_are_named_after_their_first_record(self) -> None:
        trail = self.trail(max_bytes=2048, keep=100)
        self.fill(trail, 20)
        for path in trail_files(self.folder)[:-1]:
            first = json.loads(lines_of(path)[0])
            self.assertEqual(path.name, f"audit-{first['seq']:012d}.jsonl")

    def test_rotation_deletes_the_oldest_files_and_the_trail_still_verifies(self) -> None:
        trail = self.trail(max_bytes=2048, keep=3)
        self.fill(trail, 60)
        files = trail_files(self.folder)
        self.assertEqual(len(files), 3)
        marker = json.loads(lines_of(files[-1])[0])
        self.assertTrue(marker["dropped"])
        oldest = json.loads(lines_of(files[0])[0])
        self.assertEqual(marker["anchor"], {"seq": oldest["seq"], "prev": oldest["prev"]})
        self.assertVerifies()

    def test_keeping_one_file_verifies_too(self) -> None:
        trail = self.trail(max_bytes=2048, keep=1)
        self.fill(trail, 30)
        self.assertEqual([p.name for p in trail_files(self.folder)], [CURRENT])
        self.assertVerifies()

    def test_a_restart_after_rotation_continues_in_the_newest_file(self) -> None:
        trail = self.trail(max_bytes=2048, keep=3)
        self.fill(trail, 25)
        trail.close()
        again = self.trail(max_bytes=2048, keep=3)
        self.fill(again, 25)
        self.assertVerifies()

    def test_a_crash_between_rename_and_new_file_continues_from_the_rotated_file(self) -> None:
        trail = self.trail(max_bytes=2048, keep=10)
        self.fill(trail, 3)
        trail.close()
        os.rename(self.folder / CURRENT, self.folder / "audit-000000000001.jsonl")
        again = self.trail(max_bytes=2048, keep=10)
        self.assertEqual(again.last_seq, 3)
        self.fill(again, 2)
        self.assertVerifies(records=5)

    def test_a_half_written_line_left_by_a_crash_starts_a_new_file(self) -> None:
        trail = self.trail()
        self.fill(trail, 3)
        trail.close()
        with (self.folder / CURRENT).open("ab") as f:
            f.write(b'{"time":"2024-05-01T10:40:00.000Z","seq":4,"ev')
        again = self.trail()
        self.assertEqual(again.last_seq, 3)
        self.fill(again, 1)
        files = trail_files(self.folder)
        self.assertEqual(len(files), 2)
        self.assertFalse(files[0].read_bytes().endswith(b"\n"))  # kept as it was found
        marker = json.loads(lines_of(files[1])[0])
        self.assertEqual(
            marker["cut_short"], len(b'{"time":"2024-05-01T10:40:00.000Z","seq":4,"ev')
        )
        self.assertVerifies(records=5)


class FailureTests(TrailCase):
    def fail_writes(self, error: int = errno.ENOSPC) -> None:
        def broken(fd: int, data: bytes) -> int:
            raise OSError(error, os.strerror(error))

        self.patch(os, "write", broken)

    def test_a_full_disk_raises_and_sets_healthy_false_and_counts(self) -> None:
        failures: list[None] = []
        trail = self.trail(on_failure=lambda: failures.append(None))
        trail.record("mode.changed", who="alice", mode="attended")
        before = (self.folder / CURRENT).read_bytes()
        self.fail_writes()
        error = self.assertRaises(
            AuditWriteError, trail.record, "session.approved", who="alice", request="r1"
        )
        self.assertIn("disk full", str(error))
        self.assertIn(str(self.folder), str(error))
        self.assertFalse(trail.healthy)
        self.assertEqual(len(failures), 1)
        self.assertRaises(AuditWriteError, trail.record, "session.denied", who="alice")
        self.assertEqual(len(failures), 2)
        self.assertEqual((self.folder / CURRENT).read_bytes(), before)

    def test_a_short_write_is_cut_back_and_raises(self) -> None:
        trail = self.trail()
        trail.record("mode.changed", who="alice", mode="attended")
        before = (self.folder / CURRENT).read_bytes()
        real_write = os.write

        def half(fd: int, data: bytes) -> int:
            return real_write(fd, data[: len(data) // 2])

        self.patch(os, "write", half)
        self.assertRaises(AuditWriteError, trail.record, "session.approved", who="alice")
        self.assertFalse(trail.healthy)
        self.assertEqual((self.folder / CURRENT).read_bytes(), before)

    def test_the_first_write_that_succeeds_again_says_how_many_were_lost(self) -> None:
        trail = self.trail()
        trail.record("mode.changed", who="alice", mode="attended")
        real_write = os.write
        self.fail_writes()
        for _ in range(3):
            self.assertRaises(AuditWriteError, trail.record, "stream.opened", who="bob")
        self.patch(os, "write", real_write)
        trail.record("mode.changed", who="alice", mode="disabled")
        self.assertTrue(trail.healthy)
        events = [(r["event"], r.get("lost")) for r in read_trail(self.folder)]
        self.assertEqual(
            events, [("mode.changed", None), ("audit.lost", 3), ("mode.changed", None)]
        )
        self.assertVerifies(records=3)

    def test_a_read_only_folder_fails_the_write(self) -> None:
        trail = self.trail()
        trail.record("mode.changed", who="alice", mode="attended")
        self.fail_writes(errno.EROFS)
        error = self.assertRaises(AuditWriteError, trail.record, "stream.opened", who="bob")
        self.assertIn("Read-only file system", str(error))
        self.assertFalse(trail.healthy)

    def test_a_file_removed_by_an_admin_is_created_again(self) -> None:
        trail = self.trail()
        trail.record("mode.changed", who="alice", mode="attended")
        (self.folder / CURRENT).unlink()
        trail.record("mode.changed", who="alice", mode="disabled")
        (record,) = records_of(self.folder / CURRENT)
        self.assertEqual(record["seq"], 2)
        self.assertTrue(trail.healthy)
        # The removed record is missing, and the chain says so.
        self.assertFalse(verify_trail(self.folder).ok)

    def test_a_removed_folder_is_created_again(self) -> None:
        trail = self.trail()
        trail.record("mode.changed", who="alice", mode="attended")
        for path in self.folder.iterdir():
            path.unlink()
        self.folder.rmdir()
        trail.record("mode.changed", who="alice", mode="disabled")
        self.assertEqual(records_of(self.folder / CURRENT)[0]["seq"], 2)

    def test_a_state_directory_that_cannot_be_made_is_a_config_error(self) -> None:
        blocker = self.root / "not-a-folder"
        blocker.write_text("")
        error = self.assertRaises(
            ConfigError,
            open_daemon_trail,
            blocker / "state",
            config_file=self.root / "gateway.toml",
            clock=self.clock,
        )
        self.assertEqual(error.key, "service.state_dir")
        self.assertIn("cannot write the audit trail", str(error))
        self.assertIn("gateway.toml", str(error))
