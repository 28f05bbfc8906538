"""The metrics contract (BRIEF section 3, issue 17 item 4) as data, and a check against a scrape.

Names are what Prometheus stores (``_total`` on counters, ``_info`` on build info), types what
the exposition's ``# TYPE`` line says, labels every label a series of that name may carry.
The unit tests hold the daemons' registries to it and the end-to-end tests a live scrape, so a
renamed metric, a counter turned gauge or a new unbounded label fails a test.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.promtext import parse

Contract = Mapping[str, tuple[str, frozenset[str]]]


def _c(kind: str, *labels: str) -> tuple[str, frozenset[str]]:
    return kind, frozenset(labels)


PROCESS: Contract = {
    "process_resident_memory_bytes": _c("gauge"),
    "process_virtual_memory_bytes": _c("gauge"),
    "process_cpu_seconds_total": _c("counter"),
    "process_open_fds": _c("gauge"),
    "process_max_fds": _c("gauge"),
    "process_start_time_seconds": _c("gauge"),
    "python_info": _c("gauge", "implementation", "major", "minor", "patchlevel", "version"),
}
"""prometheus_client's process and platform collectors, in each daemon's own registry."""

GATEWAY: Contract = {
    **PROCESS,
    "gateway_tunnel_up": _c("gauge"),
    "gateway_tunnel_connects_total": _c("counter"),
    "gateway_tunnel_rtt_seconds": _c("gauge"),
    "gateway_streams_active": _c("gauge"),
    "gateway_streams_total": _c("counter", "result"),
    "gateway_stream_bytes_total": _c("counter", "direction"),
    "gateway_sessions_active": _c("gauge"),
    "gateway_check_ok": _c("gauge", "check"),
    "gateway_certificate_expiry_timestamp_seconds": _c("gauge"),
    "gateway_build_info": _c("gauge", "version"),
    "gateway_access_mode": _c("gauge", "mode"),
    "gateway_session_requests_pending": _c("gauge"),
    "gateway_session_decisions_total": _c("counter", "decision"),
    "gateway_session_codes_created_total": _c("counter"),
    "gateway_session_codes_used_total": _c("counter"),
    "gateway_session_codes_failed_total": _c("counter", "reason"),
    "gateway_audit_write_failures_total": _c("counter"),
    "gateway_reactor_delayed_calls": _c("gauge"),
    # Renewal through the relay and SIGHUP reloads (issue 19).
    "gateway_certificate_renewal_failures_total": _c("counter"),
    "gateway_certificate_renewals_total": _c("counter"),
    "gateway_certificate_renewal_next_timestamp_seconds": _c("gauge"),
    "gateway_config_reloads_total": _c("counter", "result"),
    "gateway_config_last_reload_successful": _c("gauge"),
    "gateway_config_last_reload_success_timestamp_seconds": _c("gauge"),
}

RELAY: Contract = {
    **PROCESS,
    "relay_gateways_connected": _c("gauge"),
    "relay_streams_active": _c("gauge"),
    "relay_streams_total": _c("counter", "result"),
    "relay_stream_bytes_total": _c("counter", "direction"),
    "relay_auth_failures_total": _c("counter", "kind"),
    "relay_login_lockouts_total": _c("counter", "scope"),
    "relay_engineer_file_usable": _c("gauge"),
    "relay_sessions_active": _c("gauge"),
    "relay_build_info": _c("gauge", "version"),
    "relay_reactor_delayed_calls": _c("gauge"),
    "relay_config_reloads_total": _c("counter", "result"),
    "relay_config_last_reload_successful": _c("gauge"),
    "relay_config_last_reload_success_timestamp_seconds": _c("gauge"),
}

UNBOUNDED_LABELS = frozenset(
    {
        "id",
        "connection",
        "connection_id",
        "session",
        "session_id",
        "request",
        "request_id",
        "engineer",
        "peer",
        "source",
        "address",
        "port",
        "code",
        "token",
    }
)
"""Labels no series may carry: one value per connection, session, person or address would grow
Prometheus' storage without bound (target names, check names and fixed reasons are fine)."""


def declared_types(text: str) -> dict[str, str]:
    """``{name: type}`` from the exposition's ``# TYPE`` lines (as Prometheus reads them)."""
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
    return types


def contract_problems(text: str, contract: Contract) -> list[str]:
    """What in ``text`` breaks ``contract``: a missing name, a wrong type, a label it does not
    allow, or an unbounded label on any series at all; empty when the scrape keeps it."""
    problems = []
    types = declared_types(text)
    for name, (kind, _) in sorted(contract.items()):
        if name not in types:
            problems.append(f"{name} is missing")
        elif types[name] != kind:
            problems.append(f"{name} is a {types[name]}, not a {kind}")
    for sample in parse(text):
        labels = set(sample.labels)
        bad = labels & UNBOUNDED_LABELS
        if bad:
            problems.append(f"{sample.key} carries unbounded labels {sorted(bad)}")
        if sample.name in contract and not labels <= contract[sample.name][1]:
            extra = sorted(labels - contract[sample.name][1])
            problems.append(f"{sample.key} carries labels {extra} the contract does not know")
    return problems
