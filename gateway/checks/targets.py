"""Each allowlisted target: can this gateway reach the processor on the plant network?

TCP today.  Target kinds (``http`` targets answering ``GET /`` with their status) come with
another issue: a kind registers its probe in `PROBES`, and a target whose kind has none is
checked over TCP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import error as neterror
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from gateway.checks.env import CheckEnv
from gateway.checks.result import TARGET_PREFIX, CheckResult, failed, passed
from gateway.config import Target

TargetProbe = Callable[[CheckEnv, Target], "Deferred[CheckResult]"]


class _Hello(Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


def _hello(_: Any) -> _Hello:
    return _Hello()


def check_target_tcp(env: CheckEnv, target: Target) -> Deferred[CheckResult]:
    name = TARGET_PREFIX + target.name
    address = target.address
    timeout = min(target.connect_timeout, env.stage_timeout)
    endpoint = HostnameEndpoint(env.reactor, address.host, address.port, timeout=timeout)
    factory = Factory.forProtocol(_Hello)
    factory.noisy = False
    rule = f"TCP {address.port} from this gateway to {address.host} (the plant network)"

    def connected(_: object) -> CheckResult:
        return passed(name, f"{target.name} answers on {address}")

    def not_reached(failure: Failure) -> CheckResult:
        if failure.check(neterror.ConnectionRefusedError):
            why = "refused the connection (nothing listens on that port)"
            remedy = (
                f"is the processor on, and its web server running? Check [[target]] "
                f"{target.name!r} address {address}"
            )
        elif failure.check(neterror.TimeoutError, neterror.TCPTimedOutError):
            why = f"did not answer within {timeout:g} s"
            remedy = (
                f"is the processor on and cabled to the plant network? If it is, ask IT to "
                f"allow {rule}"
            )
        elif failure.check(neterror.NoRouteError):
            why = "has no route from here"
            remedy = f"check the gateway's plant-side network; ask IT to allow {rule}"
        else:
            why = f"cannot be reached: {failure.getErrorMessage()}"
            remedy = f"check [[target]] {target.name!r} address; ask IT to allow {rule}"
        return failed(name, f"{target.name} at {address} {why}", remedy)

    d: Deferred[CheckResult] = endpoint.connect(factory).addCallbacks(connected, not_reached)
    return d


PROBES: dict[str, TargetProbe] = {"tcp": check_target_tcp}
"""Probes by target kind; ``http`` will add ``GET /`` with its status."""


def check_target(env: CheckEnv, target: Target) -> Deferred[CheckResult]:
    kind = str(getattr(target, "kind", "tcp"))
    return PROBES.get(kind, check_target_tcp)(env, target)
