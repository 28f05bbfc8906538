"""``/api/checks`` on the daemon's JSON API: the last results (GET) and a run now (POST
``/api/checks/run``, answered when the run is done, within `RUN_TIMEOUT`).

The POST wants ``application/json`` like every action of the API (a browser sends that across
origins only after a CORS preflight, which nothing answers), so no other web page can make the
gateway dial out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gateway.checks.result import CheckResult

Run = Callable[[], "Deferred[list[CheckResult]]"]


def results_json(results: list[CheckResult], **extra: Any) -> bytes:
    body = {"ok": bool(results) and all(r.ok for r in results), **extra}
    body["checks"] = [r.to_json() for r in results]
    return json.dumps(body).encode()


def _answer(request: Request, status: int, body: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return body


class ChecksRun(Resource):
    isLeaf = True

    def __init__(self, run: Run) -> None:
        super().__init__()
        self._run = run

    def render_POST(self, request: Request) -> bytes | int:
        kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if kind != b"application/json":
            return _answer(request, 415, b'{"error": "send Content-Type: application/json"}')
        d = self._run()

        def done(results: list[CheckResult]) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(_answer(request, 200, results_json(results)))
                request.finish()

        def broken(failure: Failure) -> None:
            if not request.finished:
                request.write(_answer(request, 500, b'{"error": "the checks did not run"}'))
                request.finish()

        d.addCallbacks(done, broken)
        return NOT_DONE_YET


class ChecksAPI(Resource):
    """``/api/checks``: GET the last results; ``run`` under it."""

    def __init__(self, results: Callable[[], list[CheckResult]], run: Run) -> None:
        super().__init__()
        self._results = results
        self.putChild(b"run", ChecksRun(run))

    def render_GET(self, request: Request) -> bytes:
        return _answer(request, 200, results_json(self._results()))

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        child: Resource = super().getChild(path, request)
        return child


def checks_api(view: Any) -> Resource | None:
    """The resource for a view that can run checks (`gateway.checks.daemon.ChecksInStatus`)."""
    run = getattr(view, "run_checks", None)
    checks = getattr(view, "checks", None)
    if run is None or checks is None:
        return None
    return ChecksAPI(lambda: list(checks.results), run)
