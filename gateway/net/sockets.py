"""Socket options for the data path: large reads, no Nagle delay, keepalive, little unsent data,
and a short receive buffer where an engineer's application hands us an upload.

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

LOCAL_RECEIVE_BUFFER = 128 * 1024
"""Receive buffer of a local connection to ``gateway connect`` (SO_RCVBUF; Linux doubles it)."""


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
    if option is not None:
        _set_option(transport, socket.IPPROTO_TCP, option, UNSENT_LOW_WATER)


def limit_receive_buffer(transport: Any, size: int = LOCAL_RECEIVE_BUFFER) -> None:
    """Give a local application's connection a short receive buffer (SO_RCVBUF).

    An upload through the tunnel moves at the plant's uplink rate, but the engineer's application
    writes to ``gateway connect`` over loopback, where the kernel autotunes this buffer (and,
    seeing it grow, the application's send buffer) to megabytes: seconds of a 10 Mbit/s uplink
    during which the application believes its upload sent while the processor has not got it (a
    firmware tool's progress bar at 100 %, then a long wait for the answer).  The WAN benchmark
    measured an upload's last byte written to its arrival at 5.7 s without this and 3.5-3.6 s
    with 64-128 KiB (stunnel 2.1-2.9 s).  128 KiB (256 KiB as Linux counts it) still keeps a
    loopback or LAN upload at hundreds of MB/s: the tunnel reads it ~1 MiB at a time.
    """
    _set_option(transport, socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _set_option(transport: Any, level: int, option: int, value: int) -> None:
    """``setsockopt`` on the transport's socket; nothing where it has none (not TCP, a test)."""
    handle = getattr(transport, "getHandle", None)
    if handle is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        handle().setsockopt(level, option, value)
