"""What of a peer's bytes a log line may show, and how often one kind of line is written."""

from __future__ import annotations

from collections.abc import Sequence

from h2.exceptions import ProtocolError
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger, LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.logsafe import (
    RateLimitedLog,
    h2_error_summary,
    is_header_error,
    peer_address,
    peer_text,
)

log = Logger()


class PeerTextTests(SynchronousTestCase):
    def test_printable_ascii_is_shown_as_it_came(self) -> None:
        self.assertEqual(peer_text("plant7-web.local"), "plant7-web.local")

    def test_control_characters_and_escape_sequences_are_escaped(self) -> None:
        shown = peer_text(b"a\x1b[31mred\r\nforged line\x00")
        self.assertEqual(shown, "a\\x1b[31mred\\x0d\\x0aforged line\\x00")
        self.assertFalse(any(ord(c) < 0x20 or ord(c) == 0x7F for c in shown))

    def test_non_ascii_shows_as_the_bytes_that_came(self) -> None:
        self.assertEqual(peer_text("caf\u00e9"), "caf\\xc3\\xa9")
        self.assertEqual(peer_text(b"\xff\xfe"), "\\xff\\xfe")  # not UTF-8 at all

    def test_text_that_only_looks_like_an_escape_is_harmless_and_kept(self) -> None:
        # A reason built with repr() (escapes already written out) stays readable.
        self.assertEqual(peer_text("'\\x1b[2J'"), "'\\x1b[2J'")

    def test_a_long_value_is_cut_and_its_length_said(self) -> None:
        shown = peer_text("a" * 60_000)
        self.assertEqual(shown, "a" * 48 + "...(60000 bytes)")

    def test_an_escape_is_never_cut_in_half(self) -> None:
        shown = peer_text(b"abcdefgh\x01\x02", limit=10)
        self.assertEqual(shown, "abcdefgh...(10 bytes)")

    def test_nothing_is_empty(self) -> None:
        self.assertEqual(peer_text(None), "")
        self.assertEqual(peer_text(b""), "")

    def test_peer_addresses_read_host_colon_port(self) -> None:
        self.assertEqual(peer_address(IPv4Address("TCP", "127.0.0.1", 53412)), "127.0.0.1:53412")
        self.assertEqual(peer_address(IPv6Address("TCP", "::1", 443)), "[::1]:443")
        self.assertEqual(peer_address(None), "an unknown address")


class H2ErrorTests(SynchronousTestCase):
    def test_the_header_value_h2_quotes_is_left_out(self) -> None:
        secret = "rsg_Zm9vYmFyYmF6cXV4"
        error = ProtocolError(f"Received header value surrounded by whitespace b'Bearer {secret} '")
        summary = h2_error_summary(error)
        self.assertEqual(summary, "ProtocolError: Received header value surrounded by whitespace")
        self.assertNotIn("rsg_", summary)
        self.assertTrue(is_header_error(error))

    def test_a_quoted_character_and_the_value_are_left_out(self) -> None:
        error = ProtocolError("Illegal character '\x1b' in header value: b'\\x1b[2Jtoken'")
        self.assertEqual(
            h2_error_summary(error), "ProtocolError: Illegal character in header value"
        )

    def test_sets_and_lists_of_headers_are_left_out(self) -> None:
        error = ProtocolError("Encountered request-only headers {b':path'}")
        self.assertEqual(h2_error_summary(error), "ProtocolError: Encountered request-only headers")

    def test_an_error_without_words_is_its_class(self) -> None:
        self.assertEqual(h2_error_summary(ProtocolError()), "ProtocolError")
        self.assertFalse(is_header_error(ProtocolError("Invalid frame")))


class RateLimitedLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.lines = RateLimitedLog(self.clock, burst=3, interval=60)

    def written(self, events: Sequence[LogEvent]) -> list[str]:
        return [formatEvent(e) for e in events]

    def test_the_first_lines_of_a_kind_are_written_and_the_rest_summed_up(self) -> None:
        with capturedLogs() as events:
            for n in range(10):
                self.lines.warn(log, "refused connection {n} from {peer}", n=n, peer="10.0.0.1")
                self.clock.advance(1)
            self.assertEqual(len(events), 3)
            self.clock.advance(60)
        lines = self.written(events)
        self.assertEqual(lines[:3], [f"refused connection {n} from 10.0.0.1" for n in range(3)])
        self.assertEqual(
            lines[3],
            "7 similar lines suppressed in the last 60 s "
            "(like: refused connection {n} from {peer})",
        )
        self.assertEqual(events[3]["log_level"], LogLevel.warn)
        self.assertEqual(self.lines.suppressed_total, 7)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_after_the_interval_lines_are_written_again(self) -> None:
        with capturedLogs() as events:
            for _ in range(5):
                self.lines.info(log, "same line")
            self.clock.advance(60)
            self.lines.info(log, "same line")
        self.assertEqual(
            self.written(events),
            ["same line"] * 3
            + ["2 similar lines suppressed in the last 60 s (like: same line)", "same line"],
        )

    def test_kinds_are_limited_apart(self) -> None:
        with capturedLogs() as events:
            for _ in range(5):
                self.lines.info(log, "one kind")
                self.lines.info(log, "another kind")
        self.assertEqual(len(events), 6)

    def test_a_quiet_interval_writes_no_summary(self) -> None:
        with capturedLogs() as events:
            self.lines.info(log, "once")
            self.clock.advance(120)
            self.lines.info(log, "once")
        self.assertEqual(self.written(events), ["once", "once"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopping_writes_the_pending_summary_and_leaves_no_timer(self) -> None:
        with capturedLogs() as events:
            for _ in range(4):
                self.lines.info(log, "line")
            self.clock.advance(10)
            self.lines.stop()
        self.assertEqual(
            self.written(events)[-1], "1 similar lines suppressed in the last 10 s (like: line)"
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])
