"""A service that runs one check at a fixed interval while it is running.

The relay's watches (engineers' access, revoked gateways) each re-read a file and act on what
changed, twice a second.  They share this: the loop on the reactor's clock (a test's ``Clock``),
the first round one interval after start, the loop stopped with the service, and a check that
raises logged once instead of ending the loop's Deferred unheard.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class PeriodicService(Service):
    """Calls ``check`` every ``interval`` seconds on ``clock`` while running (set both in
    ``__init__``)."""

    interval: float
    clock: IReactorTime
    _loop: LoopingCall | None = None

    def check(self) -> object:
        raise NotImplementedError

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False).addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        log.failure("{name}: its periodic check failed and stopped", failure, name=self.name)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return succeed(None)
