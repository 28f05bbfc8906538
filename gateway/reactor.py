"""The reactor interfaces the programs use, bundled so one type names them (cf. Synapse)."""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorPluggableNameResolver,
    IReactorProcess,
    IReactorTCP,
    IReactorTime,
    IReactorUNIX,
)


class IGatewayReactor(
    IReactorCore,
    IReactorTCP,
    IReactorTime,
    IReactorPluggableNameResolver,
    IReactorProcess,
    IReactorUNIX,
):
    """The global reactor provides all of these; tests pass ``MemoryReactorClock``.

    ``IReactorUNIX``: the edge daemon's control socket."""
