"""The portal's second factor: time-based one-time codes (RFC 6238, ``pyotp``), optional per
engineer.

``gateway relay set-totp NAME`` makes a secret, stores it in the engineer's section of
``engineers.toml`` (private to the relay's user) and shows the enrolment QR code once, for the
engineer's authenticator app; ``remove-totp NAME`` switches it off again.  At login a code is
good for its 30-second step and one step either side (clock drift), and once only: a code seen
going by cannot be used again.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyotp
import qrcode
from twisted.internet.interfaces import IReactorTime

from gateway.relay.portal.passwords import set_key

ISSUER = "Remote service gateway"
STEP = 30


def new_secret() -> str:
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, name: str, issuer: str = ISSUER) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=issuer)


def qr_text(uri: str) -> str:
    """The QR code as text for a terminal (two characters a module)."""
    code = qrcode.QRCode(border=2)
    code.add_data(uri)
    code.make(fit=True)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue()


def enrol(path: Path, name: str) -> tuple[str, str]:
    """A new secret in ``name``'s section: (the name as written, the secret)."""
    secret = new_secret()
    return set_key(path, name, "totp", secret), secret


def remove(path: Path, name: str) -> str:
    return set_key(path, name, "totp", None)


class CodeCheck:
    """Checks codes against a secret, each code once (per engineer)."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._used: dict[str, int] = {}
        """The last time step a code was accepted at, per engineer."""

    def check(self, engineer: str, secret: str, code: str) -> bool:
        code = code.strip().replace(" ", "")
        if not (code.isdigit() and len(code) == 6):
            return False
        totp = pyotp.TOTP(secret)
        now = self._clock.seconds()
        step = int(now // STEP)
        for offset in (0, -1, 1):
            at = step + offset
            if at <= self._used.get(engineer.casefold(), -1):
                continue
            if totp.verify(code, for_time=at * STEP):
                self._used[engineer.casefold()] = at
                return True
        return False
