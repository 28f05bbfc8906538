"""h2 settings for a fast tunnel, and two targeted fixes that h2 4.x needs to be fast and lean.

Nothing here changes h2 when imported.  The two fixes are applied explicitly:

- ``install()`` (called by every ``TunnelConnection``): h2 logs every received frame with
  ``logger.trace("Received frame: %s", repr(frame))``; the ``repr`` is built eagerly even when
  nobody logs, and for a DATA frame hyperframe's fallback ``_body_repr`` *serializes the whole
  body* to show its first bytes.  On a 1 MiB frame that is a 1 MiB copy per frame for nothing;
  the tunnel prototype went from 193 to 271 MB/s without it.
- ``LeanSettings``: h2's settings store with small containers, used by our connections only
  (``lean_settings``).
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes, Settings
from hyperframe.frame import DataFrame

START_STREAM_WINDOW = 1024 * 1024
"""Per-stream receive window a tunnel starts with: also the bound on bytes buffered for one
stalled stream until the path shows it needs more.  1 MiB is ~0.8 s of a 10 Mbit/s uplink: more
than any plant's path needs in flight, and an upload's tail waiting on the relay stays short."""
MAX_STREAM_WINDOW = 16 * 1024 * 1024
"""What the window grows to on a fast path (TUNNEL-NOTES.md: 16 MiB for loopback speed)."""
MIN_TUNING_RTT = 0.010
"""The round trip the window's auto-tuning assumes at least: on loopback the kernel's RTT is
tens of microseconds, and the scheduling of a Python reactor, not the wire, is what a window
must cover there."""
CONNECTION_WINDOW = 64 * 1024 * 1024
MAX_FRAME_SIZE = 1024 * 1024
MAX_CONCURRENT_STREAMS = 65_536
MAX_HEADER_LIST_SIZE = 64 * 1024


def _data_frame_body_repr(self: DataFrame) -> str:
    return f"<{len(self.data)} bytes>"


def install() -> None:
    """Give hyperframe's ``DataFrame`` a body repr that states only the length.

    This one fix has to be process-wide: the frames h2 reprs are made by hyperframe's frame
    parser, which builds plain ``DataFrame``s for every connection, and replacing the class or
    the parser per connection would add Python work to every frame.  It changes nothing but the
    text of a DATA frame's repr (its length instead of its first bytes), which is all a log would
    want.  Idempotent and cheap (one comparison once installed), so every ``TunnelConnection``
    calls it: the programs need not remember to, and a process without tunnels is untouched.
    """
    if DataFrame._body_repr is not _data_frame_body_repr:
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


class LeanSettings(Settings):
    """h2's ``Settings``, each setting's values in a ``_SettingValues`` instead of a deque.

    h2 makes its deques in two places only (h2/settings.py): ``__init__`` (the defaults and the
    initial values) and ``__setitem__`` (a setting not seen before: a peer's SETTINGS frame, or
    ``update_settings``); both are covered here, and everything else h2 does with them (``[0]``,
    ``append``, ``popleft``, ``len``) a ``_SettingValues`` does too.  Other h2 users in the
    process keep h2's own ``Settings``.
    """

    def __init__(
        self, client: bool = True, initial_values: dict[SettingCodes, int] | None = None
    ) -> None:
        super().__init__(client=client, initial_values=initial_values)
        store: dict[Any, Any] = self._settings
        for key, values in store.items():
            store[key] = _SettingValues(values)

    def __setitem__(self, key: SettingCodes | int, value: int) -> None:
        super().__setitem__(key, value)
        store: dict[Any, Any] = self._settings
        if type(store[key]) is not _SettingValues:
            store[key] = _SettingValues(store[key])


def lean_settings(h2: H2Connection, local_values: dict[SettingCodes, int]) -> None:
    """Give ``h2`` lean stores for both ends' settings, ours starting at ``local_values``.

    Call it right after making the ``H2Connection``, before any frame went in or out: what h2's
    constructor derived from its own default ``Settings`` (windows, frame sizes) is the same with
    ours, apart from ``local_values`` which take effect as the connection starts.
    """
    h2.local_settings = LeanSettings(client=h2.config.client_side, initial_values=local_values)
    h2.remote_settings = LeanSettings(client=not h2.config.client_side)


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
    SettingCodes.INITIAL_WINDOW_SIZE: START_STREAM_WINDOW,
    SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
    SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
    SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
    SettingCodes.ENABLE_PUSH: 0,
}
