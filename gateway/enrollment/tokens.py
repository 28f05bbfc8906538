"""One-time enrollment tokens: issued for one gateway id, used once, expiring; hashed at rest.

``gateway relay enroll-token ID`` makes 32 random bytes (``secrets``), prints them once and keeps
only their SHA-256 in ``STATE_DIR/enrollment/tokens.json`` with the gateway id, when it was made
and when it expires; a token of 256 random bits needs no slow hash to resist guessing, and the
file holds nothing that would let anyone enroll.  A new token for an id replaces the one still
unused for it.  Using a token marks it used (in the same locked step, so two connections cannot
both use it); a used, expired, replaced or unknown token is refused with its reason.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import frozen

from gateway.enrollment.files import locked, read_json, write_json

FILE = "tokens.json"
SEPARATOR = "."
"""A token is ``<gateway id>.<43 random characters>``: plant IT sees which gateway it is for,
and ``gateway enroll`` takes the id for its CSR from it ('.' is in no gateway id nor in the
URL-safe random part).  The relay trusts only its own record of the id, never the text."""
DEFAULT_HOURS = 24.0
MAX_HOURS = 24.0 * 30
KEEP_SECONDS = 7 * 86400.0
"""Used and expired records are kept a week (so a second use is told "already used")."""


class TokenRefused(Exception):
    """The token cannot enroll; the message says why (never the token)."""

    def __init__(self, reason: str, gateway_id: str | None = None) -> None:
        super().__init__(reason)
        self.gateway_id = gateway_id


@frozen
class IssuedToken:
    token: str
    gateway_id: str
    expires: float


def gateway_id_of_token(token: str) -> str:
    """The gateway id a token names (ValueError if it names none)."""
    from gateway.identity import validate_gateway_id

    gateway_id, separator, secret = token.strip().partition(SEPARATOR)
    if not separator or len(secret) < 20:
        raise ValueError("not an enrollment token (they look like GATEWAY-ID.RANDOM)")
    return validate_gateway_id(gateway_id)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """The tokens of one relay's state directory; ``now`` is the clock (tests pass a Clock's)."""

    def __init__(self, state_dir: Path, now: Callable[[], float]) -> None:
        self.state_dir = state_dir
        self.now = now

    def issue(self, gateway_id: str, *, seconds: float) -> IssuedToken:
        token = gateway_id + SEPARATOR + secrets.token_urlsafe(32)
        now = self.now()
        with locked(self.state_dir) as where:
            data = self._read(where, now)
            for record in data["tokens"]:
                if record["gateway"] == gateway_id and record.get("used") is None:
                    record["replaced"] = now
            data["tokens"].append(
                {
                    "sha256": token_hash(token),
                    "gateway": gateway_id,
                    "created": now,
                    "expires": now + seconds,
                    "used": None,
                }
            )
            write_json(where / FILE, data)
        return IssuedToken(token, gateway_id, now + seconds)

    def use(self, token: str) -> str:
        """The gateway id ``token`` was issued for, marking it used; else `TokenRefused`."""
        digest = token_hash(token)
        now = self.now()
        with locked(self.state_dir) as where:
            data = self._read(where, now)
            record = next(
                (r for r in data["tokens"] if hmac.compare_digest(r["sha256"], digest)), None
            )
            if record is None:
                raise TokenRefused("the enrollment token is not known to this relay")
            gateway_id = str(record["gateway"])
            if record.get("used") is not None:
                raise TokenRefused("the enrollment token was used already", gateway_id)
            if record.get("replaced") is not None:
                raise TokenRefused(
                    "the enrollment token was replaced by a newer one for this gateway", gateway_id
                )
            if now >= record["expires"]:
                raise TokenRefused("the enrollment token has expired", gateway_id)
            record["used"] = now
            write_json(where / FILE, data)
        return gateway_id

    def withdraw(self, gateway_id: str) -> int:
        """Cancel the unused tokens for ``gateway_id`` (it was revoked); how many."""
        now = self.now()
        count = 0
        with locked(self.state_dir) as where:
            data = self._read(where, now)
            for record in data["tokens"]:
                if record["gateway"] == gateway_id and record.get("used") is None:
                    if record.get("replaced") is None and now < record["expires"]:
                        count += 1
                    record["replaced"] = now
            write_json(where / FILE, data)
        return count

    def _read(self, where: Path, now: float) -> dict[str, Any]:
        data = read_json(where / FILE, lambda: {"tokens": []})
        tokens = data.get("tokens")
        if not isinstance(tokens, list):
            raise ValueError(f"{where / FILE}: 'tokens' is not a list")
        data["tokens"] = [
            r
            for r in tokens
            if isinstance(r, dict)
            and now - max(r.get("expires", 0), r.get("used") or 0) < KEEP_SECONDS
        ]
        return data
