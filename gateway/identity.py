"""Who a gateway is: the one rule for gateway ids, and the id a certificate names.

A gateway id names one edge PC everywhere: in its certificate's subject common name, on the relay,
in ``gateway connect --gateway ID``, in metrics labels, audit records and (soon) in the host name of
a browser portal (``web--plant7.relay.example.com``).  So an id must be a valid DNS label: 1-63
lower-case letters, digits or ``-``, starting and ending with a letter or digit, and without
``--`` (the portal uses it to separate target and gateway).  ``gateway pki`` refuses to issue a
certificate for any other id, and the relay refuses a tunnel whose certificate names one.

No Twisted here: the CLI, the PKI tooling and the relay all use it.
"""

from __future__ import annotations

import re
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

GATEWAY_ID_RULE = (
    "1-63 lower-case letters, digits or '-', starting and ending with a letter or digit, "
    "without '--'"
)
_GATEWAY_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class InvalidGatewayId(ValueError):
    """A name that cannot be a gateway id; the message says why in the user's terms."""


def gateway_id_problem(value: object) -> str | None:
    """Why ``value`` cannot be a gateway id, or None if it can."""
    if not isinstance(value, str):
        return "a gateway id must be text"
    shown = repr(value[:70] + ("..." if len(value) > 70 else ""))
    if _GATEWAY_ID.fullmatch(value) is None or "--" in value:
        hint = ""
        lowered = value.lower()
        if lowered != value and _GATEWAY_ID.fullmatch(lowered) and "--" not in lowered:
            hint = f" (try {lowered!r})"
        elif "_" in value or "." in value:
            hint = " ('_' and '.' cannot appear in a host name label)"
        return f"gateway id {shown}: not valid, use {GATEWAY_ID_RULE}{hint}"
    return None


def validate_gateway_id(value: object) -> str:
    """``value`` if it is a valid gateway id; otherwise raise `InvalidGatewayId`."""
    problem = gateway_id_problem(value)
    if problem is not None:
        raise InvalidGatewayId(problem)
    assert isinstance(value, str)
    return value


def gateway_id_from_subject(subject: x509.Name) -> str:
    """The gateway id a certificate subject names: exactly one common name, a valid id.

    Several common names are refused rather than picking one, so two readers can never disagree
    about who connected.
    """
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise InvalidGatewayId("the certificate's subject has no common name (the gateway id)")
    if len(names) > 1:
        raise InvalidGatewayId(
            f"the certificate's subject has {len(names)} common names; a gateway certificate "
            "names exactly one gateway id"
        )
    value = names[0].value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return validate_gateway_id(value)


def gateway_id_from_certificate(certificate: x509.Certificate) -> str:
    return gateway_id_from_subject(certificate.subject)


def gateway_id_of_peer(transport: Any) -> str:
    """The gateway id of the peer of a TLS ``transport`` (its client certificate)."""
    get = getattr(transport, "getPeerCertificate", None)
    peer = get() if get is not None else None
    if peer is None:
        raise InvalidGatewayId("the gateway presented no certificate")
    return gateway_id_from_certificate(peer.to_cryptography())
