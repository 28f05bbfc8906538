"""What ``gateway connect`` was asked to do: one relay, one gateway, one target, one local port.

With ``reason`` or ``code`` the client is *attended*: it asks the plant for a session first and
forwards only inside it (BRIEF section 3, "Sessions and consent").  Without either it forwards at
once, as in ``unattended`` mode, and still opens an empty session ask so that the plant sees the
engineer and can end the session.
"""

from __future__ import annotations

from pathlib import Path

from attrs import frozen

from gateway.config import Address

__all__ = ["ConnectOptions"]


@frozen
class ConnectOptions:
    relay: Address
    ca: Path
    token: str
    gateway: str
    target: str
    listen: Address
    server_name: str | None = None
    reason: str | None = None
    """``--reason``: ask the plant to approve a session, saying why."""
    code: str | None = None
    """``--code``: the 6-digit code the plant read out (a session at once, single use)."""

    @property
    def attended(self) -> bool:
        """Asks the plant before forwarding anything (``--reason`` or ``--code``)."""
        return self.reason is not None or self.code is not None
