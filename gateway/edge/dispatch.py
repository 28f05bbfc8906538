"""Which part of the daemon answers a stream the relay opened: the forwarder or a control route."""

from __future__ import annotations

from zope.interface import implementer

from gateway.edge.control import ControlRoutes
from gateway.tunnel.connection import IStreamHandler
from gateway.tunnel.stream import TunnelStream
from gateway.wire import Refusal


@implementer(IStreamHandler)
class StreamDispatcher:
    """``CONNECT`` streams go to the forwarder, ``/v1/`` requests to the control routes."""

    def __init__(self, forwarder: IStreamHandler, control: ControlRoutes) -> None:
        self._forwarder = forwarder
        self._control = control

    def stream_requested(self, stream: TunnelStream) -> None:
        request = stream.request
        assert request is not None
        if request.method == "CONNECT":
            self._forwarder.stream_requested(stream)
        elif self._control.handles(request.method, request.path):
            self._control.handle(stream)
        else:
            stream.refuse(Refusal.BAD_REQUEST, f"method {request.method} is not supported")
