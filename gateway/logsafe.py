"""What may go into a log line from a peer, and how often the same line may be written.

Anyone who reaches a listener chooses the bytes of their headers, authorities, GOAWAY reasons and
certificate names.  Quoted as they are, they write escape sequences to an operator's terminal,
forge log lines (a newline), fill the disk (a 60 KB ``:authority``) or put a secret in clear (h2
quotes a malformed header's value in its error text: a token with a trailing space).  So:

* a peer's value reaches a log only through `peer_text`: printable ASCII kept, everything else
  ``\\xNN``, at most a short prefix, and the full length said;
* an h2 error is logged as `h2_error_summary`: its class and h2's own words, cut before the first
  quoted value, never the value;
* a line that a peer can make us repeat at will (a refused connection, a bad token) goes through
  `RateLimitedLog`: the first few per interval are written, the rest counted and summed up in one
  line ("N similar lines suppressed in the last M s").

Nothing here knows the programs: the tunnel, the relay and the edge all use it.
"""

from __future__ import annotations

import re
from typing import Any

from attrs import define, field
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel

PEER_TEXT_LIMIT = 48
"""Characters of a peer's value shown by default: enough to recognise it, too few to abuse."""

_PRINTABLE = frozenset(range(0x20, 0x7F))


def peer_text(value: bytes | str | None, limit: int = PEER_TEXT_LIMIT) -> str:
    """``value`` fit for a log line: printable ASCII as is, anything else ``\\xNN``, and cut.

    A value longer than ``limit`` characters (once escaped) ends in ``...(N bytes)``, N being its
    whole length, so a reader knows it was cut and by how much.  Text is escaped as its UTF-8
    bytes: a non-ASCII letter shows as the bytes that came, not as something that looks like
    ASCII.  An escape is never cut in half.
    """
    if value is None:
        return ""
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
    shown: list[str] = []
    used = 0
    for byte in raw:
        piece = chr(byte) if byte in _PRINTABLE else f"\\x{byte:02x}"
        if used + len(piece) > limit:
            return "".join(shown) + f"...({len(raw)} bytes)"
        shown.append(piece)
        used += len(piece)
    return "".join(shown)


def peer_address(address: object) -> str:
    """A peer's address as ``host:port`` (``[v6]:port``) for "from ..." in a log line."""
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None or port is None:
        return "an unknown address" if address is None else peer_text(str(address))
    host = peer_text(str(host), 64)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_QUOTED_CHARACTER = re.compile(r" '.'(?= )", re.DOTALL)
"""h2's "Illegal character 'X' in header ...": the character itself is the peer's."""
_QUOTED_VALUE = re.compile(r"""\s*(?:b?['"]|[{\[]).*$""", re.DOTALL)


def h2_error_summary(error: BaseException, limit: int = 120) -> str:
    """An h2 (or hpack) exception as ``Class: what h2 said``, without the value it quoted.

    h2 writes the offending header into its message (``Received header value surrounded by
    whitespace b'Bearer rsg_...'``), so the message is cut before its first quoted value, list or
    set; what is left is h2's own wording, escaped and bounded like any peer text.
    """
    text = _QUOTED_VALUE.sub("", _QUOTED_CHARACTER.sub("", str(error))).rstrip(" :.,")
    name = type(error).__name__
    return f"{name}: {peer_text(text, limit)}" if text else name


_HEADER_WORDS = ("header", "pseudo-header", ":authority", ":path", ":method")


def is_header_error(error: BaseException) -> bool:
    """Whether h2 refused a header block's content (not a frame's structure)."""
    text = str(error).lower()
    return any(word in text for word in _HEADER_WORDS)


# -- rate-limited lines ---------------------------------------------------------------------------

BURST = 20
"""Lines of one kind written per interval before the rest are only counted."""
INTERVAL = 60.0


@define
class _Window:
    started: float
    written: int = 0
    suppressed: int = 0
    level: LogLevel = LogLevel.info
    logger: Logger | None = None
    summary: IDelayedCall | None = field(default=None, repr=False)


class RateLimitedLog:
    """Writes at most ``burst`` lines of each kind per ``interval``; counts and sums up the rest.

    A kind is the line's format string (or an explicit ``kind``): never a peer's value, so the
    table stays as small as the number of call sites.  The summary is written when the interval
    of a kind that suppressed something ends, through the same logger at the same level, so it
    sits with the lines it stands for.  One per program or listener: share it between the
    connections whose lines it should bound together.
    """

    def __init__(
        self, clock: IReactorTime, *, burst: int = BURST, interval: float = INTERVAL
    ) -> None:
        self.clock = clock
        self.burst = burst
        self.interval = interval
        self._windows: dict[str, _Window] = {}
        self.suppressed_total = 0

    def info(self, logger: Logger, format: str, *, kind: str | None = None, **kw: Any) -> bool:
        return self.emit(logger, LogLevel.info, format, kind=kind, **kw)

    def warn(self, logger: Logger, format: str, *, kind: str | None = None, **kw: Any) -> bool:
        return self.emit(logger, LogLevel.warn, format, kind=kind, **kw)

    def emit(
        self, logger: Logger, level: LogLevel, format: str, *, kind: str | None = None, **kw: Any
    ) -> bool:
        """Write the line unless its kind used up its burst; True if it was written."""
        key = kind or format
        now = self.clock.seconds()
        window = self._windows.get(key)
        if window is None or (window.summary is None and now - window.started >= self.interval):
            window = self._windows[key] = _Window(started=now)
        if window.written < self.burst:
            window.written += 1
            logger.emit(level, format, **kw)
            return True
        window.suppressed += 1
        self.suppressed_total += 1
        if window.summary is None:
            window.level, window.logger = level, logger
            delay = max(0.0, window.started + self.interval - now)
            window.summary = self.clock.callLater(delay, self._sum_up, key)
        return False

    def _sum_up(self, key: str) -> None:
        window = self._windows.pop(key)
        assert window.logger is not None
        window.logger.emit(
            window.level,
            "{suppressed} similar lines suppressed in the last {seconds:g} s (like: {kind})",
            suppressed=window.suppressed,
            seconds=min(self.clock.seconds() - window.started, self.interval),
            kind=key,
        )

    def stop(self) -> None:
        """Write the pending summaries now and leave no timer behind (the program is stopping)."""
        for key, window in list(self._windows.items()):
            if window.summary is not None and window.summary.active():
                window.summary.cancel()
                self._sum_up(key)
        self._windows.clear()
