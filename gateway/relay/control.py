# twisted.web is only partly annotated; strict mode would flag every call into it.
# mypy: disable-error-code="no-untyped-call"
"""The relay's control socket: a small read-only JSON API for the relay's own commands.

``gateway relay sessions -c relay.toml`` reaches the *running* relay here, as the gateway's
control commands reach theirs: ``STATE_DIR/control.sock``, a Unix socket of mode 0660 in a state
directory nobody else may write (`gateway.net.unixsocket`: a crashed relay's socket is replaced,
a second relay on the same state directory is refused).  Who may read is the file system's
decision; nothing here changes anything, so there is nothing more to check.

- ``GET /api/gateways``: ``{"gateways": [GatewayReport, ...], "answer_timeout": seconds}``, the
  support desk's view (`gateway.relay.desk`), answered once every gateway has reported or timed
  out.

Anything else is answered with a JSON ``{"error", "reason"}``: 404 for an unknown path, 405 for a
method other than GET.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorUNIX
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gateway.net.unixsocket import UnixSocketService
from gateway.relay.desk import GatewayReport, SupportDesk

__all__ = ["CONTROL_SOCKET", "GATEWAYS_PATH", "ControlAPI", "RelayControlSocket"]

log = Logger()

CONTROL_SOCKET = "control.sock"
"""In the relay's state directory (the CLI finds it by the same name, without Twisted)."""
GATEWAYS_PATH = b"/api/gateways"
IDLE_TIMEOUT = 30
"""Seconds a control connection may sit idle (a command asks one thing and closes)."""


class ControlAPI(Resource):
    """The whole API in one leaf: it is a single read-only path."""

    isLeaf = True

    def __init__(self, desk: SupportDesk) -> None:
        super().__init__()
        self._desk = desk

    def render(self, request: Request) -> bytes | int:
        if request.path != GATEWAYS_PATH:
            return _error(request, 404, "not-found", "the relay's API has only GET /api/gateways")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return _error(request, 405, "method-not-allowed", "the relay's API only reads")
        answer = self._desk.gateways()
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)  # the command gave up waiting

        def send(reports: list[GatewayReport]) -> None:
            if gone:
                return
            body = {
                "gateways": [attrs.asdict(r) for r in reports],
                "answer_timeout": self._desk.timeout,
            }
            _json(request, 200)
            request.write(json.dumps(body, indent=1).encode() + b"\n")
            request.finish()

        def failed(failure: Failure) -> None:
            log.failure("relay control: GET /api/gateways", failure)
            if not gone:
                _json(request, 500)
                request.write(_body("failed", "the relay failed to list its gateways"))
                request.finish()

        answer.addCallback(send).addErrback(failed)
        return NOT_DONE_YET


def _json(request: Request, status: int) -> None:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")


def _body(error: str, reason: str) -> bytes:
    return json.dumps({"error": error, "reason": reason}).encode() + b"\n"


def _error(request: Request, status: int, error: str, reason: str) -> bytes:
    _json(request, status)
    return _body(error, reason)


class RelayControlSocket(UnixSocketService):
    """``STATE_DIR/control.sock`` serving `ControlAPI`; stopping it answers the desk's open
    questions (no timer outlives the relay)."""

    def __init__(self, reactor: IReactorUNIX, state_dir: Path, desk: SupportDesk) -> None:
        site = Site(ControlAPI(desk), timeout=IDLE_TIMEOUT)
        site.noisy = False
        super().__init__(
            reactor,
            state_dir / CONTROL_SOCKET,
            site,
            in_use="another relay is running with this state directory",
        )
        self.desk = desk

    def stopService(self) -> Deferred[None]:
        stopped = super().stopService()
        self.desk.stop()
        return stopped
