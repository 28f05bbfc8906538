"""May this engineer ask this gateway?  The relay's per-gateway authorisation step.

Authentication says who the engineer is; authorisation says which gateways they may reach, before
anything reaches the plant (BRIEF section 3, "Who may ask").  It runs before the gateway is looked
up, so an engineer cannot learn which gateways exist beyond the ones they may use.  The gateway
still decides about targets, modes and sessions on its own.

`PatternAuthorisation` reads the grants from ``engineers.toml`` (`TokenFile`): the ``gateways``
glob patterns and the ``expires`` date.  The same rules answer a second question for streams that
are already open: is the access they were opened with still there (`withdrawn`)?

Deferred-returning: with several relays, grants live in a shared store.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

from gateway.relay.credentials import Engineer, EngineerEntry, TokenFile
from gateway.relay.refusals import Refused
from gateway.wire import Refusal


class IEngineerAuthorisation(Interface):
    def authorise(engineer: Engineer, gateway_id: str) -> Deferred[None]:
        """Fire with None if ``engineer`` may open streams to ``gateway_id``; otherwise fail
        with `gateway.relay.refusals.Refused` saying why."""


@implementer(IEngineerAuthorisation)
class EveryAuthenticatedEngineer:
    """Every authenticated engineer may ask every gateway (tests of the other steps)."""

    def authorise(self, engineer: Engineer, gateway_id: str) -> Deferred[None]:
        return succeed(None)


def shown_id(gateway_id: str) -> str:
    """A gateway id as it may appear in a sentence: it came from the engineer, so short."""
    return gateway_id[:64] + ("..." if len(gateway_id) > 64 else "")


@implementer(IEngineerAuthorisation)
class PatternAuthorisation:
    """An engineer may reach the gateways their ``gateways`` patterns match, until ``expires``.

    ``on_authorised`` is told the name of each engineer let through (their "last used").
    """

    def __init__(
        self,
        credentials: TokenFile,
        clock: IReactorTime,
        *,
        on_authorised: Callable[[str], None] | None = None,
    ) -> None:
        self.credentials = credentials
        self.clock = clock
        self.on_authorised = on_authorised

    def authorise(self, engineer: Engineer, gateway_id: str) -> Deferred[None]:
        refused = self.refusal(engineer, gateway_id)
        if refused is not None:
            return fail(refused)
        if self.on_authorised is not None:
            self.on_authorised(engineer.name)
        return succeed(None)

    def _current(self, engineer: Engineer) -> EngineerEntry | None:
        """The entry of the token the engineer came in with, if it is still listed."""
        entry = self.credentials.entry(engineer.name)
        if entry is None or (engineer.credential and entry.token_sha256 != engineer.credential):
            return None
        return entry

    def refusal(self, engineer: Engineer, gateway_id: str) -> Refused | None:
        """Why ``engineer`` may not ask ``gateway_id`` now, or None."""
        entry = self._current(engineer)
        if entry is None:  # removed between authentication and now
            return Refused(Refusal.BAD_TOKEN, "the engineer token was not accepted")
        if entry.expired(self.clock.seconds()):
            assert entry.expires is not None
            return Refused(
                Refusal.TOKEN_EXPIRED,
                f"the token of engineer {entry.name!r} expired on {entry.expires} (00:00 UTC); "
                "ask the relay's operator for a new one",
            )
        if not entry.may_reach(gateway_id):
            return Refused(
                Refusal.NOT_AUTHORISED,
                f"engineer {entry.name!r} is not authorised for gateway "
                f"{shown_id(gateway_id)!r} on this relay",
            )
        return None

    def withdrawn(self, engineer: Engineer, gateway_id: str) -> str | None:
        """Why a stream ``engineer`` opened to ``gateway_id`` must end now (told to the
        engineer's client), or None while their access stands."""
        if self.credentials.problem is not None:
            return "engineer access is suspended on the relay (its engineer list is unusable)"
        entry = self._current(engineer)
        if entry is None:
            return "your engineer access was removed on the relay"
        if entry.expired(self.clock.seconds()):
            return f"your engineer token expired on {entry.expires} (00:00 UTC)"
        if not entry.may_reach(gateway_id):
            return (
                f"your engineer access to gateway {shown_id(gateway_id)!r} was removed on the relay"
            )
        return None
