"""The reactor interfaces the programs use, bundled so one type names them (cf. Synapse)."""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorPluggableNameResolver,
    IReactorProcess,
    IReactorTCP,
    IReactorTime,
)


class IGatewayReactor(
    IReactorCore, IReactorTCP, IReactorTime, IReactorPluggableNameResolver, IReactorProcess
):
    """The global reactor provides all of these; tests pass ``MemoryReactorClock``."""
