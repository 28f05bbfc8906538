"""The plant staff's JSON API over the consent service: one resource tree, two listeners.

The same tree answers on the status listener (TCP, for the status page) and on the daemon's
control socket (a Unix socket, for the control CLI); what differs is how the caller is named
(`Identify`): on the socket the peer's Unix user (``SO_PEERCRED``), on the status listener its
address, and there only loopback may act until the page has a login.  GETs read, POSTs act; every
action passes an `Actor` to `IConsent`, which decides, audits and raises `ConsentRefused` for what
cannot be done.  This module only translates: JSON in (bounded, typed, no unknown fields), JSON
out, one status code per kind of failure (see the README's API table):

- 400 the body or an id is malformed; 403 the caller may not act; 404 no such path, request or
  session; 405 wrong method; 409 the service refused; 413 the body is too big; 415 not JSON.

Requiring ``application/json`` on POST is also what keeps other web pages out: a browser sends
that content type across origins only after a CORS preflight, which nothing here answers.
"""

from __future__ import annotations

import ipaddress
import json
import pwd
import re
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

from attrs import frozen
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from gateway.checks.api import checks_api
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
from gateway.edge.status import IStatusView, iso
from gateway.web.status import StatusJSON

__all__ = [
    "CONTROL_SOCKET",
    "MAX_BODY",
    "Forbidden",
    "Identify",
    "api_root",
    "api_site",
    "control_socket_user",
    "loopback_operator",
]

log = Logger()

CONTROL_SOCKET = "control.sock"
"""Where in the state directory the daemon serves this API to the control commands (they find
it by the same name, `gateway.cli.control.CONTROL_SOCKET`, without importing Twisted)."""
MAX_BODY = 16 * 1024
"""Bytes of a request body; anything bigger is refused with 413 before it is read."""
MAX_REASON = 300
"""Characters of a reason (the engineer sees it in one line)."""
MAX_TARGETS = 64
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""What a request or session id may look like; anything else is refused before the service."""


class Forbidden(Exception):
    """The caller may not act here (403); the message says why and what to do instead."""


Identify = Callable[[Request], Actor]
"""Who is asking for an action; raises `Forbidden` when that caller may not act."""


class ApiError(Exception):
    """A request the API itself refuses: its status, machine token and reason."""

    def __init__(
        self, status: int, error: str, reason: str, headers: Mapping[bytes, bytes] | None = None
    ) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason
        self.headers = dict(headers or {})


# -- who is asking ------------------------------------------------------------------------------

LOOPBACK_ONLY = (
    "actions on the status listener are accepted only from this machine (loopback) until the "
    "status page has a login; on the gateway, use the control commands (gateway access, approve, "
    "deny, code, end -c gateway.toml)"
)


def loopback_operator(request: Request) -> Actor:
    """The status listener's rule: plant staff at the gateway itself, by address.

    Loopback only (127.0.0.0/8, ::1).  The ``Host`` and ``Origin`` headers, when given, must name
    loopback too, so that a web page elsewhere cannot act through a browser on this machine (a
    DNS name rebound to 127.0.0.1 still arrives with its own name as ``Host``).
    """
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    if not isinstance(host, str) or not _is_loopback(host):
        raise Forbidden(LOOPBACK_ONLY)
    named = _header(request, b"host")
    if named is not None and not _is_loopback(_host_of(named)):
        raise Forbidden(f"{LOOPBACK_ONLY} (Host {named!r} is not a loopback name)")
    origin = _header(request, b"origin")
    if origin is not None and not _is_loopback(urlsplit(origin).hostname or ""):
        raise Forbidden(f"{LOOPBACK_ONLY} (a page from {origin!r} may not act here)")
    return Actor("operator", "status page", host)


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


def _host_of(header: str) -> str:
    """``Host: [::1]:8081`` -> ``::1``; ``localhost:8081`` -> ``localhost``."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def control_socket_user(request: Request) -> Actor:
    """The control socket's rule: whoever the kernel says connected (``SO_PEERCRED``).

    The socket's file mode already decided that they may; this names them for the audit trail.
    """
    try:
        handle = request.channel.transport.getHandle()  # type: ignore[union-attr]
        creds = handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
    except (AttributeError, OSError, struct.error):
        raise Forbidden("cannot tell which user is asking on the control socket") from None
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    return Actor("operator", name, "control socket")


