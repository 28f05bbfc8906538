"""Plain-language explanations of why a TLS connection failed, for logs and the engineer."""

from __future__ import annotations

from OpenSSL.SSL import Error as SSLError
from twisted.python.failure import Failure


def describe_tls_failure(reason: Failure) -> str:
    """Turn OpenSSL's error stack into one sentence that says what to check."""
    value = reason.value
    if reason.check(SSLError) and value is not None:
        parts = [
            str(p) for args in value.args for p in (args if isinstance(args, list) else [args])
        ]
        text = " ".join(parts).lower()
        if "certificate verify failed" in text:
            return "the other side's certificate is not signed by the pinned CA (or has expired)"
        if "certificate required" in text or "peer did not return a certificate" in text:
            return "the relay requires a client certificate and none was presented"
        if "unknown ca" in text or "bad certificate" in text or "certificate expired" in text:
            return "the relay refused this gateway's certificate (wrong CA, expired, or revoked)"
        if "wrong version number" in text or "unsupported protocol" in text:
            return "the other side does not speak TLS 1.2+ on that port"
        if "no application protocol" in text:
            return "the other side does not offer HTTP/2 (ALPN h2): is this a relay?"
        return "TLS failed: " + (" ".join(parts) or type(value).__name__)
    name = type(value).__name__ if value is not None else "unknown"
    if name == "VerificationError":
        return f"the relay's certificate does not carry the expected host name ({value})"
    text = str(value) if value is not None else ""
    return text.strip().rstrip(".") or name
