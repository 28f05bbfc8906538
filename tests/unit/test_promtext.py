# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""Reading Prometheus text (gateway/promtext.py): what the demo, tests and benchmarks scrape."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from twisted.trial.unittest import SynchronousTestCase

from gateway.promtext import matching, metric_value, samples, series_key

EXPOSITION = (
    "# HELP relay_gateways_connected Gateways\n"
    "# TYPE relay_gateways_connected gauge\n"
    "relay_gateways_connected 1000.0\n"
    "# TYPE relay_auth_failures_total counter\n"
    'relay_auth_failures_total{kind="gateway_handshake"} 3.0\n'
    'relay_auth_failures_total{kind="engineer_token"} 2.0\n'
    "relay_gateways_connected_extra 5\n"
)


class MetricValueTests(SynchronousTestCase):
    def test_an_unlabelled_gauge_is_its_value(self) -> None:
        self.assertEqual(metric_value(EXPOSITION, "relay_gateways_connected"), 1000.0)

    def test_a_series_selector_picks_one_series(self) -> None:
        selector = 'relay_auth_failures_total{kind="gateway_handshake"}'
        self.assertEqual(metric_value(EXPOSITION, selector), 3.0)

    def test_labels_may_be_given_apart_from_the_name(self) -> None:
        found = metric_value(EXPOSITION, "relay_auth_failures_total", {"kind": "engineer_token"})
        self.assertEqual(found, 2.0)

    def test_a_name_without_labels_reads_as_the_sum_of_its_series(self) -> None:
        self.assertEqual(metric_value(EXPOSITION, "relay_auth_failures_total"), 5.0)

    def test_a_longer_name_with_the_same_start_is_another_metric(self) -> None:
        self.assertEqual(metric_value(EXPOSITION, "relay_gateways_connected_extra"), 5.0)
        self.assertEqual(metric_value(EXPOSITION, "relay_gateways_connected"), 1000.0)

    def test_an_absent_metric_or_series_is_none(self) -> None:
        self.assertIsNone(metric_value(EXPOSITION, "relay_streams_active"))
        self.assertIsNone(metric_value(EXPOSITION, 'relay_auth_failures_total{kind="other"}'))
        self.assertIsNone(metric_value("", "relay_gateways_connected"))

    def test_what_is_not_the_format_is_a_value_error(self) -> None:
        self.assertRaises(ValueError, metric_value, "this is not prometheus\n", "x")
        self.assertRaises(ValueError, metric_value, EXPOSITION, "x{unterminated")

    def test_special_values(self) -> None:
        text = "a NaN\nb +Inf\nc -Inf\n"
        value = metric_value(text, "a")
        assert value is not None
        self.assertTrue(math.isnan(value))
        self.assertEqual(metric_value(text, "b"), math.inf)
        self.assertEqual(metric_value(text, "c"), -math.inf)


class SamplesTests(SynchronousTestCase):
    def test_every_series_keyed_as_the_exposition_writes_it(self) -> None:
        self.assertEqual(
            samples(EXPOSITION),
            {
                "relay_gateways_connected": 1000.0,
                'relay_auth_failures_total{kind="gateway_handshake"}': 3.0,
                'relay_auth_failures_total{kind="engineer_token"}': 2.0,
                "relay_gateways_connected_extra": 5.0,
            },
        )

    def test_escaped_label_values_round_trip(self) -> None:
        text = 'x{path="C:\\\\dir",say="\\"hi\\""} 1\n'
        [key] = samples(text)
        self.assertEqual(key, text.split(" ")[0])
        [sample] = matching(text, "x")
        self.assertEqual(dict(sample.labels), {"path": "C:\\dir", "say": '"hi"'})
        self.assertEqual(metric_value(text, key), 1.0)

    def test_series_key_without_labels_is_the_name(self) -> None:
        self.assertEqual(series_key("up"), "up")
        self.assertEqual(series_key("up", {"a": "1", "b": "2"}), 'up{a="1",b="2"}')

    def test_what_prometheus_client_writes_reads_back(self) -> None:
        registry = CollectorRegistry()
        Gauge("gateway_tunnel_up", "1 while up", registry=registry).set(1)
        streams = Counter("gateway_streams", "Streams", ["result"], registry=registry)
        streams.labels(result="opened").inc(7)
        opened = Histogram("relay_stream_open_seconds", "Open", buckets=[0.1, 1], registry=registry)
        opened.observe(0.05)
        opened.observe(0.5)
        text = generate_latest(registry).decode()
        self.assertEqual(metric_value(text, "gateway_tunnel_up"), 1.0)
        self.assertEqual(metric_value(text, 'gateway_streams_total{result="opened"}'), 7.0)
        self.assertEqual(samples(text)['gateway_streams_total{result="opened"}'], 7.0)
        buckets = {
            s.labels["le"]: s.value for s in matching(text, "relay_stream_open_seconds_bucket")
        }
        self.assertEqual(buckets, {"0.1": 1.0, "1.0": 2.0, "+Inf": 2.0})
        self.assertEqual(metric_value(text, "relay_stream_open_seconds_count"), 2.0)
