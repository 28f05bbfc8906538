"""The daemons' log lines: classic text, the journal's (no timestamp, syslog priorities) and JSON
lines with the structured fields, never an event's other keys."""

from __future__ import annotations

import io
import json
import os
import tempfile

from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.logformat import LineObserver, format_json, format_text, journal_stream

AT = 1_767_607_200.25  # 2026-01-05T10:00:00.250Z


def text(e: dict[str, object], *, journal: bool) -> str:
    line = format_text(e, journal=journal)
    assert line is not None
    return line


def js(e: dict[str, object], *, journal: bool) -> str:
    line = format_json(e, journal=journal)
    assert line is not None
    return line


def event(text: str, level: LogLevel = LogLevel.info, **keys: object) -> dict[str, object]:
    return {
        "log_format": text,
        "log_level": level,
        "log_time": AT,
        "log_namespace": "gateway.edge.link",
        **keys,
    }


class TextTests(SynchronousTestCase):
    def test_a_terminal_line_has_its_timestamp(self) -> None:
        line = format_text(event("tunnel {new}", new="up"), journal=False) or ""
        self.assertRegex(
            line, r"^2026-01-0\dT\d\d:\d\d:00[+-]\d{4} \[gateway.edge.link#info\] tunnel up\n$"
        )

    def test_a_journal_line_has_its_priority_and_no_timestamp(self) -> None:
        cases = {LogLevel.error: "<3>", LogLevel.warn: "<4>", LogLevel.info: "<6>"}
        for level, prefix in cases.items():
            line = text(event("cannot reach relay", level), journal=True)
            self.assertEqual(line, f"{prefix}[gateway.edge.link#{level.name}] cannot reach relay\n")
        self.assertTrue(
            (format_text(event("x", LogLevel.debug), journal=True) or "").startswith("<7>")
        )

    def test_every_line_of_a_traceback_keeps_the_priority_in_the_journal(self) -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            failure = Failure()
        crashed = event("check crashed", LogLevel.critical, log_failure=failure)
        written = text(crashed, journal=True)
        lines = written.splitlines()
        self.assertGreater(len(lines), 2)
        self.assertTrue(all(line.startswith("<2>") for line in lines), lines)
        self.assertIn("ValueError: boom", written)


class JsonTests(SynchronousTestCase):
    def test_one_object_a_line_with_the_structured_fields(self) -> None:
        line = js(
            event(
                "stream {cid}: {engineer} to {target}",
                LogLevel.warn,
                cid="g-1",
                engineer="erin",
                target="web",
                session="s-1",
                gw="plant7-gw",
            ),
            journal=False,
        )
        self.assertTrue(line.endswith("\n") and line.count("\n") == 1)
        record = json.loads(line)
        self.assertEqual(
            record,
            {
                "time": "2026-01-05T10:00:00.250+00:00",
                "level": "warn",
                "message": "stream g-1: erin to web",
                "namespace": "gateway.edge.link",
                "engineer": "erin",
                "target": "web",
                "session": "s-1",
                "gateway_id": "plant7-gw",
            },
        )

    def test_other_keys_never_leave_the_process(self) -> None:
        record = json.loads(js(event("login", token="s3cret", password="pw"), journal=False))
        self.assertNotIn("s3cret", json.dumps(record))
        self.assertNotIn("pw", json.dumps(record))

    def test_a_peer_s_target_name_is_made_printable_and_bounded(self) -> None:
        record = json.loads(js(event("refused", target="\x1b[2J" + "x" * 500), journal=False))
        self.assertNotIn("\x1b", record["target"])
        self.assertLess(len(record["target"]), 160)

    def test_under_the_journal_the_line_carries_the_priority(self) -> None:
        line = js(event("lost", LogLevel.error), journal=True)
        self.assertTrue(line.startswith("<3>{"))
        json.loads(line[3:])


class JournalStreamTests(SynchronousTestCase):
    def test_the_variable_must_name_the_very_file_stderr_writes_to(self) -> None:
        with tempfile.TemporaryFile("w+") as log, tempfile.TemporaryFile("w+") as other:
            st = os.fstat(log.fileno())
            value = f"{st.st_dev}:{st.st_ino}"
            self.assertTrue(journal_stream({"JOURNAL_STREAM": value}, log))
            self.assertFalse(journal_stream({"JOURNAL_STREAM": value}, other))
            self.assertFalse(journal_stream({}, log))
            self.assertFalse(journal_stream({"JOURNAL_STREAM": "garbage"}, log))
        self.assertFalse(journal_stream({"JOURNAL_STREAM": value}, io.StringIO()))


class ObserverTests(SynchronousTestCase):
    def test_writes_and_flushes_each_event(self) -> None:
        out = io.StringIO()
        LineObserver(out, json_lines=True, journal=False)(event("hello {who}", who="plant"))
        self.assertEqual(json.loads(out.getvalue())["message"], "hello plant")
        self.assertEqual(formatEvent(event("a")), "a")

    def test_an_event_without_text_writes_nothing(self) -> None:
        out = io.StringIO()
        for json_lines in (True, False):
            LineObserver(out, json_lines=json_lines, journal=True)({"log_level": LogLevel.info})
        self.assertEqual(out.getvalue(), "")
