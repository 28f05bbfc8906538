"""What a refusal or a failed dial means for the engineer client: stop, try again, or carry on.

An engineer's mistake that no retry can mend ends the client at once with its reason (exit 1): a
token that is wrong or expired, a gateway the engineer may not reach or that this relay has never
seen, a relay certificate from another CA or for another host name (``--server-name``).  A relay
or gateway that is away is waited for, however long it takes: that is what a tunnel does.

"Never seen" is relative: a relay that has just restarted has seen no gateway yet, and the
engineer's own gateway reconnects to it within seconds.  Once the client has known the gateway
(the relay said it was online or offline, or it gave us a session) an ``unknown-gateway`` is
waited out like an offline one, so a relay restart never ends a live session.
"""

from __future__ import annotations

import enum

from OpenSSL.SSL import Error as SSLError
from twisted.python.failure import Failure

from gateway.tunnel.errors import TunnelClosed
from gateway.wire import Refusal, StreamRefused

__all__ = ["FATAL_REFUSALS", "Verdict", "dial_is_fatal", "refusal_verdict"]


class Verdict(enum.Enum):
    FATAL = "fatal"
    """The engineer's setup is wrong (token, gateway, relay certificate): say why, exit 1."""
    RETRY = "retry"
    """Something is away (relay, tunnel, gateway): wait, then ask again."""
    REFUSED = "refused"
    """The gateway said no to this (a code, the mode, a target, its limits): say why, exit 1."""
    ENDED = "ended"
    """The session named is not live any more: say why, exit 0."""
    UNSUPPORTED = "unsupported"
    """The gateway or the relay does not know sessions (older versions): go on without one."""


FATAL_REFUSALS = frozenset(
    r.token
    for r in (
        Refusal.BAD_TOKEN,
        Refusal.TOKEN_EXPIRED,
        Refusal.NOT_AUTHORISED,
        Refusal.UNKNOWN_GATEWAY,
    )
)
_AWAY = frozenset(r.token for r in (Refusal.GATEWAY_OFFLINE, Refusal.SHUTTING_DOWN))


def refusal_verdict(refused: StreamRefused, *, known_gateway: bool = False) -> Verdict:
    """What the client does about ``refused`` (see the module docstring for ``known_gateway``)."""
    token = refused.token
    if token == Refusal.UNKNOWN_GATEWAY.token and known_gateway:
        return Verdict.RETRY
    if token in FATAL_REFUSALS:
        return Verdict.FATAL
    if token in _AWAY:
        return Verdict.RETRY
    if token == Refusal.SESSION_ENDED.token:
        return Verdict.ENDED
    if token == Refusal.BAD_REQUEST.token:
        return Verdict.UNSUPPORTED
    if refused.status >= 500 and token not in _GATEWAY_SAYS_NO:
        return Verdict.RETRY  # a relay or gateway in trouble (or one newer than us): later
    return Verdict.REFUSED


_GATEWAY_SAYS_NO = frozenset(r.token for r in (Refusal.AUDIT_UNAVAILABLE,))
"""5xx refusals that are the gateway's considered answer, not a passing outage."""


def dial_is_fatal(failure: Failure) -> bool:
    """A connection to the relay that failed for a reason no redial mends.

    The relay's certificate is not from the pinned CA, or does not carry the name dialled (a
    wrong ``--relay`` host or ``--server-name``).  A refused or timed-out TCP connect, a reset,
    or a relay that closed before HTTP/2 are outages: redialled.
    """
    if failure.check(TunnelClosed):
        return False
    value = failure.value
    if type(value).__name__ == "VerificationError":  # service_identity: wrong host name
        return True
    if failure.check(SSLError) and value is not None:
        text = " ".join(str(part) for part in _flatten(value.args)).lower()
        return "certificate verify failed" in text
    return False


def _flatten(args: tuple[object, ...]) -> list[object]:
    parts: list[object] = []
    for arg in args:
        if isinstance(arg, list | tuple):
            parts.extend(_flatten(tuple(arg)))
        else:
            parts.append(arg)
    return parts
