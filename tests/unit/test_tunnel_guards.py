"""The oversize-input guard, and proof that h2 keeps its unparsed input where the guard reads it."""

from __future__ import annotations

from typing import Any

from h2.connection import H2Connection
from h2.frame_buffer import FrameBuffer
from twisted.trial.unittest import SynchronousTestCase

from gateway.tunnel.guards import oversized_input
from gateway.tunnel.h2tuning import MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE, h2_configuration

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def frame_header(length: int, kind: int, flags: int = 0, stream_id: int = 1) -> bytes:
    return length.to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big")


def h2_server(*inputs: bytes) -> H2Connection:
    """h2 as our tunnel runs it (1 MiB frames), after receiving ``inputs``."""
    conn = H2Connection(h2_configuration(client_side=False))
    conn.initiate_connection()
    conn.max_inbound_frame_size = MAX_FRAME_SIZE
    for data in inputs:
        conn.receive_data(data)
    return conn


def check(conn: H2Connection) -> str:
    return oversized_input(conn.incoming_buffer, conn.max_inbound_frame_size, MAX_HEADER_LIST_SIZE)


def half_a_header_block(size: int = 60_000) -> tuple[bytes, bytes]:
    """A HEADERS frame without END_HEADERS, and a CONTINUATION that does not end it either."""
    block = b"\x00" * size
    return frame_header(size, 0x1) + block, frame_header(size, 0x9) + block


class H2InternalsTests(SynchronousTestCase):
    """If these fail after an h2 upgrade, guards.py reads h2 internals that moved: fix it there."""

    def test_h2_keeps_an_incomplete_frame_in_incoming_buffer_data(self) -> None:
        conn = h2_server(PREFACE + EMPTY_SETTINGS + frame_header(100, 0x0) + b"x" * 10)
        self.assertIsInstance(conn.incoming_buffer, FrameBuffer)
        buffered = conn.incoming_buffer._data
        self.assertIsInstance(buffered, bytearray)
        self.assertEqual(bytes(buffered), frame_header(100, 0x0) + b"x" * 10)

    def test_h2_keeps_an_unfinished_header_block_in_incoming_buffer_headers_buffer(self) -> None:
        headers, continuation = half_a_header_block(1000)
        conn = h2_server(PREFACE + EMPTY_SETTINGS + headers + continuation)
        held = conn.incoming_buffer._headers_buffer
        self.assertIsInstance(held, list)
        self.assertEqual([len(f.data) for f in held], [1000, 1000])


class OversizedInputTests(SynchronousTestCase):
    def test_a_frame_declared_over_the_limit_is_seen_from_its_header(self) -> None:
        declared = 16 * 1024 * 1024 - 1
        conn = h2_server(PREFACE + EMPTY_SETTINGS + frame_header(declared, 0x0) + b"x")
        self.assertEqual(check(conn), f"a frame of {declared} bytes (limit {MAX_FRAME_SIZE})")

    def test_a_frame_at_the_limit_is_fine(self) -> None:
        conn = h2_server(PREFACE + EMPTY_SETTINGS + frame_header(MAX_FRAME_SIZE, 0x0) + b"x")
        self.assertEqual(check(conn), "")

    def test_half_a_frame_header_is_not_judged_yet(self) -> None:
        conn = h2_server(PREFACE + EMPTY_SETTINGS + frame_header(1 << 23, 0x0)[:8])
        self.assertEqual(check(conn), "")

    def test_a_header_block_growing_past_the_limit_is_seen(self) -> None:
        headers, continuation = half_a_header_block()
        conn = h2_server(PREFACE + EMPTY_SETTINGS + headers)
        self.assertEqual(check(conn), "")
        conn.receive_data(continuation)
        self.assertEqual(check(conn), f"a header block over {MAX_HEADER_LIST_SIZE} bytes")

    def test_ordinary_input_passes(self) -> None:
        self.assertEqual(check(h2_server(PREFACE + EMPTY_SETTINGS)), "")

    def test_without_h2s_internals_the_guard_does_nothing_rather_than_crash(self) -> None:
        class Moved:
            pass

        class Changed:
            _data: Any = ["not", "bytes", "any", "more", "at", "all", "!", "!", "!"]
            _headers_buffer: Any = iter(())

        for frames in (None, object(), Moved(), Changed()):
            self.assertEqual(oversized_input(frames, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE), "")
