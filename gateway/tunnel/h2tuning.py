"""h2 settings and one targeted fix that the tunnel needs to be fast.

h2 4.x logs every received frame with ``logger.trace("Received frame: %s", repr(frame))``: the
``repr`` is built eagerly even when nobody logs, and for a DATA frame hyperframe's fallback
``_body_repr`` *serializes the whole body* to show its first bytes.  On a 1 MiB frame that is a
1 MiB copy per frame for nothing; the tunnel prototype went from 193 to 271 MB/s without it.
``DataFrame`` gets a body repr that only states the length, which is all a log would want.
"""

from __future__ import annotations

import collections
import types
from typing import Any

import h2.settings
from h2.config import H2Configuration
from h2.settings import SettingCodes
from hyperframe.frame import DataFrame

STREAM_WINDOW = 16 * 1024 * 1024
"""Per-stream receive window: also the bound on bytes buffered for one stalled stream."""
CONNECTION_WINDOW = 64 * 1024 * 1024
MAX_FRAME_SIZE = 1024 * 1024
MAX_CONCURRENT_STREAMS = 65_536
MAX_HEADER_LIST_SIZE = 64 * 1024


def _data_frame_body_repr(self: DataFrame) -> str:
    return f"<{len(self.data)} bytes>"


DataFrame._body_repr = _data_frame_body_repr  # type: ignore[method-assign,assignment]


class _SettingValues(list[Any]):
    """What h2's ``Settings`` needs of a deque: the current value and, rarely, a pending one.

    h2 keeps every setting of both ends in its own ``collections.deque`` (~760 bytes each, ~15
    per connection): ~11 KiB of every idle tunnel, 15 % of what a relay holds per gateway.  A
    slotted list holds the same one or two values in ~70 bytes (bench/scale measured 67 -> 57
    KiB per idle gateway).
    """

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


# h2.settings reaches deque only as ``collections.deque``; everything else stays the real module.
h2.settings.collections = types.SimpleNamespace(  # type: ignore[assignment,attr-defined]
    **{**vars(collections), "deque": _SettingValues}
)


def h2_configuration(*, client_side: bool) -> H2Configuration:
    """Bytes headers, inbound validation on, no outbound re-normalisation (we build them)."""
    return H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


LOCAL_SETTINGS = {
    SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
    SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
    SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
    SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
    SettingCodes.ENABLE_PUSH: 0,
}
