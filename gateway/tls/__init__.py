"""TLS for the tunnel: pinned trust, mutual authentication, ALPN ``h2``, and a faster record path.

``options`` says what is accepted and loads certificate files, ``fast`` is the tuned record path
(with its guard against Twisted changes), ``endpoints`` runs it over any stream endpoint and
``errors`` explains failures in one sentence.  The names below are the ones the programs import.
"""

from gateway.net.sockets import tune_socket
from gateway.tls.endpoints import TLSClientEndpoint, TLSServerEndpoint
from gateway.tls.fast import FastTLSFactory, FastTLSProtocol
from gateway.tls.options import (
    ALPN_H2,
    TLSFileError,
    client_options,
    load_ca,
    load_identity,
    server_options,
)

__all__ = [
    "ALPN_H2",
    "FastTLSFactory",
    "FastTLSProtocol",
    "TLSClientEndpoint",
    "TLSFileError",
    "TLSServerEndpoint",
    "client_options",
    "load_ca",
    "load_identity",
    "server_options",
    "tune_socket",
]
