"""HTTPS for the status page: ``[status] cert`` and ``key`` in gateway.toml.

The plant's own certificate for the edge PC's name (or one its IT made), TLS 1.2 at least,
HTTP/1.1 only.  The key file is checked as every key of the gateway is (not readable by others);
a bad pair stops start-up with one line naming the file.
"""

from __future__ import annotations

from twisted.internet.ssl import CertificateOptions, TLSVersion

from gateway.config import ConfigError, GatewayConfig
from gateway.tls.options import TLSFileError, load_identity

__all__ = ["page_tls_options"]


def page_tls_options(config: GatewayConfig) -> CertificateOptions | None:
    """Twisted TLS options for the status listener, or None to serve plain HTTP."""
    tls = config.status_tls
    if tls is None:
        return None
    try:
        identity = load_identity(tls.cert, tls.key)
    except TLSFileError as e:
        raise ConfigError(config.path, "status.cert", str(e)) from None
    return CertificateOptions(
        privateKey=identity.privateKey.original.to_cryptography_key(),
        certificate=identity.original.to_cryptography(),
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableProtocols=[b"http/1.1"],
    )
