"""Why the relay itself says no to an engineer's stream.

A step of the engineer path (authenticate, authorise, locate, dial) that refuses raises or errbacks
with `Refused`; the stream handler turns it into the HTTP/2 refusal the engineer's client prints.
Refusals that come from the gateway arrive as `gateway.wire.StreamRefused` and are passed on as
they are.
"""

from __future__ import annotations

from attrs import frozen

from gateway.wire import Refusal


@frozen
class Refused(Exception):
    """The refusal (status and token) the engineer gets, and the sentence that says why."""

    refusal: Refusal
    reason: str

    def __str__(self) -> str:
        return self.reason


def gateway_offline(gateway_id: str, why: str = "its tunnel to the relay is down") -> Refused:
    return Refused(Refusal.GATEWAY_OFFLINE, f"gateway {gateway_id!r} is offline ({why})")
