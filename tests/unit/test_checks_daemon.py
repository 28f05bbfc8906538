"""The runner (concurrent, own timeouts, a crash is a failed check) and the daemon's schedule
(start, interval, after tunnel failures, on demand, nothing left behind on stop)."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from gateway.checks.api import ChecksAPI
from gateway.checks.daemon import (
    AFTER_FAILURE_DELAY,
    START_DELAY,
    ChecksInStatus,
    DaemonChecks,
)
from gateway.checks.result import CheckResult, Shared
from gateway.checks.runner import RUN_TIMEOUT, guarded
from gateway.edge.events import ITunnelEvents
from gateway.edge.status import IStatusView
from gateway.promtext import metric_value


class FakeEnv:
    def __init__(self, clock: Clock) -> None:
        self.reactor = clock


class RunnerTests(SynchronousTestCase):
    def test_a_crashing_check_is_a_failed_check_naming_the_exception(self) -> None:
        def boom() -> CheckResult:
            raise KeyError("relay")

        result = self.successResultOf(guarded(FakeEnv(Clock()), "tls", boom))  # type: ignore[arg-type]
        self.assertFalse(result.ok)
        self.assertIn("KeyError", result.detail)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_a_hanging_check_fails_after_its_own_timeout(self) -> None:
        clock = Clock()
        d = guarded(FakeEnv(clock), "dns", lambda: Deferred())  # type: ignore[arg-type]
        clock.advance(RUN_TIMEOUT)
        result = self.successResultOf(d)
        self.assertEqual(result.detail, f"no answer within {RUN_TIMEOUT:g} s")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_shared_answer_gives_each_waiter_its_own_copy(self) -> None:
        source: Deferred[list[int]] = Deferred()
        shared = Shared(source)
        first, second = shared.wait(), shared.wait()
        first.addCallback(lambda value: None)
        source.callback([1])
        self.assertIsNone(self.successResultOf(first))
        self.assertEqual(self.successResultOf(second), [1])
        self.assertEqual(self.successResultOf(shared.wait()), [1])


class Runs:
    """A fake run: each call waits for the test to answer it."""

    def __init__(self) -> None:
        self.pending: list[Deferred[list[CheckResult]]] = []

    def __call__(self, env: Any) -> Deferred[list[CheckResult]]:
        d: Deferred[list[CheckResult]] = Deferred()
        self.pending.append(d)
        return d

    def answer(self, *results: CheckResult) -> None:
        self.pending.pop(0).callback(list(results))


TCP_DOWN = CheckResult("tcp", False, "refused", "ask IT to allow outbound TCP 443 to r (HTTPS)")
TCP_UP = CheckResult("tcp", True, "connected")


class DaemonChecksTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = CollectorRegistry()
        self.runs = Runs()
        self.checks = DaemonChecks(
            FakeEnv(self.clock),  # type: ignore[arg-type]
            self.registry,
            interval=300,
            run=self.runs,
        )

    def metric(self, check: str) -> float | None:
        from prometheus_client import generate_latest

        return metric_value(
            generate_latest(self.registry).decode(), "gateway_check_ok", {"check": check}
        )

    def test_it_is_a_tunnel_event_consumer(self) -> None:
        self.assertTrue(verifyObject(ITunnelEvents, self.checks))

    def test_runs_soon_after_start_then_every_interval(self) -> None:
        self.checks.startService()
        self.assertEqual(self.runs.pending, [])
        self.clock.advance(START_DELAY)
        self.runs.answer(TCP_DOWN)
        self.assertEqual(self.checks.results, [TCP_DOWN])
        self.assertEqual(self.metric("tcp"), 0.0)
        self.clock.advance(299)
        self.assertEqual(self.runs.pending, [])
        self.clock.advance(1)
        self.runs.answer(TCP_UP)
        self.assertEqual(self.metric("tcp"), 1.0)

    def test_a_tunnel_failure_runs_the_checks_at_most_once_a_minute(self) -> None:
        self.checks.startService()
        self.clock.advance(START_DELAY)
        self.runs.answer(TCP_UP)
        for _ in range(5):
            self.checks.tunnel_failed("refused")
            self.checks.tunnel_down("lost")
        self.clock.advance(AFTER_FAILURE_DELAY)
        self.assertEqual(len(self.runs.pending), 1)
        self.runs.answer(TCP_DOWN)
        self.clock.advance(30)
        self.checks.tunnel_failed("refused")
        self.clock.advance(AFTER_FAILURE_DELAY)
        self.assertEqual(self.runs.pending, [])

    def test_on_demand_joins_a_run_under_way(self) -> None:
        first, second = self.checks.run_now(), self.checks.run_now()
        self.assertEqual(len(self.runs.pending), 1)
        self.runs.answer(TCP_UP)
        self.assertEqual(self.successResultOf(first), [TCP_UP])
        self.assertEqual(self.successResultOf(second), [TCP_UP])

    def test_stop_leaves_no_delayed_call(self) -> None:
        self.checks.startService()
        self.checks.tunnel_failed("refused")
        self.checks.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.checks.tunnel_failed("refused")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_results_reach_the_status_report_and_the_api(self) -> None:
        from gateway.edge.status import StatusReport

        class View:
            def report(self) -> Any:
                return StatusReport("gw", "1", None, None, [], [], [])  # type: ignore[arg-type]

        view = ChecksInStatus(View(), self.checks)  # type: ignore[arg-type]
        self.assertTrue(verifyObject(IStatusView, view))
        d = view.run_checks()
        self.runs.answer(TCP_DOWN)
        self.successResultOf(d)
        [check] = view.report().checks
        self.assertEqual((check.name, check.ok, check.remedy), ("tcp", False, TCP_DOWN.remedy))
        api = ChecksAPI(lambda: self.checks.results, view.run_checks)
        body = json.loads(api.render_GET(DummyRequest([b""])))  # type: ignore[arg-type]
        self.assertEqual(body["ok"], False)
        self.assertEqual(body["checks"][0]["name"], "tcp")

    def test_run_on_demand_wants_json_like_every_action(self) -> None:
        api = ChecksAPI(lambda: [], lambda: succeed([TCP_UP]))
        request = DummyRequest([b"run"])
        request.method = b"POST"
        run = api.children[b"run"]
        run.render(request)
        self.assertEqual(request.responseCode, 415)
        request = DummyRequest([b"run"])
        request.method = b"POST"
        request.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
        run.render(request)
        self.assertEqual(json.loads(b"".join(request.written))["ok"], True)
