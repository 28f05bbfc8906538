"""Socket options for the data path: large reads, no Nagle delay, keepalive, little unsent data.

These apply to any TCP transport that carries tunnel or processor bytes; transports that are not
TCP sockets (a tunnel stream, a test transport) are left alone.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

SOCKET_READ_SIZE = 1 << 20
"""Bytes asked of the kernel per read of a tunnel socket (Twisted's default is 64 KiB)."""

UNSENT_LOW_WATER = 256 * 1024
"""Unsent bytes the kernel may hold for a tunnel socket (TCP_NOTSENT_LOWAT)."""


def tune_socket(transport: Any, *, keepalive: bool = False) -> None:
    """Data-path socket settings: ~1 MiB per kernel read (one reactor turn carries ~64 TLS
    records or a large processor chunk) and no Nagle delay on small interactive messages."""
    if not hasattr(transport, "setTcpNoDelay"):
        return  # not a TCP socket (a tunnel stream, a test transport)
    transport.bufferSize = SOCKET_READ_SIZE
    for option, wanted in (("setTcpNoDelay", True), ("setTcpKeepAlive", keepalive)):
        setter = getattr(transport, option, None)
        if setter is not None and wanted:
            setter(True)


def limit_unsent(transport: Any) -> None:
    """Keep at most ~256 KiB of unsent tunnel bytes in the kernel (TCP_NOTSENT_LOWAT).

    Loopback and LAN autotuning grow send buffers to megabytes; a PING or a WebSocket frame
    queued behind them waits for all of it, which on a slow plant uplink is seconds.  The rest
    waits in our own buffers, where the fair scheduler can still put small frames first.
    """
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    handle = getattr(transport, "getHandle", None)
    if option is None or handle is None:
        return
    with contextlib.suppress(OSError):
        handle().setsockopt(socket.IPPROTO_TCP, option, UNSENT_LOW_WATER)
