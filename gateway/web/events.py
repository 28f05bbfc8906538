# twisted.web is only partly annotated; strict mode would flag every call into it.
# mypy: disable-error-code="no-untyped-call"
"""``GET /api/events``: the status JSON as server-sent events, for the live status page.

One timer for all readers, running only while someone reads: every `INTERVAL` seconds it builds
the status JSON once and sends it to each reader that has not seen it yet, so a change reaches
the page within half a second and nothing is sent while nothing changes (byte counters of a live
download do change: then twice a second).  A reader that got nothing for `HEARTBEAT` seconds gets
a comment line, so that the page and any proxy know the stream is alive.  At most `MAX_CLIENTS`
readers at once (a 503 beyond: the page then polls ``/api/status``); a reader that goes away is
dropped when Twisted says so (``notifyFinish``), one whose login ended is closed, and one that
does not read what it is sent (its transport paused us) is skipped until it does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from attrs import define
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from gateway.edge.status import IStatusView

__all__ = ["HEARTBEAT", "INTERVAL", "MAX_CLIENTS", "EventStream"]

log = Logger()

INTERVAL = 0.5
HEARTBEAT = 15.0
MAX_CLIENTS = 16
RETRY_MS = 2000
"""What the browser waits before reconnecting a dropped stream."""


@implementer(IPushProducer)
@define(eq=False)
class _Reader:
    """One live page; the producer of its stream, so that a page that does not read (a frozen
    tab, a stalled network) is skipped instead of piling up statuses in the gateway's memory."""

    request: Request
    allowed: Callable[[], bool]
    last_sent: float
    seen: str | None = None
    paused: bool = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.paused = True


class EventStream(Resource):
    isLeaf = True

    def __init__(
        self,
        view: IStatusView,
        clock: IReactorTime,
        *,
        allowed: Callable[[Request], Callable[[], bool]] = lambda request: lambda: True,
        max_clients: int = MAX_CLIENTS,
        interval: float = INTERVAL,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        super().__init__()
        self._view = view
        self._clock = clock
        self._allowed = allowed
        self.max_clients = max_clients
        self._interval = interval
        self._heartbeat = heartbeat
        self.readers: list[_Reader] = []
        self._loop: LoopingCall | None = None

    def render_GET(self, request: Request) -> bytes | int:
        if len(self.readers) >= self.max_clients:
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"retry-after", b"10")
            return (
                json.dumps(
                    {
                        "error": "too-many-readers",
                        "reason": f"at most {self.max_clients} live pages at once; "
                        "this one reads /api/status instead",
                    }
                ).encode()
                + b"\n"
            )
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        reader = _Reader(request, self._allowed(request), self._clock.seconds())
        self.readers.append(reader)
        request.registerProducer(reader, True)
        request.notifyFinish().addBoth(self._gone, reader)
        request.write(b"retry: %d\n\n" % RETRY_MS)
        self._send(reader, self._status())
        if self._loop is None:
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self._clock
            self._loop.start(self._interval, now=False).addErrback(
                lambda f: log.failure("status events stopped", f)
            )
        return NOT_DONE_YET

    def _gone(self, _: object, reader: _Reader) -> None:
        if reader in self.readers:
            self.readers.remove(reader)
            try:
                reader.request.unregisterProducer()
            except Exception:  # the connection is gone already
                pass
        if not self.readers and self._loop is not None:
            loop, self._loop = self._loop, None
            if loop.running:
                loop.stop()

    def _status(self) -> str:
        return json.dumps(self._view.report().to_json(), separators=(",", ":"))

    def _send(self, reader: _Reader, status: str) -> None:
        reader.seen = status
        reader.last_sent = self._clock.seconds()
        reader.request.write(b"event: status\ndata: " + status.encode() + b"\n\n")

    def _tick(self) -> None:
        try:
            status = self._status()
        except Exception:
            log.failure("the status report failed")
            return
        now = self._clock.seconds()
        for reader in list(self.readers):
            if not reader.allowed():
                self._close(reader)
            elif reader.paused:
                continue  # it has not taken what it was sent; the latest goes when it has
            elif reader.seen != status:
                self._send(reader, status)
            elif now - reader.last_sent >= self._heartbeat:
                reader.last_sent = now
                reader.request.write(b": still here\n\n")

    def _close(self, reader: _Reader) -> None:
        self._gone(None, reader)
        reader.request.write(b"event: logged-out\ndata: {}\n\n")
        reader.request.finish()

    def stop(self) -> None:
        """Close every stream (the listener stops)."""
        for reader in list(self.readers):
            self._gone(None, reader)
            try:
                reader.request.finish()
            except Exception:  # already gone
                pass

    def counts(self) -> dict[str, Any]:
        return {"readers": len(self.readers)}