# -- bodies in ----------------------------------------------------------------------------------


def read_body(request: Request) -> dict[str, Any]:
    """The POST body as a JSON object (empty body: ``{}``), or an `ApiError`."""
    kind = (_header(request, b"content-type") or "").partition(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, "not-json", "send the body as application/json")
    length = _header(request, b"content-length")
    if length is not None and length.strip().isdigit() and int(length) > MAX_BODY:
        raise ApiError(413, "too-large", f"the body is limited to {MAX_BODY} bytes")
    content = getattr(request, "content", None)
    raw = b"" if content is None else content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, "too-large", f"the body is limited to {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, "bad-json", f"the body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad-json", "the body must be a JSON object")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number here")


class Fields:
    """A JSON object's fields, each read once with its type; unknown ones refused."""

    def __init__(self, body: dict[str, Any], allowed: Iterable[str]) -> None:
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            names = ", ".join(sorted(allowed)) or "none"
            raise ApiError(400, "unknown-field", f"unknown field {unknown[0]!r} (known: {names})")
        self._body = body

    def _bad(self, name: str, problem: str) -> ApiError:
        return ApiError(400, "bad-value", f"{name}: {problem}")

    def mode(self) -> AccessMode:
        value = self._body.get("mode")
        choices = ", ".join(m.value for m in AccessMode)
        if not isinstance(value, str):
            raise self._bad("mode", f"give one of {choices}")
        try:
            return AccessMode(value)
        except ValueError:
            raise self._bad("mode", f"{value!r} is not one of {choices}") from None

    def minutes(self) -> int | None:
        value = self._body.get("minutes")
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise self._bad("minutes", f"must be a whole number of minutes from 1, not {value!r}")
        return value

    def targets(self) -> tuple[str, ...] | None:
        value = self._body.get("targets")
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or not value
            or len(value) > MAX_TARGETS
            or not all(isinstance(t, str) and 0 < len(t) <= 64 for t in value)
        ):
            raise self._bad("targets", "must be a list of target names (leave it out for all)")
        return tuple(dict.fromkeys(value))

    def permission(self) -> Permission:
        value = self._body.get("permission", Permission.FULL.value)
        try:
            return Permission(value)
        except ValueError:
            choices = ", ".join(p.value for p in Permission)
            raise self._bad("permission", f"{value!r} is not one of {choices}") from None

    def reason(self) -> str:
        value = self._body.get("reason", "")
        if not isinstance(value, str):
            raise self._bad("reason", "must be text")
        if len(value) > MAX_REASON or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise self._bad("reason", f"must be one line of at most {MAX_REASON} characters")
        return value.strip()


# -- answers out --------------------------------------------------------------------------------


def _when(seconds: float | None) -> str | None:
    return None if seconds is None else iso(seconds)


def request_json(pending: PendingRequest) -> dict[str, Any]:
    """As in the status JSON's ``access.requests``."""
    return {
        "id": pending.id,
        "engineer": pending.engineer,
        "reason": pending.reason,
        "targets": list(pending.targets),
        "asked": iso(pending.asked),
        "expires": iso(pending.expires),
    }


def session_json(session: Session) -> dict[str, Any]:
    """As in the status JSON's ``sessions``, plus ``implicit`` (unattended mode's sessions)."""
    return {
        "id": session.id,
        "engineer": session.engineer,
        "reason": session.reason,
        "targets": list(session.targets),
        "permission": session.permission.value,
        "target_permissions": {t: session.permission_on(t).value for t in session.targets},
        "started": iso(session.started),
        "expires": _when(session.expires),
        "approved_by": session.approved_by,
        "connections": list(session.connections),
        "implicit": session.implicit,
    }


def code_json(grant: CodeGrant) -> dict[str, Any]:
    return {
        "code": grant.code,
        "expires": iso(grant.expires),
        "targets": list(grant.targets),
        "permission": grant.permission.value,
        "minutes": grant.minutes,
    }


# -- the routes ---------------------------------------------------------------------------------

Answer = tuple[int, Any]
Handler = Callable[[str, dict[str, Any], Actor], Answer]
"""(id from the path or "", body, actor) -> (status, JSON)."""
Reader = Callable[[], Any]


