"""Refuse input that is too large before h2 buffers all of it.

h2 checks a frame's length only once the whole frame has arrived, and collects up to 64
CONTINUATION frames before decoding a header block: an unauthenticated client could make us hold
tens of megabytes per connection.  A frame's declared length and the header block collected so far
are known early, in h2's buffer of unparsed input (``H2Connection.incoming_buffer``, a
``FrameBuffer``).  Reading them means reading h2 internals (``_data``, ``_headers_buffer``): this
module reads them defensively (absent or changed, the check finds nothing rather than crash), and
a unit test proves they are still where we read them, so an h2 upgrade that moves them fails a
test instead of silently switching the guard off.
"""

from __future__ import annotations

FRAME_HEADER_SIZE = 9


def oversized_input(frames: object, max_frame_size: int, max_header_list_size: int) -> str:
    """What in h2's unparsed input ``frames`` is over the limits, in words; "" if nothing is.

    Called once per read from the peer, after h2 consumed what it could, so it costs a couple of
    attribute reads and looks at no more than one frame header.
    """
    too_big = ""
    buffered = getattr(frames, "_data", None)
    if isinstance(buffered, bytes | bytearray) and len(buffered) >= FRAME_HEADER_SIZE:
        declared = int.from_bytes(buffered[:3], "big")
        if declared > max_frame_size:
            too_big = f"a frame of {declared} bytes (limit {max_frame_size})"
    header_frames = getattr(frames, "_headers_buffer", None)
    if isinstance(header_frames, list) and header_frames:
        header_block = sum(len(getattr(f, "data", b"")) for f in header_frames)
        if header_block > max_header_list_size:
            too_big = f"a header block over {max_header_list_size} bytes"
    return too_big
