"""May this engineer ask this gateway?  The relay's per-gateway authorisation step.

Authentication says who the engineer is; authorisation says which gateways they may reach, before
anything reaches the plant (BRIEF section 3, "Who may ask").  It runs before the gateway is looked
up, so an engineer cannot learn which gateways exist beyond the ones they may use.  The gateway
still decides about targets, modes and sessions on its own.

Deferred-returning: with several relays, grants live in a shared store.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from zope.interface import Interface, implementer

from gateway.relay.credentials import Engineer


class IEngineerAuthorisation(Interface):
    def authorise(engineer: Engineer, gateway_id: str) -> Deferred[None]:
        """Fire with None if ``engineer`` may open streams to ``gateway_id``; otherwise fail
        with `gateway.relay.refusals.Refused` saying why."""


@implementer(IEngineerAuthorisation)
class EveryAuthenticatedEngineer:
    """Every authenticated engineer may ask every gateway (until ``--gateways`` patterns)."""

    def authorise(self, engineer: Engineer, gateway_id: str) -> Deferred[None]:
        return succeed(None)
