"""A throw-away vendor PKI for tests: real certificates from `gateway.pki`, made in milliseconds.

Tests that need TLS use these instead of checked-in PEM files, so no test depends on a
certificate that silently expires, and every test exercises the same profiles the product
issues. ECDSA P-256 keys keep `make_pki` well under 50 ms. The files are laid out as in every
throw-away stack (`gateway.demo.stack`); the impostors below are this module's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from attrs import frozen

from gateway.demo.stack import RELAY_NAMES, Layout
from gateway.demo.stack import make_pki as make_pki_files
from gateway.pki import create_ca, issue_gateway_certificate

__all__ = ["TestPKI", "make_expired_gateway", "make_other_ca_gateway", "make_pki"]


@frozen
class TestPKI:
    """Where `make_pki` put the CA, the relay's server pair and one gateway's client pair."""

    __test__ = False  # not a test case, even when imported into a test module

    directory: Path
    ca_cert: Path
    ca_key: Path
    relay_cert: Path
    relay_key: Path
    gateway_cert: Path
    gateway_key: Path
    gateway_id: str


def make_pki(
    directory: Path,
    *,
    gateway_id: str = "test-gateway",
    relay_names: Sequence[str] = RELAY_NAMES,
) -> TestPKI:
    """A CA, a relay certificate for ``relay_names`` and a gateway certificate for ``gateway_id``.

    Files: ``ca.pem``/``ca.key``, ``relay.pem``/``relay.key``, ``gateway.pem``/``gateway.key``
    in ``directory`` (created if missing). Refuses to overwrite, so two PKIs in one directory
    are a loud mistake rather than a confusing mismatch.
    """
    layout = Layout(Path(directory))
    make_pki_files(layout, gateway_id, ca_name="Test vendor CA", relay_names=relay_names)
    return TestPKI(
        directory=layout.pki,
        ca_cert=layout.ca,
        ca_key=layout.ca_key,
        relay_cert=layout.relay_cert,
        relay_key=layout.relay_key,
        gateway_cert=layout.gateway_cert,
        gateway_key=layout.gateway_key,
        gateway_id=gateway_id,
    )


def make_other_ca_gateway(directory: Path, gateway_id: str = "test-gateway") -> tuple[Path, Path]:
    """A gateway certificate and key for ``gateway_id`` from an unrelated CA (an impostor).

    Everything goes into ``directory/other-ca/`` so ``directory`` may be the one `make_pki`
    used. The relay must refuse it although the subject names a known gateway.
    """
    other = Path(directory) / "other-ca"
    other.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = other / "ca.pem", other / "ca.key"
    create_ca(ca_cert, ca_key, name="Test vendor CA", force=True)  # same name, other key
    cert, key = other / "gateway.pem", other / "gateway.key"
    issue_gateway_certificate(ca_cert, ca_key, cert, key, gateway_id=gateway_id, force=True)
    return cert, key


def make_expired_gateway(pki: TestPKI, gateway_id: str = "test-gateway") -> tuple[Path, Path]:
    """A gateway certificate and key signed by ``pki``'s CA that expired about two years ago.

    Written as ``expired-<gateway_id>.pem``/``.key`` beside the PKI's other files.
    """
    cert = pki.directory / f"expired-{gateway_id}.pem"
    key = pki.directory / f"expired-{gateway_id}.key"
    issue_gateway_certificate(
        pki.ca_cert,
        pki.ca_key,
        cert,
        key,
        gateway_id=gateway_id,
        days=1,
        now=datetime.now(UTC) - timedelta(days=730),
        force=True,
    )
    return cert, key
