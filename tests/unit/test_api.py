# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The JSON API over the consent service: every route, every kind of failure, loopback-only acts.

The API only translates (JSON in, a call on `IConsent` with an `Actor`, JSON out), so it runs here
over `FakeConsent`, which keeps a little state the way the real service would (pending requests,
sessions, refusals) and records each call with its actor.  Requests are `DummyRequest`s with a
fake client address, or bytes through a real ``Site`` over a `StringTransport`; nothing here
sends traffic to a non-loopback address.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
from io import BytesIO
from typing import Any, cast

from attrs import evolve
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.config import AccessMode
from gateway.edge.consent import (
    Actor,
    CodeGrant,
    ConsentRefused,
    IConsent,
    PendingRequest,
    Permission,
    Session,
)
from gateway.edge.status import (
    AccessReport,
    IStatusView,
    StatusReport,
    TunnelReport,
    iso,
)
from gateway.web.api import (
    MAX_BODY,
    Forbidden,
    Identify,
    api_root,
    api_site,
    control_socket_user,
    loopback_operator,
)
from gateway.web.status import status_root

NOW = 1_700_000_000.0
ALLOWLIST = ("web", "hmi")


@implementer(IConsent)
class FakeConsent:
    """A consent service in memory: enough state for the API's answers, and every call kept."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now
        self.current = AccessMode.ATTENDED
        self.pending: list[PendingRequest] = []
        self.live: list[Session] = []
        self.decided: dict[str, str] = {}
        self.locked_until: float | None = None
        self.calls: list[tuple[str, Actor, dict[str, Any]]] = []
        self.crash = False
        self.max_minutes = 480

    def ask(self, request_id: str, engineer: str = "erin", reason: str = "ticket 4711") -> None:
        self.pending.append(
            PendingRequest(request_id, engineer, reason, ALLOWLIST, self.now - 180, self.now + 120)
        )

    def open(self, session_id: str, engineer: str = "erin", **changes: Any) -> Session:
        session = Session(
            id=session_id,
            engineer=engineer,
            reason="ticket 4711",
            targets=ALLOWLIST,
            permission=Permission.FULL,
            started=self.now - 300,
            expires=self.now + 3300,
            approved_by="alice (control socket)",
        )
        session = evolve(session, **changes)
        self.live.append(session)
        return session

    def _record(self, name: str, by: Actor, **details: Any) -> None:
        if self.crash:
            raise RuntimeError("the fake broke")
        self.calls.append((name, by, details))

    def _grant(self, minutes: int | None, targets: tuple[str, ...] | None) -> tuple[str, ...]:
        if minutes is not None and minutes > self.max_minutes:
            raise ConsentRefused(
                "bad-minutes", f"a session lasts 1 to {self.max_minutes} minutes, not {minutes}"
            )
        for target in targets or ():
            if target not in ALLOWLIST:
                raise ConsentRefused(
                    "target-not-allowed", f"target {target!r} is not in this gateway's allowlist"
                )
        return targets or ALLOWLIST

    def mode(self) -> AccessMode:
        return self.current

    def set_mode(self, mode: AccessMode, by: Actor) -> AccessMode:
        self._record("set_mode", by, mode=mode)
        old, self.current = self.current, mode
        if mode is AccessMode.DISABLED:
            self.live.clear()
        return old

    def requests(self) -> list[PendingRequest]:
        return list(self.pending)

    def _take(self, request_id: str, outcome: str) -> PendingRequest:
        if request_id in self.decided:
            raise ConsentRefused(
                "already-decided", f"request {request_id} was already {self.decided[request_id]}"
            )
        for pending in self.pending:
            if pending.id == request_id:
                self.pending.remove(pending)
                self.decided[request_id] = outcome
                return pending
        raise ConsentRefused(
            "unknown-request", f"no request {request_id!r} on this gateway (see `gateway requests`)"
        )

    def approve(
        self,
        request_id: str,
        by: Actor,
        minutes: int | None = None,
        targets: tuple[str, ...] | None = None,
        permission: Permission = Permission.FULL,
    ) -> Session:
        self._record(
            "approve", by, id=request_id, minutes=minutes, targets=targets, permission=permission
        )
        granted = self._grant(minutes, targets)
        pending = self._take(request_id, "approved")
        session = Session(
            id="s-" + request_id[2:],
            engineer=pending.engineer,
            reason=pending.reason,
            targets=granted,
            permission=permission,
            started=self.now,
            expires=self.now + 60 * (minutes or 60),
            approved_by=str(by),
        )
        self.live.append(session)
        return session

    def deny(self, request_id: str, by: Actor, reason: str = "") -> None:
        self._record("deny", by, id=request_id, reason=reason)
        self._take(request_id, "denied")

    def create_code(
        self,
        by: Actor,
        minutes: int | None = None,
        targets: tuple[str, ...] | None = None,
        permission: Permission = Permission.FULL,
    ) -> CodeGrant:
        self._record("create_code", by, minutes=minutes, targets=targets, permission=permission)
        granted = self._grant(minutes, targets)
        return CodeGrant("042917", granted, permission, minutes or 60, self.now + 600)

    def code_entry_locked_until(self) -> float | None:
        return self.locked_until

    def sessions(self) -> list[Session]:
        return list(self.live)

    def end(self, session_id: str, by: Actor, reason: str = "") -> Session:
        self._record("end", by, id=session_id, reason=reason)
        for session in self.live:
            if session.id == session_id:
                self.live.remove(session)
                return session
        raise ConsentRefused(
            "unknown-session",
            f"no live session {session_id!r} on this gateway (see `gateway sessions`)",
        )

    def end_all(self, by: Actor, reason: str = "") -> list[Session]:
        self._record("end_all", by, reason=reason)
        ended, self.live = self.live, []
        return ended

    def set_permission(
        self, session_id: str, permission: Permission, by: Actor, targets: tuple[str, ...] = ()
    ) -> Session:
        self._record("set_permission", by, id=session_id, permission=permission, targets=targets)
        for index, session in enumerate(self.live):
            if session.id == session_id:
                if targets:
                    per = dict(session.per_target)
                    per.update({t: permission for t in targets})
                    self.live[index] = evolve(session, per_target=tuple(sorted(per.items())))
                else:
                    self.live[index] = evolve(session, permission=permission, per_target=())
                return self.live[index]
        raise ConsentRefused(
            "unknown-session",
            f"no live session {session_id!r} on this gateway (see `gateway sessions`)",
        )

    def when_changed(self) -> Deferred[None]:
        return Deferred()


REPORT = StatusReport(
    id="plant7-gw",
    version="1.2.3",
    tunnel=TunnelReport("up", iso(NOW), "relay.example:443", 1.5, None, 1),
    access=AccessReport(mode="attended", targets=list(ALLOWLIST)),
    sessions=[],
    connections=[],
    checks=[],
)


@implementer(IStatusView)
class FixedView:
    def __init__(self, report: StatusReport = REPORT) -> None:
        self.current = report

    def report(self) -> StatusReport:
        return self.current


def tree(consent: IConsent, identify: Identify = loopback_operator) -> Resource:
    view = FixedView()
    return status_root(view, api_root(view, consent, identify))


class Answer:
    def __init__(self, request: DummyRequest, body: bytes) -> None:
        self.request = request
        self.status = request.responseCode or 200
        self.json: Any = json.loads(body)

    def header(self, name: bytes) -> list[bytes] | None:
        found = self.request.responseHeaders.getRawHeaders(name)
        return None if found is None else list(found)


def call(
    root: Resource,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    client: IPv4Address | IPv6Address | None = None,
    headers: dict[bytes, bytes] | None = None,
) -> Answer:
    request = DummyRequest(path.lstrip("/").encode().split(b"/"))
    request.method = method.encode()
    request.client = client or IPv4Address("TCP", "127.0.0.1", 40000)
    content = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    request.content = BytesIO(content)  # type: ignore[attr-defined]
    if method == "POST":
        request.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    result = getChildForRequest(root, request).render(request)
    assert isinstance(result, bytes)
    return Answer(request, result)


OPERATOR = Actor("operator", "status page", "127.0.0.1")


class ApiTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.consent = FakeConsent()
        self.root = tree(self.consent)

    def assertError(self, answer: Answer, status: int, error: str) -> str:
        """The answer is ``{"error": error, "reason": ...}`` with ``status``; the reason."""
        self.assertEqual((answer.status, answer.json.get("error")), (status, error), answer.json)
        self.assertEqual(sorted(answer.json), ["error", "reason"])
        reason: str = answer.json["reason"]
        self.assertTrue(reason)
        return reason


class ReadTests(ApiTestCase):
    def test_the_fake_is_a_consent_service(self) -> None:
        self.assertTrue(verifyObject(IConsent, self.consent))
        self.assertTrue(verifyObject(IStatusView, FixedView()))

    def test_status_and_the_page_are_still_served(self) -> None:
        answer = call(self.root, "GET", "/api/status")
        self.assertEqual(answer.json, REPORT.to_json())
        request = DummyRequest([b""])
        page = getChildForRequest(self.root, request).render(request)
        self.assertIn(b"plant7-gw", page)

    def test_access_shows_the_mode_and_any_code_lockout(self) -> None:
        answer = call(self.root, "GET", "/api/access")
        self.assertEqual(answer.json, {"mode": "attended", "codes_locked_until": None})
        self.assertEqual(answer.header(b"content-type"), [b"application/json"])
        self.assertEqual(answer.header(b"cache-control"), [b"no-store"])
        self.consent.locked_until = NOW + 600
        answer = call(self.root, "GET", "/api/access")
        self.assertEqual(answer.json["codes_locked_until"], iso(NOW + 600))

    def test_requests_are_listed_as_in_the_status_json(self) -> None:
        self.assertEqual(call(self.root, "GET", "/api/requests").json, [])
        self.consent.ask("r-1a2b3c")
        [listed] = call(self.root, "GET", "/api/requests/").json
        self.assertEqual(
            listed,
            {
                "id": "r-1a2b3c",
                "engineer": "erin",
                "reason": "ticket 4711",
                "targets": ["web", "hmi"],
                "asked": iso(NOW - 180),
                "expires": iso(NOW + 120),
            },
        )

    def test_sessions_are_listed_with_their_connections(self) -> None:
        self.consent.open("s-1", connections=("c-1", "c-2"))
        self.consent.open("s-2", engineer="bob", expires=None, implicit=True)
        first, second = call(self.root, "GET", "/api/sessions").json
        self.assertEqual(
            first,
            {
                "id": "s-1",
                "engineer": "erin",
                "reason": "ticket 4711",
                "targets": ["web", "hmi"],
                "permission": "full",
                "target_permissions": {"web": "full", "hmi": "full"},
                "started": iso(NOW - 300),
                "expires": iso(NOW + 3300),
                "approved_by": "alice (control socket)",
                "connections": ["c-1", "c-2"],
                "implicit": False,
            },
        )
        self.assertEqual((second["expires"], second["implicit"]), (None, True))

    def test_reads_call_no_action(self) -> None:
        for path in ("access", "requests", "sessions", "status"):
            call(self.root, "GET", f"/api/{path}", client=IPv4Address("TCP", "10.0.0.5", 1))
            call(self.root, "HEAD", f"/api/{path}")
        self.assertEqual(self.consent.calls, [])


class ActionTests(ApiTestCase):
    def test_setting_the_mode_says_what_was_ended(self) -> None:
        self.consent.open("s-1")
        self.consent.open("s-2")
        answer = call(self.root, "POST", "/api/access", {"mode": "disabled"})
        self.assertEqual(
            answer.json,
            {"mode": "disabled", "previous": "attended", "sessions_ended": ["s-1", "s-2"]},
        )
        self.assertEqual(
            self.consent.calls, [("set_mode", OPERATOR, {"mode": AccessMode.DISABLED})]
        )

    def test_approving_passes_minutes_targets_and_permission(self) -> None:
        self.consent.ask("r-1a2b3c")
        body = {"minutes": 30, "targets": ["web"], "permission": "view"}
        answer = call(self.root, "POST", "/api/requests/r-1a2b3c/approve", body)
        self.assertEqual(answer.status, 200)
        self.assertEqual(
            (answer.json["id"], answer.json["targets"], answer.json["permission"]),
            ("s-1a2b3c", ["web"], "view"),
        )
        self.assertEqual(answer.json["expires"], iso(NOW + 1800))
        self.assertEqual(
            self.consent.calls,
            [
                (
                    "approve",
                    OPERATOR,
                    {
                        "id": "r-1a2b3c",
                        "minutes": 30,
                        "targets": ("web",),
                        "permission": Permission.VIEW,
                    },
                )
            ],
        )

    def test_approving_with_no_body_takes_the_defaults(self) -> None:
        self.consent.ask("r-1")
        answer = call(self.root, "POST", "/api/requests/r-1/approve")
        self.assertEqual(answer.status, 200)
        [(_, _, details)] = self.consent.calls
        self.assertEqual(
            details, {"id": "r-1", "minutes": None, "targets": None, "permission": Permission.FULL}
        )

    def test_denying_tells_whom_and_why(self) -> None:
        self.consent.ask("r-1")
        answer = call(self.root, "POST", "/api/requests/r-1/deny", {"reason": " not now "})
        self.assertEqual(answer.json, {"id": "r-1", "engineer": "erin", "reason": "not now"})
        self.assertEqual(
            self.consent.calls, [("deny", OPERATOR, {"id": "r-1", "reason": "not now"})]
        )

    def test_a_code_is_shown_with_what_it_opens(self) -> None:
        answer = call(self.root, "POST", "/api/codes", {"minutes": 20, "targets": ["hmi"]})
        self.assertEqual(
            answer.json,
            {
                "code": "042917",
                "expires": iso(NOW + 600),
                "targets": ["hmi"],
                "permission": "full",
                "minutes": 20,
            },
        )

    def test_ending_one_session_and_all(self) -> None:
        self.consent.open("s-1")
        self.consent.open("s-2", engineer="bob")
        answer = call(self.root, "POST", "/api/sessions/s-1/end", {"reason": "shift change"})
        self.assertEqual((answer.json["id"], answer.json["engineer"]), ("s-1", "erin"))
        answer = call(self.root, "POST", "/api/sessions/end-all", {})
        self.assertEqual([s["id"] for s in answer.json], ["s-2"])
        self.assertEqual(
            [(name, details) for name, _, details in self.consent.calls],
            [("end", {"id": "s-1", "reason": "shift change"}), ("end_all", {"reason": ""})],
        )


class PermissionRouteTests(ApiTestCase):
    def test_a_live_session_is_switched_between_view_and_full(self) -> None:
        self.consent.open("s-1", permission=Permission.VIEW)
        answer = call(self.root, "POST", "/api/sessions/s-1/permission", {"permission": "full"})
        self.assertEqual(answer.status, 200)
        self.assertEqual(
            (answer.json["id"], answer.json["permission"], answer.json["previous"]),
            ("s-1", "full", "view"),
        )
        answer = call(self.root, "POST", "/api/sessions/s-1/permission", {"permission": "view"})
        self.assertEqual(answer.json["permission"], "view")
        self.assertEqual(
            [(name, details) for name, _, details in self.consent.calls],
            [
                ("set_permission", {"id": "s-1", "permission": Permission.FULL, "targets": ()}),
                ("set_permission", {"id": "s-1", "permission": Permission.VIEW, "targets": ()}),
            ],
        )

    def test_one_target_of_a_session_is_switched_on_its_own(self) -> None:
        self.consent.open("s-1")
        body = {"permission": "view", "targets": ["hmi"]}
        answer = call(self.root, "POST", "/api/sessions/s-1/permission", body)
        self.assertEqual(answer.status, 200)
        [(_, _, details)] = self.consent.calls
        self.assertEqual(details["targets"], ("hmi",))

    def test_a_missing_or_bad_permission_is_400_and_an_unknown_session_404(self) -> None:
        self.consent.open("s-1")
        self.assertError(
            call(self.root, "POST", "/api/sessions/s-1/permission", {}), 400, "bad-value"
        )
        self.assertError(
            call(self.root, "POST", "/api/sessions/s-1/permission", {"permission": "admin"}),
            400,
            "bad-value",
        )
        self.assertError(
            call(self.root, "POST", "/api/sessions/s-9/permission", {"permission": "view"}),
            404,
            "unknown-session",
        )
        self.assertEqual(self.consent.calls[-1][0], "set_permission")


class RefusalTests(ApiTestCase):
    def test_an_unknown_request_or_session_is_404_with_the_reason(self) -> None:
        reason = self.assertError(
            call(self.root, "POST", "/api/requests/r-9/approve"), 404, "unknown-request"
        )
        self.assertIn("r-9", reason)
        self.assertError(call(self.root, "POST", "/api/requests/r-9/deny"), 404, "unknown-request")
        self.assertError(call(self.root, "POST", "/api/sessions/s-9/end"), 404, "unknown-session")

    def test_a_second_approval_is_refused_by_the_service(self) -> None:
        """Two staff approving at once: the service decides, the second sees its refusal."""
        self.consent.ask("r-1")
        self.assertEqual(call(self.root, "POST", "/api/requests/r-1/approve").status, 200)
        reason = self.assertError(
            call(self.root, "POST", "/api/requests/r-1/approve"), 409, "already-decided"
        )
        self.assertEqual(reason, "request r-1 was already approved")
        self.assertEqual(len(self.consent.live), 1)

    def test_a_target_off_the_allowlist_and_too_many_minutes_are_409(self) -> None:
        self.consent.ask("r-1")
        url = "/api/requests/r-1/approve"
        self.assertError(
            call(self.root, "POST", url, {"targets": ["plc"]}), 409, "target-not-allowed"
        )
        self.assertError(call(self.root, "POST", url, {"minutes": 481}), 409, "bad-minutes")
        self.assertEqual([r.id for r in self.consent.pending], ["r-1"], "nothing was lost")

    def test_bad_json_is_400(self) -> None:
        for raw in (b"{", b"[1, 2]", b'"mode"', b'{"minutes": NaN}', b"\xff\xfe"):
            self.assertError(call(self.root, "POST", "/api/codes", raw=raw), 400, "bad-json")
        self.assertEqual(self.consent.calls, [])

    def test_unknown_fields_are_400_naming_them(self) -> None:
        answer = call(self.root, "POST", "/api/access", {"mode": "disabled", "force": True})
        reason = self.assertError(answer, 400, "unknown-field")
        self.assertIn("'force'", reason)
        self.assertEqual(self.consent.current, AccessMode.ATTENDED)

    def test_wrong_types_and_values_are_400(self) -> None:
        self.consent.ask("r-1")
        url = "/api/requests/r-1/approve"
        bodies: tuple[dict[str, Any], ...] = (
            {"minutes": "30"},
            {"minutes": 0},
            {"minutes": -5},
            {"minutes": True},
            {"minutes": 1.5},
            {"targets": "web"},
            {"targets": []},
            {"targets": [1]},
            {"permission": "root"},
        )
        for body in bodies:
            self.assertError(call(self.root, "POST", url, body), 400, "bad-value")
        for body in ({"mode": "off"}, {"mode": 1}, {}):
            self.assertError(call(self.root, "POST", "/api/access", body), 400, "bad-value")
        for reason in (5, "two\nlines", "x" * 301):
            answer = call(self.root, "POST", "/api/requests/r-1/deny", {"reason": reason})
            self.assertError(answer, 400, "bad-value")
        self.assertEqual(self.consent.calls, [])
        self.assertEqual([r.id for r in self.consent.pending], ["r-1"])

    def test_an_id_with_odd_characters_is_400(self) -> None:
        for ident in ("r 1", "r-1;rm", "..", "-r", "r" * 65):
            answer = call(self.root, "POST", f"/api/sessions/{ident}/end")
            self.assertError(answer, 400, "bad-id")
        self.assertEqual(self.consent.calls, [])

    def test_a_post_must_be_json(self) -> None:
        answer = call(self.root, "POST", "/api/codes", {}, headers={b"content-type": b"text/plain"})
        self.assertError(answer, 415, "not-json")
        answer = call(
            self.root,
            "POST",
            "/api/codes",
            {},
            headers={b"content-type": b"application/json; charset=utf-8"},
        )
        self.assertEqual(answer.status, 200)

    def test_a_big_body_is_413(self) -> None:
        body = {"reason": "x" * MAX_BODY}
        self.assertError(call(self.root, "POST", "/api/sessions/end-all", body), 413, "too-large")
        answer = call(
            self.root,
            "POST",
            "/api/sessions/end-all",
            {},
            headers={b"content-length": str(MAX_BODY + 1).encode()},
        )
        self.assertError(answer, 413, "too-large")
        self.assertEqual(self.consent.calls, [])

    def test_unknown_paths_are_404_and_wrong_methods_405(self) -> None:
        self.assertError(call(self.root, "GET", "/api/nothing"), 404, "not-found")
        self.assertError(call(self.root, "GET", "/api/requests/r-1"), 404, "not-found")
        self.assertError(call(self.root, "GET", "/api/"), 404, "not-found")
        answer = call(self.root, "GET", "/api/requests/r-1/approve")
        self.assertError(answer, 405, "method-not-allowed")
        self.assertEqual(answer.header(b"allow"), [b"POST"])
        answer = call(self.root, "DELETE", "/api/access")
        self.assertError(answer, 405, "method-not-allowed")
        self.assertEqual(answer.header(b"allow"), [b"GET, POST"])

    def test_a_failing_service_is_500_in_json_and_logged(self) -> None:
        self.consent.crash = True
        answer = call(self.root, "POST", "/api/sessions/end-all")
        self.assertError(answer, 500, "internal")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


def peer(host: str) -> IPv4Address | IPv6Address:
    return IPv6Address("TCP", host, 40000) if ":" in host else IPv4Address("TCP", host, 40000)


class LoopbackOnlyTests(ApiTestCase):
    """The status listener: anyone may read, only this machine may act (until the page's login)."""

    def test_an_action_from_another_machine_is_403_and_never_reaches_the_service(self) -> None:
        self.consent.ask("r-1")
        for host in ("10.0.0.5", "192.168.10.7", "fe80::1", "::ffff:10.0.0.5"):
            answer = call(self.root, "POST", "/api/requests/r-1/approve", client=peer(host))
            reason = self.assertError(answer, 403, "forbidden")
            self.assertIn("loopback", reason)
        answer = call(self.root, "POST", "/api/access", raw=b"{", client=peer("10.0.0.5"))
        self.assertError(answer, 403, "forbidden")  # a stranger's body is not even parsed
        self.assertEqual(self.consent.calls, [])
        self.assertEqual(
            call(self.root, "GET", "/api/requests", client=peer("10.0.0.5")).status, 200
        )

    def test_loopback_addresses_may_act_and_are_named(self) -> None:
        for host in ("127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"):
            answer = call(self.root, "POST", "/api/codes", client=peer(host))
            self.assertEqual(answer.status, 200, answer.json)
        actors = [by for _, by, _ in self.consent.calls]
        self.assertEqual(actors[0], OPERATOR)
        self.assertEqual(str(actors[2]), "status page (::1)")

    def test_a_page_from_elsewhere_may_not_act_through_a_local_browser(self) -> None:
        for headers in (
            {b"host": b"evil.example:8081"},
            {b"origin": b"http://evil.example"},
            {b"host": b"127.0.0.1:8081", b"origin": b"http://10.0.0.5:8081"},
        ):
            answer = call(self.root, "POST", "/api/codes", headers=headers)
            self.assertError(answer, 403, "forbidden")
        for headers in (
            {b"host": b"127.0.0.1:8081", b"origin": b"http://127.0.0.1:8081"},
            {b"host": b"localhost:8081"},
            {b"host": b"[::1]:8081", b"origin": b"http://[::1]:8081"},
        ):
            self.assertEqual(call(self.root, "POST", "/api/codes", headers=headers).status, 200)

    def test_the_control_socket_names_the_unix_user(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX)
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)

        class Transport:
            def getHandle(self) -> socket.socket:
                return ours

        class Channel:
            transport = Transport()

        request = DummyRequest([])
        request.channel = Channel()  # type: ignore[attr-defined]
        actor = control_socket_user(cast(Request, request))
        self.assertEqual(
            actor, Actor("operator", pwd.getpwuid(os.getuid()).pw_name, "control socket")
        )
        request.channel = None  # type: ignore[attr-defined]
        self.assertRaises(Forbidden, control_socket_user, request)

    def test_the_control_socket_tree_lets_its_users_act(self) -> None:
        tester = Actor("operator", "alice", "control socket")
        root = tree(self.consent, identify=lambda request: tester)
        answer = call(root, "POST", "/api/access", {"mode": "unattended"}, client=peer("10.0.0.5"))
        self.assertEqual(answer.status, 200)
        self.assertEqual(self.consent.calls[0][1], tester)


