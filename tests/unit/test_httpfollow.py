"""Tests for the request follower of ``http`` targets (`gateway.edge.httpfollow`).

The follower must pass the engineer's bytes on unchanged and as they come, cut the stream only at
request boundaries, answer refused requests itself in their place among pipelined answers, and
stop reading once an upgrade is taken.
"""

from __future__ import annotations

import json
import unittest

from gateway.edge.httpfollow import (
    Exchange,
    Refuse,
    RequestFollower,
    RequestHead,
    path_without_values,
    refusal_page,
)

VIEW = frozenset({"GET", "HEAD", "OPTIONS"})


def view_only(head: RequestHead) -> Refuse | None:
    if head.method in VIEW and head.upgrade is None:
        return None
    return Refuse(403, "the plant granted view-only access", "view-only")


def get(path: str = "/", extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: plc\r\n%s\r\n" % (path.encode(), extra)


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: plc\r\nContent-Length: %d\r\n%s\r\n%s" % (
        path.encode(),
        len(body),
        extra,
        body,
    )


def ok(body: bytes = b"ok", status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


CHUNKED_POST = (
    b"POST /upload HTTP/1.1\r\nHost: plc\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: plc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SWITCHED = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


class Harness:
    def __init__(self, decide=view_only, **options: int) -> None:  # type: ignore[no-untyped-def]
        self.forwarded: list[bytes] = []
        self.answers: list[bytes] = []
        self.closed: list[str] = []
        self.seen: list[Exchange] = []
        self.follower = RequestFollower(
            decide,
            forward=self.forwarded.append,
            answer=self.answers.append,
            close=self.closed.append,
            seen=self.seen.append,
            **options,
        )

    @property
    def to_processor(self) -> bytes:
        return b"".join(self.forwarded)

    def send(self, data: bytes, *, step: int = 0) -> None:
        if not step:
            self.follower.request_bytes(data)
            return
        for i in range(0, len(data), step):
            self.follower.request_bytes(data[i : i + step])

    def processor(self, data: bytes) -> None:
        self.follower.response_bytes(data)

    def results(self) -> list[tuple[str, str, str, int | None]]:
        return [
            (
                e.head.method,
                e.head.path,
                "forwarded" if e.forwarded else "refused",
                e.status,
            )
            for e in self.seen
        ]


class PassThroughTests(unittest.TestCase):
    def test_pipelined_requests_pass_unchanged(self) -> None:
        h = Harness(lambda head: None)
        stream = get("/a?x=1") + post("/b", b"12345") + CHUNKED_POST + get("/c")
        h.send(stream)
        self.assertEqual(h.to_processor, stream)
        h.processor(ok() + ok(status=b"201 Created") + ok() + ok(b"", b"404 Not Found"))
        self.assertEqual(
            h.results(),
            [
                ("GET", "/a?x=", "forwarded", 200),
                ("POST", "/b", "forwarded", 201),
                ("POST", "/upload", "forwarded", 200),
                ("GET", "/c", "forwarded", 404),
            ],
        )

    def test_a_stream_split_into_one_byte_reads_passes_unchanged(self) -> None:
        h = Harness(lambda head: None)
        stream = get("/a") + post("/b", b"abc" * 50) + CHUNKED_POST + get("/c")
        h.send(stream, step=1)
        self.assertEqual(h.to_processor, stream)
        h.processor(b"".join(ok() for _ in range(4)))
        self.assertEqual([r[1] for r in h.results()], ["/a", "/b", "/upload", "/c"])

    def test_a_content_length_body_goes_on_as_it_comes(self) -> None:
        h = Harness(lambda head: None)
        head = b"POST /upload HTTP/1.1\r\nHost: plc\r\nContent-Length: 1000000\r\n\r\n"
        h.send(head)
        self.assertEqual(h.to_processor, head)
        for _ in range(10):
            before = len(h.to_processor)
            h.send(b"x" * 1000)
            self.assertEqual(len(h.to_processor), before + 1000)  # nothing gathered

    def test_a_chunked_body_goes_on_as_it_comes(self) -> None:
        h = Harness(lambda head: None)
        head = b"POST /upload HTTP/1.1\r\nHost: plc\r\nTransfer-Encoding: chunked\r\n\r\n"
        h.send(head + b"400\r\n")
        h.send(b"y" * 512)
        self.assertTrue(h.to_processor.endswith(b"y" * 512))
        h.send(b"y" * 512 + b"\r\n0\r\n\r\n" + get("/next"))
        self.assertEqual(
            h.to_processor, head + b"400\r\n" + b"y" * 1024 + b"\r\n0\r\n\r\n" + get("/next")
        )

    def test_path_loses_query_values_but_keeps_names(self) -> None:
        self.assertEqual(path_without_values("/trend?tag=T1&from=2024&x"), "/trend?tag=&from=&x=")
        self.assertEqual(path_without_values("/page#frag"), "/page")
        self.assertEqual(path_without_values("/"), "/")

    def test_a_head_answer_with_a_length_has_no_body(self) -> None:
        h = Harness()
        h.send(b"HEAD /big HTTP/1.1\r\nHost: plc\r\n\r\n")
        h.processor(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
        h.send(post("/write", b"1"))
        self.assertEqual(len(h.answers), 1)  # not held behind a body that never comes
        h.send(get("/next"))
        h.processor(ok(status=b"202 Accepted"))
        self.assertEqual(
            h.results(),
            [
                ("HEAD", "/big", "forwarded", 200),
                ("POST", "/write", "refused", 403),
                ("GET", "/next", "forwarded", 202),
            ],
        )

    def test_interim_answers_do_not_take_the_place_of_the_real_one(self) -> None:
        h = Harness(lambda head: None)
        h.send(post("/b", b"12", b"Expect: 100-continue\r\n"))
        h.processor(b"HTTP/1.1 100 Continue\r\n\r\n")
        h.processor(ok(status=b"201 Created"))
        self.assertEqual(h.results(), [("POST", "/b", "forwarded", 201)])

    def test_exchanges_without_an_answer_are_told_at_the_end(self) -> None:
        h = Harness()
        h.send(get("/slow"))
        self.assertEqual(h.seen, [])
        h.follower.finish()
        self.assertEqual(h.results(), [("GET", "/slow", "forwarded", None)])


class RefusalTests(unittest.TestCase):
    def test_a_refused_request_is_answered_and_the_connection_carries_on(self) -> None:
        h = Harness()
        h.send(get("/") + post("/upload", b"secret-recipe") + get("/after"))
        self.assertEqual(h.to_processor, get("/"))  # the POST waits behind the first answer
        self.assertEqual(h.answers, [])
        h.processor(ok(b"page"))
        self.assertEqual(len(h.answers), 1)
        self.assertIn(b"HTTP/1.1 403 Forbidden\r\n", h.answers[0])
        self.assertIn(b"view-only access", h.answers[0])
        self.assertNotIn(b"connection: close", h.answers[0])
        self.assertEqual(h.to_processor, get("/") + get("/after"))  # no POST, no body
        self.assertNotIn(b"secret-recipe", h.to_processor)
        self.assertEqual(h.closed, [])

    def test_a_refused_chunked_body_is_dropped_as_it_comes(self) -> None:
        h = Harness()
        h.send(CHUNKED_POST, step=3)
        h.send(get("/x"))
        self.assertEqual(h.to_processor, get("/x"))
        self.assertEqual(len(h.answers), 1)

    def test_a_client_asking_for_json_gets_json(self) -> None:
        h = Harness()
        h.send(post("/api/set", b"{}", b"Accept: application/json\r\n"))
        head, body = h.answers[0].split(b"\r\n\r\n", 1)
        self.assertIn(b"content-type: application/json", head)
        self.assertEqual(
            json.loads(body),
            {"error": "view-only", "reason": "the plant granted view-only access"},
        )

    def test_a_refused_head_has_no_body(self) -> None:
        page = refusal_page(Refuse(403, "no"), RequestHead("HEAD", "/"))
        self.assertTrue(page.endswith(b"\r\n\r\n"))
        self.assertIn(b"content-length: ", page)

    def test_the_decision_is_taken_for_each_request(self) -> None:
        allowed = {"value": False}

        def decide(head: RequestHead) -> Refuse | None:
            return None if allowed["value"] or head.method == "GET" else Refuse(403, "view")

        h = Harness(decide)
        h.send(post("/a", b"1"))
        allowed["value"] = True
        h.send(post("/b", b"2"))
        self.assertEqual(h.to_processor, post("/b", b"2"))
        self.assertEqual([r[2] for r in h.results()], ["refused"])


class UpgradeTests(unittest.TestCase):
    def test_after_an_upgrade_is_taken_bytes_pass_both_ways_unread(self) -> None:
        h = Harness(lambda head: None)
        frames = b"\x81\x05hello" + b"POST / HTTP/1.1\r\n garbage that is no request"
        h.send(UPGRADE + frames[:4])
        self.assertEqual(h.to_processor, UPGRADE)  # held until the processor answers
        h.processor(SWITCHED + b"\x81\x02hi")
        self.assertTrue(h.follower.blind)
        h.send(frames[4:])
        self.assertEqual(h.to_processor, UPGRADE + frames)
        h.processor(b"\x00\xff not http either")
        self.assertEqual(h.closed, [])
        self.assertEqual(h.results(), [("GET", "/ws", "forwarded", 101)])

    def test_an_upgrade_the_processor_turns_down_is_followed_on_as_http(self) -> None:
        h = Harness()
        h.follower = RequestFollower(
            lambda head: None if head.method == "GET" else Refuse(403, "view"),
            forward=h.forwarded.append,
            answer=h.answers.append,
            close=h.closed.append,
            seen=h.seen.append,
        )
        h.send(UPGRADE + post("/after", b"x"))
        h.processor(ok(b"no websockets here", b"426 Upgrade Required"))
        self.assertFalse(h.follower.blind)
        self.assertEqual(h.to_processor, UPGRADE)  # the POST is still read, and refused
        self.assertEqual(len(h.answers), 1)

    def test_a_refused_upgrade_is_answered_and_nothing_switches(self) -> None:
        h = Harness()
        h.send(UPGRADE + get("/next"))
        self.assertEqual(h.to_processor, get("/next"))
        self.assertIn(b"403", h.answers[0])
        self.assertFalse(h.follower.blind)

    def test_a_connect_the_processor_takes_becomes_a_tunnel(self) -> None:
        h = Harness(lambda head: None)
        connect = b"CONNECT plc:502 HTTP/1.1\r\nHost: plc:502\r\n\r\n"
        h.send(connect + b"\x00\x01modbus")
        self.assertEqual(h.to_processor, connect)
        h.processor(b"HTTP/1.1 200 Connection established\r\n\r\n\x00\x01reply")
        self.assertTrue(h.follower.blind)
        self.assertEqual(h.follower.switched_to, "connect")
        self.assertEqual(h.to_processor, connect + b"\x00\x01modbus")
        h.processor(b"more \xff bytes")
        self.assertEqual(h.closed, [])


class MalformedTests(unittest.TestCase):
    def test_a_malformed_request_ends_the_stream_and_reaches_nothing(self) -> None:
        h = Harness(lambda head: None)
        h.send(b"GET / HTTP/1.1\r\nHost: plc\r\nBad Header Line\r\n\r\n" + get("/x"))
        self.assertEqual(h.to_processor, b"")
        self.assertEqual(len(h.closed), 1)
        self.assertIn("could not read the request", h.closed[0])
        self.assertIn(b"HTTP/1.1 400 Bad Request", h.answers[0])
        self.assertIn(b"connection: close", h.answers[0])
        h.send(get("/later"))
        self.assertEqual(h.to_processor, b"")

    def test_bytes_that_are_no_http_at_all_end_the_stream(self) -> None:
        h = Harness(lambda head: None)
        h.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a TLS hello to an http target
        self.assertEqual(h.to_processor, b"")
        self.assertEqual(len(h.closed), 1)

    def test_a_head_over_the_limit_ends_the_stream(self) -> None:
        h = Harness(lambda head: None, max_head=4096)
        h.send(b"GET / HTTP/1.1\r\nHost: plc\r\n")
        for _ in range(10):
            h.send(b"X-Filler: " + b"a" * 500 + b"\r\n")
        self.assertEqual(h.to_processor, b"")
        self.assertEqual(h.closed, ["the request's head is longer than 4096 bytes"])

    def test_a_malformed_request_waits_for_earlier_answers(self) -> None:
        h = Harness(lambda head: None)
        h.send(get("/a") + b"NOT A REQUEST\r\n\r\n")
        self.assertEqual(h.to_processor, get("/a"))
        self.assertEqual(h.answers, [])
        h.processor(ok())
        self.assertEqual(len(h.closed), 1)
        self.assertIn(b"400", h.answers[0])

    def test_a_client_that_sends_too_much_while_held_is_cut_off(self) -> None:
        h = Harness(lambda head: None, max_held=1000)
        h.send(UPGRADE)
        h.send(b"x" * 2000)
        self.assertEqual(h.to_processor, UPGRADE)
        self.assertEqual(len(h.closed), 0)  # the 400 waits for the upgrade's answer
        h.processor(ok(b"", b"400 Bad Request"))
        self.assertEqual(len(h.closed), 1)


class FastPathTests(unittest.TestCase):
    """A read that is exactly one request (its head and any Content-Length body) is read by
    httptools; the rest by h11.
    Whatever the path, what reaches the processor and the engineer must be the same."""

    SAMPLES = (
        get("/a?x=1"),
        b"HEAD / HTTP/1.1\r\nHost: plc\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: plc\r\n\r\n",
        b"DELETE /recipe/7 HTTP/1.1\r\nHost: plc\r\n\r\n",
        b"POST /start HTTP/1.1\r\nHost: plc\r\nContent-Length: 0\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host: h11 refuses it
        b"GET / HTTP/1.1\r\nHost: plc\r\nHost: other\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: plc\r\nAccept: text/html\r\nAccept: */*\r\n\r\n",
        b"GET / HTTP/1.1\nHost: plc\n\n",
        b"GET / HTTP/1.1\r\nHost: plc\nX: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: plc\r\n\r\nGET /two HTTP/1.1\r\nHost: plc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: plc\r\nContent-Length: 3\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: plc\r\n\r\n",
        b"G\xe9T / HTTP/1.1\r\nHost: plc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : plc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: plc\r\n folded\r\n\r\n",
        UPGRADE,
        b"POST /echo HTTP/1.1\r\nHost: plc\r\nContent-Length: 5\r\n\r\nhello",
        b"GET /q HTTP/1.1\r\nHost: plc\r\nContent-Length: 2\r\n\r\nhi",  # view refuses it
        b"POST /e HTTP/1.1\r\nHost: plc\r\nContent-Length: 3\r\n\r\nhello",  # more
        b"POST /e HTTP/1.1\r\nHost: plc\r\nContent-Length: 9\r\n\r\nhello",  # less
        b"POST /e HTTP/1.1\r\nHost: plc\r\nContent-Length: +5\r\n\r\nhello",
        b"POST /e HTTP/1.1\r\nHost: plc\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /e HTTP/1.1\r\nHost: plc\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        b"POST /e HTTP/1.1\r\nHost: plc\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n",
    )

    def outcome(self, data: bytes, *, split: bool) -> tuple[bytes, list[bytes], int, int]:
        h = Harness()
        if split:
            h.send(data[:3])
            h.send(data[3:])
        else:
            h.send(data)
        return h.to_processor, h.answers, len(h.closed), h.follower.fast_requests

    def test_a_plain_get_takes_the_fast_path(self) -> None:
        h = Harness()
        h.send(get("/a?x=1"))
        h.processor(ok())
        h.send(post("/b", b"12"))
        self.assertEqual(h.follower.fast_requests, 2)  # a body in the same read: fast too
        self.assertEqual(h.to_processor, get("/a?x=1"))
        self.assertEqual(h.results()[0], ("GET", "/a?x=", "forwarded", 200))

    def test_a_small_post_read_in_one_piece_takes_the_fast_path(self) -> None:
        h = Harness(lambda head: None)  # full control
        request = post("/echo", b"x" * 1024)
        h.send(request)
        self.assertEqual((h.follower.fast_requests, h.to_processor), (1, request))
        h.processor(ok())
        self.assertEqual(h.results()[0], ("POST", "/echo", "forwarded", 200))

    def test_a_body_split_across_reads_goes_to_h11(self) -> None:
        h = Harness(lambda head: None)
        request = post("/echo", b"x" * 1024)
        h.send(request[:-10])
        h.send(request[-10:])
        self.assertEqual((h.follower.fast_requests, h.to_processor), (0, request))

    def test_both_paths_agree(self) -> None:
        for sample in self.SAMPLES:
            whole = self.outcome(sample, split=True)[:3]
            fast = self.outcome(sample, split=False)
            self.assertEqual(fast[:3], whole, sample)


class HeadAnswerTests(unittest.TestCase):
    """The answer to a HEAD has no body whatever its Content-Length says."""

    def test_a_head_answer_split_across_reads(self) -> None:
        h = Harness()
        h.send(b"HEAD /big HTTP/1.1\r\nHost: plc\r\n\r\n")
        h.processor(b"HTTP/1.1 200 OK\r\nContent-Le")
        h.processor(b"ngth: 5000\r\n\r")
        h.processor(b"\n")
        h.send(post("/write", b"1") + get("/next"))
        self.assertEqual(len(h.answers), 1)
        h.processor(ok(status=b"202 Accepted"))
        self.assertEqual([r[3] for r in h.results()], [200, 403, 202])

    def test_an_answer_right_after_a_head_answer_in_the_same_read(self) -> None:
        h = Harness(lambda head: None)
        h.send(b"HEAD /big HTTP/1.1\r\nHost: plc\r\n\r\n" + get("/next"))
        h.processor(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + ok(b"abc", b"404 Not Found")
        )
        self.assertEqual([r[3] for r in h.results()], [200, 404])


class LostTrackTests(unittest.TestCase):
    def test_a_processor_answering_no_http_ends_the_stream_when_an_answer_must_be_placed(
        self,
    ) -> None:
        h = Harness()
        h.send(get("/a"))
        h.processor(b"\x00\x01 this is no HTTP answer\r\n\r\n")
        self.assertEqual(h.closed, [])  # passed on unchanged; nothing of ours to place yet
        h.send(post("/write", b"1"))
        self.assertEqual(h.closed, ["the gateway could not follow the processor's answers"])
        self.assertEqual(h.answers, [])
        self.assertEqual(h.to_processor, get("/a"))

    def test_losing_track_while_an_answer_waits_ends_the_stream_at_once(self) -> None:
        h = Harness()
        h.send(get("/a") + post("/write", b"1"))
        self.assertEqual(h.closed, [])
        h.processor(b"garbage\r\n\r\n")
        self.assertEqual(len(h.closed), 1)
        h.send(get("/b"))
        self.assertEqual(h.to_processor, get("/a"))
