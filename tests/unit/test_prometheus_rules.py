"""The alerting rules in deploy/prometheus: Prometheus' own ``promtool`` checks their syntax and
runs their unit tests, and every alert has a test where it fires and one where it stays quiet."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.metricscontract import GATEWAY, RELAY
from tests.helpers.prometheus import RULES_DIR, promtool

RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
TEST_FILES = sorted((RULES_DIR / "tests").glob("*.test.yml"))


def alerts_in(path: Path) -> list[str]:
    return re.findall(r"^\s*- alert:\s*(\S+)", path.read_text(), re.MULTILINE)


def cases_in(path: Path) -> list[tuple[str, bool]]:
    """``(alertname, fires)`` for each ``alert_rule_test`` entry of a promtool test file."""
    cases = []
    name: str | None = None
    for line in path.read_text().splitlines():
        found = re.match(r"\s*alertname:\s*(\S+)", line)
        if found:
            name = found.group(1)
            continue
        expected = re.match(r"\s*exp_alerts:\s*(\S*)", line)
        if expected and name is not None:
            cases.append((name, expected.group(1) != "[]"))
            name = None
    return cases


def test_the_rule_files_are_there() -> None:
    assert [p.name for p in RULE_FILES] == ["gateway.rules.yml", "relay.rules.yml"]
    assert [p.name for p in TEST_FILES] == ["gateway.test.yml", "relay.test.yml"]


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules_passes(rules: Path) -> None:
    status, output = promtool("check", "rules", str(rules))
    assert status == 0, output
    assert f"SUCCESS: {len(alerts_in(rules))} rules found" in output


@pytest.mark.parametrize("tests", TEST_FILES, ids=lambda p: p.name)
def test_promtool_test_rules_passes(tests: Path) -> None:
    status, output = promtool("test", "rules", str(tests))
    assert status == 0, output
    assert "SUCCESS" in output


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = {case for path in TEST_FILES for case in cases_in(path)}
    for rules in RULE_FILES:
        for alert in alerts_in(rules):
            assert (alert, True) in cases, f"{alert}: no test where it fires"
            assert (alert, False) in cases, f"{alert}: no test where it stays quiet"


def test_every_metric_a_rule_reads_is_one_the_daemons_export() -> None:
    """A rule on a renamed metric never fires: each name in an expression is in the contract."""
    known = {*GATEWAY, *RELAY, "up"}
    for rules in RULE_FILES:
        for expr in re.findall(r"expr:\s*>?-?\s*\n?\s*(.+)", rules.read_text()):
            for name in re.findall(r"\b((?:gateway|relay)_[a-z_]+|up)\b(?=\s*[{=<>)\[ ]|$)", expr):
                assert name in known, f"{rules.name}: {name} in {expr!r} is not exported"


def test_a_broken_rule_fails_the_check(tmp_path: Path) -> None:
    """The checks above are not vacuous: promtool refuses a rule that does not parse, and a
    rule test whose alert does not fire."""
    broken = tmp_path / "broken.rules.yml"
    broken.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: gateway_tunnel_up ==\n"
    )
    status, _ = promtool("check", "rules", str(broken))
    assert status != 0
    quiet = tmp_path / "quiet.test.yml"
    quiet.write_text(
        f"rule_files: [{RULES_DIR / 'gateway.rules.yml'}]\n"
        "tests:\n"
        "  - interval: 1m\n"
        "    input_series:\n"
        "      - series: 'gateway_tunnel_up{instance=\"a\"}'\n"
        "        values: '1x10'\n"
        "    alert_rule_test:\n"
        "      - eval_time: 10m\n"
        "        alertname: GatewayTunnelDown\n"
        "        exp_alerts:\n"
        "          - exp_labels: {severity: critical, instance: a}\n"
    )
    status, output = promtool("test", "rules", str(quiet))
    assert status != 0, output


def test_the_example_configuration_loads_both_rule_files() -> None:
    status, output = promtool("check", "config", str(RULES_DIR / "prometheus.example.yml"))
    assert status == 0, output
    assert "SUCCESS: 2 rule files found" in output
