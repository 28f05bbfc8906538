"""The tunnel itself: HTTP/2 up, the heartbeat answered, the relay accepting this gateway.

Inside the daemon (or when `gateway check` finds one running) this is the daemon's own tunnel:
a second tunnel as the same gateway would make the relay drop the daemon's, so none is dialled.
With no daemon running, the probe speaks HTTP/2 as the gateway does, sends one PING and listens
for the relay's GOAWAY (with which it refuses a certificate that names no valid gateway).
"""

from __future__ import annotations

from gateway.checks.env import CheckEnv, TunnelState
from gateway.checks.probe import ProbeReport
from gateway.checks.result import TUNNEL, CheckResult, failed, not_checked, passed

LOOK_ABOVE = "fix what the failed checks above report"


def check_tunnel(
    env: CheckEnv,
    tls_ok: bool,
    report: ProbeReport | None,
    live: TunnelState | None,
    gateway_id: str | None,
) -> CheckResult:
    as_id = f" as {gateway_id!r}" if gateway_id else ""
    if live is not None:
        if live.up:
            rtt = f", heartbeat answered in {live.rtt_ms:g} ms" if live.rtt_ms is not None else ""
            return passed(
                TUNNEL,
                f"up since {live.since} ({live.via}){rtt}; the relay accepts this gateway{as_id}",
            )
        error = f": {live.last_error}" if live.last_error else ""
        return failed(
            TUNNEL,
            f"{live.state} since {live.since} ({live.via}){error}",
            LOOK_ABOVE
            if not tls_ok
            else "call the vendor with `gateway snapshot`: the relay "
            "does not keep this gateway's tunnel although TLS works",
        )
    if report is None or not tls_ok:
        return not_checked(TUNNEL, "the TLS handshake with the relay did not succeed")
    if report.goaway is not None:
        return failed(
            TUNNEL,
            f"the relay closed the tunnel: {report.goaway}",
            f"ask the vendor: the relay does not accept this gateway{as_id} ({report.goaway})",
        )
    if report.h2_error is not None:
        return failed(
            TUNNEL,
            report.h2_error,
            "call the vendor with `gateway snapshot`: the relay does not answer HTTP/2",
        )
    if report.ping_rtt is None:
        return not_checked(TUNNEL, "the relay did not answer")
    return passed(
        TUNNEL,
        f"HTTP/2 up, heartbeat answered in {report.ping_rtt * 1000:.1f} ms; the relay accepts "
        f"this gateway{as_id}",
    )
