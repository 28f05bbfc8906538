"""What one check says, and the plumbing the checks share: names, "not checked", shared answers.

A check never raises: it answers a `CheckResult` (name, ok, what it found, what to do).  Checks
that depend on another (TLS needs TCP, TCP needs DNS) answer "not checked" when that one failed,
with no remedy of their own, so the remedies shown first are those of the real cause.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from attrs import asdict, frozen
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")

NETWORK = "network"
DNS = "dns"
PROXY = "proxy"
TCP = "tcp"
TLS = "tls"
CLOCK = "clock"
CERTIFICATE = "certificate"
TUNNEL = "tunnel"
TARGET_PREFIX = "target:"
"""Each allowlisted target is checked as ``target:NAME``."""

ORDER = (NETWORK, DNS, PROXY, TCP, TLS, CLOCK, CERTIFICATE, TUNNEL)
"""The order of the report: from the wire up, then the targets."""


@frozen
class CheckResult:
    """One check's answer; ``remedy`` is what a plant technician can do or ask IT for."""

    name: str
    ok: bool
    detail: str
    remedy: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def passed(name: str, detail: str) -> CheckResult:
    return CheckResult(name, True, detail)


def failed(name: str, detail: str, remedy: str) -> CheckResult:
    return CheckResult(name, False, detail, remedy)


def not_checked(name: str, why: str) -> CheckResult:
    """A check that could not run because an earlier step failed: not ok, no remedy."""
    return CheckResult(name, False, f"not checked: {why}")


def crashed(name: str, failure: Failure) -> CheckResult:
    """A check that raised: a failed check naming the exception (the log has the traceback)."""
    kind = failure.type.__name__ if failure.type is not None else "error"
    return CheckResult(
        name,
        False,
        f"the check itself failed ({kind}: {failure.getErrorMessage()})",
        "this is a bug in the gateway: send `gateway snapshot` to support",
    )


class Shared(Generic[T]):
    """One result several checks wait for: each `wait` is a fresh Deferred, so no check's
    callbacks change what the others get, and cancelling one wait leaves the others."""

    def __init__(self, source: Deferred[T]) -> None:
        self._waiting: list[Deferred[T]] = []
        self._result: T | Failure | None = None
        self._done = False
        source.addBoth(self._fire)

    def _fire(self, result: T | Failure) -> None:
        self._done, self._result = True, result
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            self._deliver(d)
        return None  # the source's own chain ends here: a failure is the waiters' to handle

    def _deliver(self, d: Deferred[T]) -> None:
        if isinstance(self._result, Failure):
            d.errback(self._result)
        else:
            d.callback(self._result)  # type: ignore[arg-type]

    @property
    def done(self) -> bool:
        return self._done

    def wait(self) -> Deferred[T]:
        d: Deferred[T] = Deferred(self._forget)
        if self._done:
            self._deliver(d)
        else:
            self._waiting.append(d)
        return d

    def _forget(self, d: Deferred[T]) -> None:
        if d in self._waiting:
            self._waiting.remove(d)


def human_duration(seconds: float) -> str:
    """``3 days 4 h``, ``5 min 2 s``, ``12 s``: how far off, in words a technician reads."""
    seconds = abs(seconds)
    if seconds >= 2 * 86400:
        days, rest = divmod(int(seconds), 86400)
        return f"{days} days {rest // 3600} h"
    if seconds >= 3600:
        hours, rest = divmod(int(seconds), 3600)
        return f"{hours} h {rest // 60} min"
    if seconds >= 120:
        minutes, rest = divmod(int(seconds), 60)
        return f"{minutes} min {rest} s"
    return f"{seconds:.0f} s"


Check = Callable[[], "Deferred[CheckResult] | CheckResult"]
"""A check as the runner calls it."""
