"""Reading Prometheus text exposition: what the demo, the tests and the benchmarks scrape.

Our programs serve ``/metrics`` with ``prometheus_client``; reading it back goes through the same
library's parser, so label escaping, ``NaN``/``+Inf``, ``_total``/``_created`` samples and
comment lines are handled once and the way the writer meant them (a regex over lines gets
labelled, escaped or similarly named series subtly wrong).

A *series* is a sample name with its labels, written as Prometheus writes it:
``gateway_streams_total{result="opened"}``.  Wherever a name is asked for, such a selector is
accepted too: ``metric_value(text, 'relay_auth_failures_total{kind="engineer_token"}')``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

from attrs import frozen
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Sample", "matching", "metric_value", "parse", "samples", "series_key"]


@frozen
class Sample:
    """One line of an exposition: sample name, labels (in the order written) and value."""

    name: str
    labels: Mapping[str, str]
    value: float

    @property
    def key(self) -> str:
        return series_key(self.name, self.labels)


def parse(text: str) -> Iterator[Sample]:
    """Every sample in ``text``; raises ``ValueError`` for text that is not the format."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield Sample(sample.name, dict(sample.labels), float(sample.value))


def series_key(name: str, labels: Mapping[str, str] | None = None) -> str:
    """``name{label="value",...}`` as the exposition writes it (``name`` alone without labels)."""
    if not labels:
        return name
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
    return f"{name}{{{inner}}}"


def samples(text: str) -> dict[str, float]:
    """The whole exposition as ``{series: value}``, e.g. ``{'x_total{kind="a"}': 3.0}``."""
    return {sample.key: sample.value for sample in parse(text)}


def matching(text: str, name: str, labels: Mapping[str, str] | None = None) -> list[Sample]:
    """The samples called ``name`` whose labels include ``labels`` (and any in ``name``'s
    selector), in the order written."""
    wanted_name, wanted = _selector(name, labels)
    return [
        sample
        for sample in parse(text)
        if sample.name == wanted_name
        and all(sample.labels.get(key) == value for key, value in wanted.items())
    ]


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The value of ``name`` (a sample name or a series selector), or None if it is absent.

    When several series match (labels not given, or only some of them), their values are
    summed: a gauge without labels is its one value, and a gauge that gains a label later still
    reads as its total.
    """
    found = matching(text, name, labels)
    if not found:
        return None
    return math.fsum(sample.value for sample in found)


def _selector(name: str, labels: Mapping[str, str] | None) -> tuple[str, dict[str, str]]:
    """Split ``name{k="v"}`` into the sample name and labels, using the parser itself."""
    wanted = dict(labels or {})
    if "{" not in name:
        return name, wanted
    try:
        [sample] = list(parse(f"{name} 0\n"))
    except ValueError:
        raise ValueError(f"{name!r} is not a metric name or series selector") from None
    return sample.name, {**sample.labels, **wanted}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
