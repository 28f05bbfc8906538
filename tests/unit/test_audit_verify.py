"""Reading the trail back, ``--since``, and ``--verify`` naming the first record touched."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.auditlog.files import CURRENT, trail_files
from gateway.auditlog.reader import AuditReadError, parse_since, read_trail, verify_trail
from gateway.auditlog.writer import DEFAULT_KEEP, DEFAULT_MAX_BYTES, FileAuditTrail

START = 1_714_560_000.0  # 2024-05-01T10:40:00Z


class TrailOnDisk(SynchronousTestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-audit-verify-")
        self.addCleanup(tmp.cleanup)
        self.folder = Path(tmp.name) / "audit"
        self.clock = Clock()
        self.clock.advance(START)

    def write(
        self, count: int, *, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP
    ) -> Path:
        """``count`` records, a minute apart; the path of the file being written."""
        trail = FileAuditTrail(self.folder, clock=self.clock, max_bytes=max_bytes, keep=keep)
        for n in range(count):
            trail.record("stream.opened", who="bob", target="web", n=n, pad="x" * 100)
            self.clock.advance(60)
        trail.close()
        return self.folder / CURRENT

    def edit(self, path: Path, change: object) -> None:
        lines = path.read_bytes().split(b"\n")
        assert callable(change)
        change(lines)
        path.write_bytes(b"\n".join(lines))


class VerifyTests(TrailOnDisk):
    def test_an_untouched_trail_verifies(self) -> None:
        self.write(10)
        result = verify_trail(self.folder)
        self.assertTrue(result.ok)
        self.assertEqual((result.records, result.files, result.last_seq), (10, 1, 10))
        self.assertEqual(str(result), "audit trail OK: 10 records in 1 file")

    def test_an_edited_line_is_named(self) -> None:
        path = self.write(10)

        def change(lines: list[bytes]) -> None:
            lines[4] = lines[4].replace(b'"who":"bob"', b'"who":"eve"')

        self.edit(path, change)
        result = verify_trail(self.folder)
        self.assertFalse(result.ok)
        self.assertEqual((result.file, result.line, result.seq), (CURRENT, 5, 5))
        self.assertIn("audit.jsonl line 5 (seq 5) was edited", str(result))

    def test_a_line_edited_into_nonsense_is_named(self) -> None:
        path = self.write(5)

        def change(lines: list[bytes]) -> None:
            lines[2] = b"nothing to see"

        self.edit(path, change)
        result = verify_trail(self.folder)
        self.assertEqual((result.line, result.seq), (3, None))
        self.assertIn("line 3 is not a valid record", str(result))

    def test_a_deleted_line_is_named(self) -> None:
        path = self.write(10)

        def change(lines: list[bytes]) -> None:
            del lines[6]

        self.edit(path, change)
        result = verify_trail(self.folder)
        self.assertEqual((result.line, result.seq), (7, 8))
        self.assertIn("seq jumps from 6 to 8 (audit.jsonl line 7): a line was removed", str(result))

    def test_several_deleted_lines_are_counted(self) -> None:
        path = self.write(10)

        def change(lines: list[bytes]) -> None:
            del lines[3:6]

        self.edit(path, change)
        self.assertIn("3 lines were removed", str(verify_trail(self.folder)))

    def test_two_swapped_lines_are_named(self) -> None:
        path = self.write(10)

        def change(lines: list[bytes]) -> None:
            lines[3], lines[4] = lines[4], lines[3]

        self.edit(path, change)
        result = verify_trail(self.folder)
        self.assertEqual((result.line, result.seq), (5, 4))
        self.assertIn("seq 4 after 5 (audit.jsonl line 5): lines swapped", str(result))

    def test_a_truncated_last_line_is_named(self) -> None:
        path = self.write(5)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 30])
        result = verify_trail(self.folder)
        self.assertEqual((result.line, result.records), (5, 4))
        self.assertIn("audit.jsonl line 5 is cut short", str(result))

    def test_a_deleted_first_line_is_named(self) -> None:
        path = self.write(5)

        def change(lines: list[bytes]) -> None:
            del lines[0]

        self.edit(path, change)
        result = verify_trail(self.folder)
        self.assertEqual((result.line, result.seq), (1, 2))
        self.assertIn("the trail starts at seq 2", str(result))
        self.assertIn("not by rotation", str(result))

    def test_the_first_problem_across_rotated_files_names_its_file(self) -> None:
        self.write(30, max_bytes=2048, keep=100)
        middle = trail_files(self.folder)[2]

        def change(lines: list[bytes]) -> None:
            lines[1] = lines[1].replace(b'"target":"web"', b'"target":"plc"')

        self.edit(middle, change)
        result = verify_trail(self.folder)
        self.assertEqual((result.file, result.line), (middle.name, 2))

    def test_a_rotated_file_deleted_by_hand_is_found(self) -> None:
        self.write(30, max_bytes=2048, keep=100)
        files = trail_files(self.folder)
        files[2].unlink()
        result = verify_trail(self.folder)
        self.assertFalse(result.ok)
        self.assertIn("seq jumps", str(result))

    def test_the_oldest_files_deleted_by_hand_are_not_taken_for_rotation(self) -> None:
        self.write(30, max_bytes=2048, keep=100)
        trail_files(self.folder)[0].unlink()
        self.assertIn("not by rotation", str(verify_trail(self.folder)))

    def test_the_oldest_files_deleted_by_rotation_verify(self) -> None:
        self.write(60, max_bytes=2048, keep=4)
        result = verify_trail(self.folder)
        self.assertTrue(result.ok, str(result))
        self.assertEqual(result.files, 4)

    def test_an_empty_trail_verifies(self) -> None:
        result = verify_trail(self.folder)
        self.assertEqual((result.ok, result.records, result.files), (True, 0, 0))

    def test_an_unreadable_trail_raises(self) -> None:
        self.folder.parent.mkdir(exist_ok=True)
        self.folder.write_text("a file where the folder should be")
        self.assertRaises(AuditReadError, verify_trail, self.folder)


class ReadTests(TrailOnDisk):
    def test_records_come_back_in_order_across_files(self) -> None:
        self.write(30, max_bytes=2048, keep=100)
        opened = [r["n"] for r in read_trail(self.folder) if r["event"] == "stream.opened"]
        self.assertEqual(opened, list(range(30)))

    def test_since_keeps_the_later_records(self) -> None:
        self.write(10)
        since = START + 7 * 60
        self.assertEqual([r["n"] for r in read_trail(self.folder, since)], [7, 8, 9])

    def test_lines_that_are_not_records_are_skipped(self) -> None:
        path = self.write(3)
        with path.open("ab") as f:
            f.write(b"garbage\n{")
        self.assertEqual(len(list(read_trail(self.folder))), 3)

    def test_a_missing_folder_is_an_empty_trail(self) -> None:
        self.assertEqual(list(read_trail(self.folder)), [])


class SinceTests(SynchronousTestCase):
    NOW = START

    def test_spans_count_back_from_now(self) -> None:
        for text, seconds in (("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800)):
            self.assertEqual(parse_since(text, self.NOW), self.NOW - seconds, text)

    def test_iso_times_with_a_zone(self) -> None:
        self.assertEqual(parse_since("2024-05-01T10:40:00Z", self.NOW), START)
        self.assertEqual(parse_since("2024-05-01T12:40:00+02:00", self.NOW), START)

    def test_iso_dates_and_times_without_a_zone_are_local_time(self) -> None:
        local = datetime(2024, 5, 1, 8, 30).astimezone()
        self.assertEqual(parse_since("2024-05-01T08:30", self.NOW), local.timestamp())
        midnight = datetime(2024, 5, 1).astimezone()
        self.assertEqual(parse_since("2024-05-01", self.NOW), midnight.timestamp())

    def test_anything_else_says_what_is_wanted(self) -> None:
        for text in ("yesterday", "1w", "-1h", "", "2024-13-01"):
            error = self.assertRaises(ValueError, parse_since, text, self.NOW)
            self.assertIn("90s, 30m, 1h, 2d", str(error))
            self.assertIn("2024-05-01T08:30", str(error))


class ReadableTimeTests(SynchronousTestCase):
    def test_record_times_compare_as_strings(self) -> None:
        from gateway.auditlog.files import format_time

        moments = [START, START + 0.001, START + 59.999, START + 86400 * 400]
        texts = [format_time(m) for m in moments]
        self.assertEqual(texts, sorted(texts))
        self.assertEqual(texts[0], "2024-05-01T10:40:00.000Z")
        parsed = datetime.fromisoformat(texts[2])
        self.assertEqual(parsed.tzinfo, UTC)
        self.assertEqual(parsed - datetime.fromisoformat(texts[0]), timedelta(seconds=59.999))


class JsonShapeTests(TrailOnDisk):
    def test_verify_result_says_where_the_head_is(self) -> None:
        path = self.write(3)
        result = verify_trail(self.folder)
        last = path.read_bytes().splitlines()[-1]
        self.assertEqual(result.head, hashlib.sha256(last).hexdigest())
        self.assertEqual(json.loads(last)["seq"], result.last_seq)
        self.assertEqual(os.path.basename(path), CURRENT)