class OverHTTPTests(SynchronousTestCase):
    """Through a real ``Site``: routing, the body bound before the body, the client's address."""

    def setUp(self) -> None:
        self.consent = FakeConsent()
        self.site = api_site(tree(self.consent))

    def send(self, data: bytes, host: str = "127.0.0.1") -> StringTransport:
        protocol = self.site.buildProtocol(None)
        transport = StringTransport(peerAddress=peer(host))
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        self.addCleanup(protocol.connectionLost, None)
        return transport

    def post(self, path: str, body: bytes, host: str = "127.0.0.1") -> StringTransport:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        return self.send(head.encode() + body, host)

    def answer(self, transport: StringTransport) -> tuple[bytes, Any]:
        head, _, body = transport.value().partition(b"\r\n\r\n")
        return head.split(b"\r\n")[0], json.loads(body)

    def test_a_post_from_loopback_acts(self) -> None:
        status, body = self.answer(self.post("/api/access", b'{"mode": "disabled"}'))
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(body["mode"], "disabled")

    def test_a_post_from_another_address_is_403(self) -> None:
        status, body = self.answer(self.post("/api/access", b'{"mode": "disabled"}', "10.0.0.5"))
        self.assertEqual(status, b"HTTP/1.1 403 Forbidden")
        self.assertEqual(body["error"], "forbidden")
        self.assertEqual(self.consent.current, AccessMode.ATTENDED)

    def test_a_declared_big_body_is_refused_before_it_arrives(self) -> None:
        head = (
            b"POST /api/codes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000\r\n\r\n{"
        )
        transport = self.send(head)
        status, body = self.answer(transport)
        self.assertEqual(status, b"HTTP/1.1 413 Content Too Large")
        self.assertEqual(body["error"], "too-large")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.consent.calls, [])

    def test_a_chunked_body_is_refused_once_it_grows_too_big(self) -> None:
        chunk = b"%x\r\n%s\r\n" % (MAX_BODY, b" " * MAX_BODY)
        head = (
            b"POST /api/codes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        transport = self.send(head + chunk + chunk + b"0\r\n\r\n")
        status, _ = self.answer(transport)
        self.assertEqual(status, b"HTTP/1.1 413 Content Too Large")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1, "answered once")
        self.assertEqual(self.consent.calls, [])

    def test_a_body_within_the_bound_is_taken(self) -> None:
        body = json.dumps({"reason": "x" * 300}).encode()
        status, _ = self.answer(self.post("/api/sessions/end-all", body))
        self.assertEqual(status, b"HTTP/1.1 200 OK")
