"""What the kernel knows about a TCP connection's path: ``TCP_INFO``, and its congestion control.

Linux reports, per socket, the smoothed round-trip time, the rate at which the path has recently
delivered data (``tcpi_delivery_rate``, the estimate BBR itself works from, with a flag saying
whether the sender was application-limited when it was taken) and the bytes still unsent in the
socket.  The tunnel sizes its queues from them (`gateway.net.queues`), and the metrics show them.

``struct tcp_info`` has only ever grown at its end, so fields are read by their fixed offsets
(include/uapi/linux/tcp.h) and a kernel that returns a shorter struct gives None for what it
lacks.  Nothing here raises for a socket that is not TCP or a platform without ``TCP_INFO``.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

from attrs import frozen

TCP_INFO_LENGTH = 232
"""Bytes asked for: up to ``tcpi_snd_wnd`` (Linux 5.4); older kernels return fewer."""

_RTT = struct.Struct("=II")  # tcpi_rtt, tcpi_rttvar (microseconds) at 68
_NOTSENT = struct.Struct("=II")  # tcpi_notsent_bytes, tcpi_min_rtt at 144
_DELIVERY_RATE = struct.Struct("=Q")  # bytes per second at 160
_APP_LIMITED_BYTE = 7  # tcpi_delivery_rate_app_limited: the lowest bit of the 8th byte


@frozen
class PathInfo:
    """One sample of a connection's path, as the kernel sees it."""

    rtt: float
    """Smoothed round-trip time, seconds (includes the queues on the path)."""
    min_rtt: float | None
    """The lowest round-trip time seen: the path without its queues."""
    delivery_rate: float | None
    """Bytes per second recently delivered to the other end (None: kernel before 4.9)."""
    app_limited: bool
    """The sender had nothing to send for part of that sample: the path may deliver more."""
    notsent: int | None
    """Bytes written to the socket that the kernel has not sent yet."""


def parse_tcp_info(raw: bytes) -> PathInfo | None:
    """A ``PathInfo`` from the bytes of ``getsockopt(TCP_INFO)``; None if too short for an RTT."""
    if len(raw) < 76:
        return None
    rtt_us, _rttvar = _RTT.unpack_from(raw, 68)
    notsent: int | None = None
    min_rtt: float | None = None
    if len(raw) >= 152:
        notsent, min_rtt_us = _NOTSENT.unpack_from(raw, 144)
        min_rtt = min_rtt_us / 1e6 if min_rtt_us not in (0, 0xFFFFFFFF) else None
    rate: float | None = None
    if len(raw) >= 168:
        (rate_raw,) = _DELIVERY_RATE.unpack_from(raw, 160)
        rate = float(rate_raw)
    return PathInfo(
        rtt=rtt_us / 1e6,
        min_rtt=min_rtt,
        delivery_rate=rate,
        app_limited=bool(raw[_APP_LIMITED_BYTE] & 1),
        notsent=notsent,
    )


def socket_of(transport: Any) -> socket.socket | None:
    """The TCP socket under ``transport`` (a Twisted TCP transport), or None."""
    handle = getattr(transport, "getHandle", None)
    if handle is None:
        return None
    try:
        sock = handle()
    except Exception:  # a transport whose handle is gone (closed) or is not a socket
        return None
    return sock if isinstance(sock, socket.socket) else None


def read_path_info(sock: socket.socket) -> PathInfo | None:
    """Sample the kernel's view of ``sock``'s path; None where the platform has no TCP_INFO."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, option, TCP_INFO_LENGTH)
    except OSError:
        return None
    return parse_tcp_info(raw)


def available_congestion_controls() -> list[str]:
    """What this kernel offers (``/proc/sys/net/ipv4/tcp_available_congestion_control``)."""
    path = "/proc/sys/net/ipv4/tcp_available_congestion_control"
    with contextlib.suppress(OSError), open(path) as f:
        return f.read().split()
    return []


def system_congestion_control() -> str:
    with contextlib.suppress(OSError), open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
        return f.read().strip()
    return "the system's"


def set_congestion_control(sock: socket.socket, name: str) -> str | None:
    """Use ``name`` (e.g. ``bbr``) for ``sock``; None when done, else why not, in one phrase.

    An unprivileged process may choose only what ``tcp_allowed_congestion_control`` lists; a
    module not loaded yet (``tcp_bbr``) is loaded only for a process with CAP_NET_ADMIN.
    """
    option = getattr(socket, "TCP_CONGESTION", None)
    if option is None:
        return "this platform cannot choose a congestion control per socket"
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, name.encode("ascii"))
    except OSError as e:
        if e.errno in (1, 13):  # EPERM, EACCES
            return (
                f"{name!r} is not in net.ipv4.tcp_allowed_congestion_control "
                "(or its kernel module is not loaded)"
            )
        if e.errno == 2:  # ENOENT
            offered = " ".join(available_congestion_controls()) or "unknown"
            return f"this kernel does not offer {name!r} (it offers: {offered})"
        return f"{name!r} could not be set: {e.strerror or e}"
    return None


def congestion_control_of(sock: socket.socket) -> str | None:
    option = getattr(socket, "TCP_CONGESTION", None)
    if option is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, option, 16)
    except OSError:
        return None
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")