@frozen
class Route:
    method: str
    path: tuple[str, ...]
    """Segments after ``/api/``; ``{id}`` stands for a request or session id."""
    act: Handler | None = None
    read: Reader | None = None

    def match(self, segments: list[str]) -> str | None:
        """The id in ``segments`` ("" if the route has none), or None if they are not ours."""
        if len(segments) != len(self.path):
            return None
        found = ""
        for want, got in zip(self.path, segments, strict=True):
            if want == "{id}":
                found = got
            elif want != got:
                return None
        return found


class ConsentAPI(Resource):
    """Everything under ``/api/`` but ``status``: a route table over `IConsent`."""

    isLeaf = True

    def __init__(self, consent: IConsent, identify: Identify) -> None:
        super().__init__()
        self._consent = consent
        self._identify = identify
        self.routes = [
            Route("GET", ("access",), read=self.access),
            Route("POST", ("access",), act=self.set_access),
            Route("GET", ("requests",), read=self.requests),
            Route("POST", ("requests", "{id}", "approve"), act=self.approve),
            Route("POST", ("requests", "{id}", "deny"), act=self.deny),
            Route("POST", ("codes",), act=self.create_code),
            Route("GET", ("sessions",), read=self.sessions),
            Route("POST", ("sessions", "end-all"), act=self.end_all),
            Route("POST", ("sessions", "{id}", "end"), act=self.end),
            Route("POST", ("sessions", "{id}", "permission"), act=self.set_permission),
        ]

    def render(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        try:
            status, answer = self._answer(request)
        except ApiError as e:
            for name, value in e.headers.items():
                request.setHeader(name, value)
            status, answer = e.status, {"error": e.error, "reason": e.reason}
        except Forbidden as e:
            status, answer = 403, {"error": "forbidden", "reason": str(e)}
        except ConsentRefused as e:
            status = 404 if e.kind.startswith("unknown-") else 409
            answer = {"error": e.kind, "reason": e.reason}
        except Exception:
            path = b"/".join([*(request.prepath or []), *(request.postpath or [])])
            where = path.decode("utf-8", "replace")
            log.failure("API {method} /{path} failed", method=request.method, path=where)
            status = 500
            answer = {"error": "internal", "reason": "the gateway failed; its log says why"}
        request.setResponseCode(status)
        return json.dumps(answer, indent=2).encode() + b"\n"

    def _answer(self, request: Request) -> Answer:
        method = (request.method or b"GET").decode("ascii", "replace").upper()
        method = "GET" if method == "HEAD" else method
        here = [*(request.prepath or [])[-1:], *(request.postpath or [])]
        segments = [s.decode("utf-8", "replace") for s in here]
        if segments and segments[-1] == "":
            segments.pop()  # /api/requests/ is /api/requests
        matches = [(route, route.match(segments)) for route in self.routes]
        found = [(route, ident) for route, ident in matches if ident is not None]
        if not found:
            raise ApiError(404, "not-found", f"no such API path: /api/{'/'.join(segments)}")
        allowed = sorted({route.method for route, _ in found})
        chosen = [(route, ident) for route, ident in found if route.method == method]
        if not chosen:
            raise ApiError(
                405,
                "method-not-allowed",
                f"use {' or '.join(allowed)} here",
                {b"allow": ", ".join(allowed).encode()},
            )
        [(route, ident)] = chosen
        if "{id}" in route.path and not ID.fullmatch(ident):
            raise ApiError(400, "bad-id", f"{ident!r} is not a request or session id")
        if route.read is not None:
            return 200, route.read()
        assert route.act is not None
        actor = self._identify(request)  # before the body: a stranger's body is never parsed
        return route.act(ident, read_body(request), actor)

    # -- reads

    def access(self) -> dict[str, Any]:
        return {
            "mode": self._consent.mode().value,
            "codes_locked_until": _when(self._consent.code_entry_locked_until()),
        }

    def requests(self) -> list[dict[str, Any]]:
        return [request_json(r) for r in self._consent.requests()]

    def sessions(self) -> list[dict[str, Any]]:
        return [session_json(s) for s in self._consent.sessions()]

    # -- actions

    def set_access(self, _: str, body: dict[str, Any], actor: Actor) -> Answer:
        mode = Fields(body, ["mode"]).mode()
        before = [s.id for s in self._consent.sessions()]
        previous = self._consent.set_mode(mode, actor)
        after = {s.id for s in self._consent.sessions()}
        ended = [sid for sid in before if sid not in after]
        return 200, {"mode": mode.value, "previous": previous.value, "sessions_ended": ended}

    def approve(self, request_id: str, body: dict[str, Any], actor: Actor) -> Answer:
        fields = Fields(body, ["minutes", "targets", "permission"])
        minutes, targets, permission = fields.minutes(), fields.targets(), fields.permission()
        session = self._consent.approve(
            request_id, actor, minutes=minutes, targets=targets, permission=permission
        )
        return 200, session_json(session)

    def deny(self, request_id: str, body: dict[str, Any], actor: Actor) -> Answer:
        reason = Fields(body, ["reason"]).reason()
        engineer = next((r.engineer for r in self._consent.requests() if r.id == request_id), None)
        self._consent.deny(request_id, actor, reason)
        return 200, {"id": request_id, "engineer": engineer, "reason": reason}

    def create_code(self, _: str, body: dict[str, Any], actor: Actor) -> Answer:
        fields = Fields(body, ["minutes", "targets", "permission"])
        minutes, targets, permission = fields.minutes(), fields.targets(), fields.permission()
        grant = self._consent.create_code(
            actor, minutes=minutes, targets=targets, permission=permission
        )
        return 200, code_json(grant)

    def end(self, session_id: str, body: dict[str, Any], actor: Actor) -> Answer:
        reason = Fields(body, ["reason"]).reason()
        return 200, session_json(self._consent.end(session_id, actor, reason))

    def set_permission(self, session_id: str, body: dict[str, Any], actor: Actor) -> Answer:
        """``{"permission": "view"|"full", "targets": [...]}``: the whole session, or only those
        of its targets."""
        fields = Fields(body, ["permission", "targets"])
        if "permission" not in body:
            raise ApiError(400, "bad-value", 'permission: give "view" or "full"')
        targets = tuple(fields.targets() or ())
        before = next((s for s in self._consent.sessions() if s.id == session_id), None)
        session = self._consent.set_permission(session_id, fields.permission(), actor, targets)
        answer = session_json(session)
        answer["previous"] = None
        if before is not None:
            olds = {before.permission_on(t) for t in (targets or before.targets)}
            answer["previous"] = olds.pop().value if len(olds) == 1 else "mixed"
        return 200, answer

    def end_all(self, _: str, body: dict[str, Any], actor: Actor) -> Answer:
        reason = Fields(body, ["reason"]).reason()
        return 200, [session_json(s) for s in self._consent.end_all(actor, reason)]


class ApiRoot(Resource):
    """``/api/``: ``status`` from the view, the rest from `ConsentAPI`."""

    def __init__(self, view: IStatusView, consent: IConsent, identify: Identify) -> None:
        super().__init__()
        self.putChild(b"status", StatusJSON(view))
        self.actions = ConsentAPI(consent, identify)
        checks = checks_api(view)  # /api/checks(/run), when the view runs checks (the daemon's)
        if checks is not None:
            self.putChild(b"checks", checks)

    def getChild(self, path: bytes, request: Request) -> Resource:
        return self.actions


def api_root(view: IStatusView, consent: IConsent, identify: Identify) -> Resource:
    """The ``/api/`` resource, for `gateway.web.status.status_root`."""
    return ApiRoot(view, consent, identify)


# -- bounded bodies -----------------------------------------------------------------------------


class BoundedRequest(Request):
    """A request whose body may not exceed `MAX_BODY`: refused with 413 as soon as it is known.

    twisted.web reads a whole body before rendering (spilling it to a temporary file past
    100 kB); a declared length over the bound is answered from the headers, and a chunked body
    once it grows past it, and the connection closes instead of reading the rest.
    """

    _too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()
        if length is not None and length > MAX_BODY:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._too_large:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self._refuse()
            return
        assert self.content is not None
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._too_large:
            return  # answered already; the connection is closing
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._too_large = True
        body = json.dumps(
            {"error": "too-large", "reason": f"the body is limited to {MAX_BODY} bytes"}
        ).encode()
        transport = self.channel.transport
        assert transport is not None
        transport.write(
            b"HTTP/1.1 413 Content Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.channel.loseConnection()


def api_site(root: Resource, **options: Any) -> Site:
    """A ``Site`` for a tree with the API: request bodies bounded by `BoundedRequest`."""
    return Site(root, requestFactory=BoundedRequest, **options)
