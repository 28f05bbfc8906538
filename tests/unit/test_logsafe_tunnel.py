"""The tunnel's log lines with hostile peers: no header value, no raw control byte, bounded length.

Two real tunnel connections joined in memory; the opener sends what a hostile or careless client
would (a token with a trailing space, escape sequences, a huge authority), and every line both
ends log is searched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from h2.errors import ErrorCodes
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway.logsafe import RateLimitedLog
from gateway.tunnel.connection import IStreamHandler
from gateway.tunnel.stream import TunnelStream
from gateway.wire import Refusal
from tests.helpers.tunnel import linked_tunnels

SECRET = "rsg_c2VjcmV0LXRva2VuLXZhbHVl"


@implementer(IStreamHandler)
class RefuseAll:
    def stream_requested(self, stream: TunnelStream) -> None:
        assert stream.request is not None
        stream.refuse(Refusal.UNKNOWN_GATEWAY, f"no gateway named {stream.request.authority!r}")


def logged(events: Sequence[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events]


def assert_clean(case: SynchronousTestCase, lines: list[str], *, longest: int = 400) -> None:
    for line in lines:
        case.assertNotIn(SECRET, line)
        case.assertNotIn("rsg_", line)
        bad = [c for c in line if ord(c) < 0x20 or ord(c) == 0x7F]
        case.assertEqual(bad, [], f"raw control characters in {line!r}")
        case.assertLessEqual(len(line), longest, line[:200])


class HostileHeaderTests(SynchronousTestCase):
    def open_with(self, authority: str, value: bytes, lines: RateLimitedLog | None = None) -> Any:
        link = linked_tunnels(RefuseAll())
        link.server.lines = lines
        self.addCleanup(link.close)
        stream = link.client.open_stream(authority, headers=[(b"authorization", value)])
        stream.response.addErrback(lambda _: None)
        link.settle()
        return link

    def test_a_token_with_a_trailing_space_never_reaches_a_log(self) -> None:
        with capturedLogs() as events:
            link = self.open_with("web", f"Bearer {SECRET} ".encode())
        lines = logged(events)
        assert_clean(self, lines)
        text = "\n".join(lines)
        self.assertIn(
            "HTTP/2 protocol error from peer: ProtocolError: Received header value surrounded by "
            "whitespace; closing that connection",
            text,
        )
        # The client is told what was wrong, not just that the connection closed.
        self.assertIn(
            "peer closed the tunnel (GOAWAY PROTOCOL_ERROR: malformed request header refused "
            "(ProtocolError: Received header value surrounded by whitespace); check the token "
            "for spaces or control characters)",
            text,
        )
        self.assertTrue(link.client.closed)

    def test_control_characters_in_a_header_are_not_echoed(self) -> None:
        # h2 lets most control characters through (the token is then simply wrong); NUL, CR
        # and LF it refuses.  Either way nothing of the value reaches a log.
        for value in (b"\x1b]0;owned\x07", b"\r\nforged: line", b"\x00"):
            with capturedLogs() as events:
                self.open_with("web", b"Bearer " + value + SECRET.encode())
            lines = logged(events)
            assert_clean(self, lines)
            self.assertNotIn("owned", "\n".join(lines))
            self.assertNotIn("forged", "\n".join(lines))
        self.assertIn("Illegal character in header value", "\n".join(lines))

    def test_a_huge_authority_is_logged_as_a_short_escaped_prefix(self) -> None:
        authority = "\x1b[2J" + "a" * 60_000
        with capturedLogs() as events:
            self.open_with(authority, f"Bearer {SECRET}".encode())
        lines = logged(events)
        assert_clean(self, lines)
        [refused] = [line for line in lines if "refused" in line]
        self.assertIn("stream 1 to '\\x1b[2Jaaaa", refused)
        self.assertIn("...(60004 bytes)", refused)

    def test_a_goaway_reason_from_the_peer_is_escaped_and_cut(self) -> None:
        link = linked_tunnels()
        self.addCleanup(link.close)
        with capturedLogs() as events:
            link.server.close(ErrorCodes.NO_ERROR, why="\x1b[31mbye\n" + "x" * 1000)
            link.settle()
        lines = logged(events)
        assert_clean(self, lines)
        self.assertIn("(GOAWAY NO_ERROR: \\x1b[31mbye\\x0axxx", "\n".join(lines))

    def test_a_flood_of_protocol_errors_is_rate_limited(self) -> None:
        clock = Clock()
        lines = RateLimitedLog(clock, burst=5, interval=60)
        with capturedLogs() as events:
            for _ in range(30):
                link = linked_tunnels(RefuseAll(), clock)
                link.server.lines = lines
                stream = link.client.open_stream("web", headers=[(b"authorization", b" x ")])
                stream.response.addErrback(lambda _: None)
                link.settle()
                link.close()
            clock.advance(60)
        errors = [line for line in logged(events) if line.startswith("HTTP/2 protocol error")]
        self.assertEqual(len(errors), 5)
        self.assertIn(
            "25 similar lines suppressed in the last 60 s (like: HTTP/2 protocol error from",
            "\n".join(logged(events)),
        )
