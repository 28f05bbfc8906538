"""The TLS handshake with the relay: the pinned CA, the host name, HTTP/2, our certificate.

And TLS interception, said plainly: when the chain presented does not lead to the pinned CA,
something on the plant network answered in the relay's place (a firewall or proxy that inspects
TLS re-signs every site with its own CA).  The check names that issuer, so plant IT knows which
box to configure, and the exact host and port to exempt.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.checks.clock import MAX_SKEW, skew_of
from gateway.checks.env import CheckEnv, TunnelState, https_to
from gateway.checks.probe import VERIFY_ERRORS, ProbeReport, pinned_cas
from gateway.checks.result import TLS, CheckResult, failed, human_duration, not_checked, passed


def name_of(name: x509.Name) -> str:
    """The common name (else the organisation, else the whole name) of a subject or issuer."""
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        values = name.get_attributes_for_oid(oid)
        if values:
            value = values[0].value
            return value.decode() if isinstance(value, bytes) else value
    return name.rfc4514_string() or "(no name)"


def presented_issuer(chain: Sequence[x509.Certificate]) -> str:
    """Who issued what was presented: the leaf's issuer."""
    return name_of(chain[0].issuer) if chain else "an unknown issuer"


def check_tls(
    env: CheckEnv, tcp_ok: bool, report: ProbeReport | None, live: TunnelState | None
) -> CheckResult:
    relay = env.relay
    if live is not None and live.up and report is None:
        chain = live.tls.chain if live.tls else ()
        who = f" certificate {name_of(chain[0].subject)!r}" if chain else ""
        return passed(
            TLS,
            f"the tunnel's TLS is up ({live.tls.version if live.tls else 'TLS'})"
            f"; the relay's{who} is from the pinned CA",
        )
    if not tcp_ok or report is None:
        return not_checked(TLS, f"no TCP connection to {relay}")
    exempt = f"ask IT to exempt {relay.host}:{relay.port} from TLS inspection"
    if report.tls_timeout:
        return failed(
            TLS,
            f"TCP to {relay} works, but nothing answered the TLS handshake within "
            f"{env.stage_timeout:g} s: something accepts the connection and stays silent",
            f"ask IT to allow {https_to(relay)} all the way (a firewall that holds connections "
            "it does not recognise, or a wrong address); check [relay] address with the vendor",
        )
    presented = report.presented_chain
    if report.untrusted:
        issuer = presented_issuer(presented)
        pinned = ", ".join(repr(name_of(c.subject)) for c in pinned_cas(env.config.relay.ca))
        errors = sorted({VERIFY_ERRORS.get(e, f"error {e}") for _, e in report.verify_errors})
        return failed(
            TLS,
            f"the certificate presented for {relay} was issued by {issuer!r}, not by the pinned "
            f"CA {pinned} ({'; '.join(errors)}): a device on your network, issued by "
            f"{issuer!r}, is inspecting TLS",
            f"a device on your network, issued by {issuer!r}, is inspecting TLS: {exempt} "
            f"(if {issuer!r} is your vendor's CA, [relay] ca names the wrong file)",
        )
    if report.time_errors:
        leaf = presented[0] if presented else None
        skew = skew_of(report.tls_facts())
        dates = ""
        if leaf is not None:
            dates = (
                f" (valid {leaf.not_valid_before_utc:%Y-%m-%d} to "
                f"{leaf.not_valid_after_utc:%Y-%m-%d})"
            )
        if skew is not None and abs(skew) > MAX_SKEW:
            direction = "ahead" if skew > 0 else "behind"
            return failed(
                TLS,
                f"the relay's certificate{dates} looks "
                f"{'expired' if skew > 0 else 'not yet valid'} only because this gateway's "
                f"clock is {human_duration(skew)} {direction}",
                "set this gateway's clock (see the clock check)",
            )
        expired = any(e == 10 for _, e in report.time_errors)
        return failed(
            TLS,
            f"the relay's certificate{dates} is {'expired' if expired else 'not yet valid'}",
            "tell the vendor: the relay's certificate must be renewed"
            if expired
            else "check this gateway's clock; else tell the vendor",
        )
    if report.tls_error is not None and not report.handshake_done:
        if report.first_reply:
            return failed(
                TLS,
                f"the TLS handshake with {relay} failed: {report.tls_error}",
                f"check [relay] address: {relay} should be the relay's gateway listener "
                f"(TLS 1.2 or newer); ask IT whether a device in between interferes with "
                f"{https_to(relay)}",
            )
        return failed(
            TLS,
            f"{relay} accepted TCP but {report.tls_error}",
            f"check [relay] address with the vendor; ask IT whether a firewall cuts "
            f"{https_to(relay)} that it does not recognise",
        )
    if report.name_error is not None:
        name = env.config.relay.expected_name
        return failed(
            TLS,
            report.name_error,
            f"if you dial the relay by an address or alias, set [relay] server_name to the name "
            f"on its certificate; else check [relay] address (expected {name!r})",
        )
    if report.alpn != b"h2":
        return failed(
            TLS,
            f"{relay} answers TLS with a certificate from the pinned CA but does not offer "
            "HTTP/2 (ALPN h2)",
            f"check [relay] address: that port is not the relay's gateway listener; if it is, "
            f"{exempt}",
        )
    if report.relay_refused is not None:
        which = "no certificate" if not report.presented_certificate else "this gateway's"
        return failed(
            TLS,
            f"the relay refused {which} certificate ({report.relay_refused})",
            "see the certificate check; if it passes, ask the vendor whether this gateway's "
            "certificate is from the CA the relay trusts",
        )
    if report.relay_silent:
        return failed(
            TLS,
            f"the TLS handshake with {relay} worked, then the relay said nothing for "
            f"{env.stage_timeout:g} s",
            "call the vendor: the relay does not answer after the handshake",
        )
    leaf_name = name_of(presented[0].subject) if presented else relay.host
    return passed(
        TLS,
        f"{report.version} with {relay}: certificate {leaf_name!r} from the pinned CA "
        f"{presented_issuer(presented)!r}, HTTP/2 offered; the relay took this gateway's "
        "certificate",
    )
