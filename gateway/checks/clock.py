"""Clock skew against the relay, from the relay's time in its TLS ServerHello.

The relay puts its clock in the first four bytes of its ServerHello random (OpenSSL's
``SSL_MODE_SEND_SERVERHELLO_TIME``, set in `gateway.tls.options`); this gateway notes its own
clock when that answer arrives.  The measurement works even when the certificate check fails,
which is exactly when a wrong clock matters (every certificate then looks expired or not yet
valid).  It is good to about a second plus the round trip.  A time that cannot be the relay's
(four random bytes from an older relay, or a value outside the presented certificate's validity)
is not used.  Inside the daemon, the live tunnel's handshake is read instead of dialling again.
"""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.checks.env import CheckEnv, TLSFacts
from gateway.checks.result import CLOCK, CheckResult, failed, human_duration, not_checked, passed

MAX_SKEW = 120.0
"""Seconds of skew still called fine.  Certificates would survive far more, but audit records,
session expiry and logs compared with the relay's get confusing beyond a minute or two, and a
clock that has drifted this far has no working time source."""

EARLIEST = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
SLACK = 86400.0


def relay_clock(facts: TLSFacts | None) -> float | None:
    """The relay's time, if the handshake told it believably."""
    if facts is None or facts.relay_time is None or facts.local_time is None:
        return None
    told = float(facts.relay_time)
    if told < EARLIEST:
        return None
    if facts.chain:
        leaf = facts.chain[0]
        start = leaf.not_valid_before_utc.timestamp() - SLACK
        end = leaf.not_valid_after_utc.timestamp() + SLACK
        if not start <= told <= end:
            return None
    return told


def skew_of(facts: TLSFacts | None) -> float | None:
    """Seconds this gateway's clock is ahead of the relay's (negative: behind)."""
    told = relay_clock(facts)
    if told is None or facts is None or facts.local_time is None:
        return None
    skew = facts.local_time - told
    return 0.0 if abs(skew) < 1.5 else skew  # one-second resolution, plus the round trip


def when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def check_clock(env: CheckEnv, facts: TLSFacts | None, why_not: str | None) -> CheckResult:
    if facts is None:
        return not_checked(CLOCK, why_not or "no TLS answer from the relay")
    skew = skew_of(facts)
    if skew is None:
        return passed(
            CLOCK,
            "not measured: the relay did not tell its time in the TLS handshake (a relay "
            "older than this gateway, or a device in between answered)",
        )
    told = relay_clock(facts)
    assert told is not None and facts.local_time is not None
    if abs(skew) <= MAX_SKEW:
        return passed(CLOCK, f"within {human_duration(skew)} of the relay's clock")
    direction = "ahead of" if skew > 0 else "behind"
    return failed(
        CLOCK,
        f"this gateway's clock is {human_duration(skew)} {direction} the relay's (gateway: "
        f"{when(facts.local_time)}, relay: {when(told)})",
        "set this gateway's clock: turn on time sync (timedatectl set-ntp true) and ask IT for "
        "an NTP server it may reach (UDP 123), or set it by hand: "
        f"timedatectl set-time '{datetime.fromtimestamp(told, UTC):%Y-%m-%d %H:%M:%S}' "
        "(UTC, as the relay said)",
    )
