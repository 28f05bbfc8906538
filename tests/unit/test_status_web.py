"""The status listener: ``/api/status`` serves the view's JSON, ``/`` a page that escapes it."""

from __future__ import annotations

import json

from attrs import define, evolve
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.edge.status import (
    AccessReport,
    ConnectionReport,
    IStatusView,
    StatusReport,
    TunnelReport,
)
from gateway.web.status import status_root

REPORT = StatusReport(
    id="plant7-gw",
    version="1.2.3",
    tunnel=TunnelReport(
        state="up",
        since="2024-01-01T00:00:00+00:00",
        relay="relay.example:443",
        rtt_ms=1.5,
        last_error=None,
        connects=3,
    ),
    access=AccessReport(mode="unattended", targets=["hmi", "web"]),
    sessions=[],
    connections=[
        ConnectionReport(
            id="r-1",
            session=None,
            target="web",
            engineer="<script>alert('x')</script> & co",
            started="2024-01-01T00:00:05+00:00",
            bytes_to_target=10,
            bytes_from_target=20,
        )
    ],
    checks=[],
)


@implementer(IStatusView)
@define
class FixedView:
    status: StatusReport

    def report(self) -> StatusReport:
        return self.status


def get(view: IStatusView, *path: bytes) -> tuple[DummyRequest, bytes]:
    request = DummyRequest(list(path))
    resource = getChildForRequest(status_root(view), request)
    body = resource.render(request)
    assert isinstance(body, bytes)
    return request, body


class StatusResourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.view = FixedView(REPORT)

    def test_the_fake_is_a_status_view(self) -> None:
        self.assertTrue(verifyObject(IStatusView, self.view))

    def test_api_status_is_the_reports_json(self) -> None:
        request, body = get(self.view, b"api", b"status")
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"]
        )
        self.assertEqual(request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])
        report = json.loads(body)
        self.assertEqual(report, REPORT.to_json())
        self.assertEqual(
            list(report),
            [
                "id",
                "version",
                "tunnel",
                "access",
                "sessions",
                "connections",
                "checks",
                "recent_events",
            ],
        )
        self.assertEqual(
            list(report["connections"][0]),
            [
                "id",
                "session",
                "target",
                "engineer",
                "started",
                "bytes_to_target",
                "bytes_from_target",
            ],
        )
        self.assertEqual(report["access"]["requests"], [])

    def test_the_page_escapes_engineer_names(self) -> None:
        request, body = get(self.view, b"")
        page = body.decode()
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"]
        )
        self.assertNotIn("<script>", page)
        self.assertIn("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co", page)
        self.assertIn("plant7-gw", page)
        self.assertIn('<strong class="up">up</strong>', page)

    def test_the_page_says_when_nobody_is_connected(self) -> None:
        view = FixedView(evolve(REPORT, connections=[]))
        _, body = get(view, b"")
        self.assertIn(b"Nobody is connected.", body)

    def test_the_page_reads_the_view_on_every_request(self) -> None:
        view = FixedView(REPORT)
        root = status_root(view)
        view.status = evolve(REPORT, tunnel=evolve(REPORT.tunnel, state="down"))
        request = DummyRequest([b""])
        body = getChildForRequest(root, request).render(request)
        self.assertIn(b'<strong class="down">down</strong>', body)

    def test_served_over_http(self) -> None:
        """Through a real ``Site``: the routing a browser gets."""
        site = Site(status_root(self.view))
        protocol = site.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /api/status HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertEqual(json.loads(body)["id"], "plant7-gw")
        protocol.connectionLost(None)
