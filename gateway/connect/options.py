"""What ``gateway connect`` was asked to do: one relay, one gateway, one target, one local port.

With ``group`` it forwards every member of one of the gateway's target groups instead, each on
its own port number at the address ``bind`` (the group's page opens WebSockets to its other
ports by its own host name, so the port numbers must be the members' own).

With ``reason`` or ``code`` the client is *attended*: it asks the plant for a session first and
forwards only inside it (BRIEF section 3, "Sessions and consent").  Without either it forwards at
once, as in ``unattended`` mode, and still opens an empty session ask so that the plant sees the
engineer and can end the session.
"""

from __future__ import annotations

from pathlib import Path

from attrs import frozen

from gateway.config import Address

__all__ = ["DEFAULT_BIND", "ConnectOptions"]

DEFAULT_BIND = "127.0.0.2"
"""``--group`` listens here by default: a loopback address of its own, so the members' port
numbers (80, 8080, ...) do not meet whatever already listens on 127.0.0.1."""


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
    group: str | None = None
    """``--group``: forward the members of this target group (``target`` and ``listen`` are
    not used), learnt from the relay once it is reached."""
    bind: str = DEFAULT_BIND
    """``--bind``: the address the group's members listen on, each at its own port number."""

    def __attrs_post_init__(self) -> None:
        if (self.group is None) == (not self.target):
            raise ValueError("a ConnectOptions forwards either one target or one group")

    def member_address(self, port: int) -> Address:
        """Where a group member with ``port`` listens."""
        return Address(self.bind, port)

    @property
    def attended(self) -> bool:
        """Asks the plant before forwarding anything (``--reason`` or ``--code``)."""
        return self.reason is not None or self.code is not None
