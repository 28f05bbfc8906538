"""The relay's one-line state for systemd (``STATUS=``, shown by ``systemctl status``)."""

from __future__ import annotations

from collections.abc import Callable, Sized


def relay_line(tunnels: Sized, streams: Callable[[], float]) -> Callable[[], str]:
    """ "2 gateways connected, 5 engineer streams": read from the live tunnels and the
    ``relay_streams_active`` gauge's value."""

    def line() -> str:
        n, s = len(tunnels), int(streams())
        gateways = "1 gateway" if n == 1 else f"{n} gateways"
        engineer = "1 engineer stream" if s == 1 else f"{s} engineer streams"
        return f"{gateways} connected, {engineer}"

    return line
