"""Telling systemd how the daemon is: ``sd_notify`` over ``$NOTIFY_SOCKET``, in pure Python.

Under a ``Type=notify`` unit systemd hands the daemon a Unix datagram socket in ``NOTIFY_SOCKET``
(a path, or an abstract name written with a leading ``@``) and waits for ``READY=1`` before the
unit counts as started.  The daemons send:

* ``READY=1`` once the config is loaded and every listener is up (`NotifyService` is the last
  child of the daemon's service tree, so it starts only after the listeners did);
* ``STATUS=...`` whenever the one-line state changes (the gateway: its tunnel; the relay: the
  gateways connected), shown by ``systemctl status``;
* ``WATCHDOG=1`` from a reactor ``LoopingCall`` at half of ``WATCHDOG_USEC``, only when
  ``WATCHDOG_USEC`` is set (and ``WATCHDOG_PID``, when set, is this process): a reactor that is
  stuck stops pinging and systemd restarts the service (``WatchdogSec=`` in the unit);
* ``STOPPING=1`` when the service tree stops; for the reload (SIGHUP) code,
  `NotifyService.reloading` sends ``RELOADING=1`` and `NotifyService.reloaded` ``READY=1`` again
  (the service is the daemon's child named ``sd_notify``: ``daemon.getServiceNamed(NAME)``).

A datagram to a non-blocking socket never waits: if systemd's queue is full (or nobody listens
any more) the message is dropped and logged once, the reactor goes on.  Without
``NOTIFY_SOCKET`` (started by hand, or by the tests) everything here does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

NAME = "sd_notify"
"""The `NotifyService`'s name in the daemon's service tree."""

SENT_KEPT = 32
"""How many of the last messages a `Notifier` remembers (for tests and debugging)."""

STATUS_POLL_SECONDS = 1.0
"""How often the daemon's state line is read; a changed line is sent at once."""


def notify_address(value: str) -> str | bytes:
    """``NOTIFY_SOCKET`` as ``socket.sendto`` takes it: ``@name`` is the abstract ``\\0name``."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None when systemd asked
    for none, or asked another process (``WATCHDOG_PID``)."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 1_000_000 / 2


class Notifier:
    """Sends sd_notify messages to one socket; a notifier without an address sends nothing."""

    def __init__(self, address: str | bytes | None, *, sock: socket.socket | None = None) -> None:
        self.address = address
        self._sock = sock
        self._failing = False
        self.sent: deque[str] = deque(maxlen=SENT_KEPT)
        """The last messages sent (or attempted), newest last (a daemon pings for months)."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        return cls(notify_address(value) if value else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields as one datagram; False if it could not go (logged once)."""
        if self.address is None:
            return False
        message = "\n".join(fields)
        self.sent.append(message)
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), self.address)
        except OSError as e:
            if not self._failing:
                log.warn(
                    "cannot notify systemd ({address}): {error}", address=self._shown(), error=e
                )
            self._failing = True
            return False
        if self._failing:
            log.info("notifying systemd again")
        self._failing = False
        return True

    def _shown(self) -> str:
        address = self.address
        if isinstance(address, bytes):
            return "@" + address[1:].decode(errors="replace")
        return str(address)

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.send(*fields)

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        """Before a reload (SIGHUP): systemd shows "reloading" until `ready` is sent again.
        ``MONOTONIC_USEC`` is what systemd >= 253's ``Type=notify-reload`` asks for."""
        fields = ["RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.send(*fields)

    def stopping(self, status: str | None = None) -> bool:
        fields = ["STOPPING=1"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.send(*fields)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


class NotifyService(Service):
    """READY on start, the status line when it changes, watchdog pings, STOPPING on stop.

    Add it to the daemon's tree last: a ``MultiService`` starts its children in order (so the
    listeners are up when this one starts; a port in use stops start-up before it) and stops
    them in reverse (so STOPPING is the first thing systemd hears of the shutdown).
    """

    name = NAME

    def __init__(
        self,
        notifier: Notifier,
        clock: IReactorTime,
        status: Callable[[], str],
        *,
        watchdog: float | None = None,
        poll: float = STATUS_POLL_SECONDS,
    ) -> None:
        self.notifier = notifier
        self.clock = clock
        self._status = status
        self.watchdog_every = watchdog
        self._poll_every = poll
        self._last_status: str | None = None
        self._loops: list[LoopingCall] = []

    def startService(self) -> None:
        super().startService()
        if not self.notifier.enabled:
            return
        self._last_status = self._read_status()
        self.notifier.ready(self._last_status)
        self._loop(self._poll, self._poll_every)
        if self.watchdog_every is not None:
            self._loop(self.notifier.watchdog, self.watchdog_every)

    def _loop(self, call: Callable[[], object], every: float) -> None:
        loop = LoopingCall(call)
        loop.clock = self.clock
        loop.start(every, now=False).addErrback(lambda f: log.failure("sd_notify loop failed", f))
        self._loops.append(loop)

    def _read_status(self) -> str:
        try:
            return self._status()
        except Exception:
            log.failure("cannot read the daemon's state for systemd")
            return "running"

    def _poll(self) -> None:
        line = self._read_status()
        if line != self._last_status:
            self._last_status = line
            self.notifier.status(line)

    def reloading(self, what: str = "reloading the configuration") -> None:
        """Before a reload (SIGHUP) is applied: systemd shows the unit "reloading"."""
        if self.running and self.notifier.enabled:
            self.notifier.reloading(what)

    def reloaded(self) -> None:
        """After the reload, applied or refused (the old config still runs): ready again, with
        the current state line."""
        if self.running and self.notifier.enabled:
            self._last_status = self._read_status()
            self.notifier.ready(self._last_status)

    def stopService(self) -> None:
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        if self.notifier.enabled:
            self.notifier.stopping("stopping")
        # The socket stays open: the daemon may still report while it drains (none of it waits).


def notify_service(
    clock: IReactorTime,
    status: Callable[[], str],
    environ: Mapping[str, str] | None = None,
    pid: int | None = None,
) -> NotifyService:
    """The service for this process's environment (inert without ``NOTIFY_SOCKET``)."""
    env = os.environ if environ is None else environ
    return NotifyService(
        Notifier.from_environ(env),
        clock,
        status,
        watchdog=watchdog_interval(env, os.getpid() if pid is None else pid),
    )
