"""The peer certificate's common name, as the relay read gateway ids before ``gateway.identity``.

Kept only until the relay uses ``gateway.identity.gateway_id_of_peer`` (which also applies the
gateway-id rule); then this module goes.
"""

from __future__ import annotations

from typing import Any


def peer_common_name(transport: Any) -> str | None:
    """The subject common name of the peer's certificate, or None without one."""
    get = getattr(transport, "getPeerCertificate", None)
    cert = get() if get is not None else None
    if cert is None:
        return None
    from cryptography.x509.oid import NameOID

    names = cert.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")
