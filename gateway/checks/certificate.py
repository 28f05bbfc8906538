"""This gateway's own certificate: readable, matching its key, valid now, days to expiry."""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509

from gateway.checks.env import CheckEnv
from gateway.checks.result import CERTIFICATE, CheckResult, failed, passed
from gateway.checks.tls import name_of
from gateway.tls import TLSFileError, load_identity

RENEW_WITHIN_DAYS = 14
"""Fail this early before expiry: time enough to get a new certificate from the vendor.  A short
certificate (the relay's enrollment may issue them) fails in its last quarter instead: the
gateway renews it itself at two thirds of its life (`gateway.edge.renewal`), so by then its
renewals have been failing for a while."""


def check_certificate(env: CheckEnv) -> CheckResult:
    link = env.config.relay
    try:
        identity = load_identity(link.cert, link.key)
    except TLSFileError as e:
        return failed(
            CERTIFICATE,
            str(e),
            f"install this gateway's certificate and key from the vendor as {link.cert} and "
            f"{link.key}",
        )
    certificate: x509.Certificate = identity.original.to_cryptography()
    now = env.now()
    start = certificate.not_valid_before_utc.timestamp()
    end = certificate.not_valid_after_utc.timestamp()
    who = f"this gateway's certificate ({name_of(certificate.subject)!r}, from " + (
        f"{name_of(certificate.issuer)!r})"
    )
    renew = (
        "the gateway renews it itself through the relay (look for 'certificate renewal failed' "
        "in its log); or enroll again with a new token (gateway enroll), or ask the vendor for "
        f"a new certificate for gateway {name_of(certificate.subject)!r} and install it as "
        f"{link.cert} and {link.key}"
    )
    clock_first = "; but if this gateway's clock is wrong (see the clock check), set the clock"
    if now < start:
        return failed(
            CERTIFICATE,
            f"{who} is valid only from {_day(start)}, in {_days(start - now)} by this gateway's "
            "clock",
            "set this gateway's clock if it is wrong (see the clock check); otherwise the "
            "certificate was issued with a future start: " + renew,
        )
    if now > end:
        return failed(
            CERTIFICATE,
            f"{who} expired on {_day(end)}, {_days(now - end)} ago by this gateway's clock",
            renew + clock_first,
        )
    left = end - now
    if left < min(RENEW_WITHIN_DAYS * 86400, (end - start) / 4):
        return failed(
            CERTIFICATE, f"{who} expires on {_day(end)}, in {_days(left)}", renew + " now"
        )
    return passed(CERTIFICATE, f"{who} is valid until {_day(end)} ({_days(left)} left)")


def _day(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")


def _days(seconds: float) -> str:
    days = int(seconds // 86400)
    if days >= 1:
        return f"{days} day" + ("s" if days != 1 else "")
    return f"{int(seconds // 3600)} h"
