"""``gateway connect --group``: which members a target group has, and on which port each listens.

The relay's gateway info (``GET GATEWAY_INFO_PATH``, `gateway.wire.GatewayInfo`) names the
gateway's target groups as the gateway reported them just now, ``{group: {"port": member}}``, the
first member the group's page.  Each member is forwarded on its own port number at ``--bind``: a
page on one member that opens ``ws://<its host>:9999/`` reaches the member on 9999.  No offset
is offered, since the page's own JavaScript names the port numbers; a port that cannot be bound
(taken, or below 1024 without the privilege) ends the client with one line naming it.
"""

from __future__ import annotations

import errno
import json

from attrs import frozen

__all__ = ["GroupProblem", "listen_problem", "read_members"]

MAX_INFO = 256 * 1024
"""Bytes of the relay's gateway info read at most."""


@frozen
class GroupProblem(Exception):
    """Why the group's members are not known (yet): ``line`` for the engineer; ``retry``: ask
    again in a while (the gateway is offline or did not answer), else the client ends."""

    line: str
    retry: bool = False

    def __str__(self) -> str:
        return self.line


def read_members(body: bytes, gateway: str, group: str) -> dict[int, str]:
    """``{port: member}`` of ``group``, the group's page first; raises `GroupProblem`."""
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except ValueError:
        raise GroupProblem("the relay's answer about the gateway is not readable") from None
    if data.get("online") is False:
        raise GroupProblem(
            f"gateway {gateway!r} is offline: its group {group!r} is listened on once it is back",
            retry=True,
        )
    if "groups" not in data:
        problem = data.get("problem")
        if isinstance(problem, str) and problem:
            raise GroupProblem(
                f"gateway {gateway!r} did not say what it offers ({problem[:200]}); asking again",
                retry=True,
            )
        raise GroupProblem(
            f"relay does not report gateway {gateway!r}'s target groups: is it as new as "
            "this client? (--target forwards one target)"
        )
    groups = data["groups"]
    members = groups.get(group) if isinstance(groups, dict) else None
    if not isinstance(members, dict) or not members:
        known = sorted(str(g) for g in groups) if isinstance(groups, dict) else []
        names = ", ".join(known) if known else "none"
        raise GroupProblem(
            f"gateway {gateway!r} has no target group {group!r} (its groups: {names})"
        )
    found: dict[int, str] = {}
    for port, member in members.items():
        try:
            number = int(port)
        except (TypeError, ValueError):
            number = 0
        if not 0 < number < 65536 or not isinstance(member, str) or not member:
            raise GroupProblem(f"gateway {gateway!r} reports group {group!r} unreadably")
        found[number] = member
    return found


def listen_problem(where: str, member: str, group: str, error: OSError | None) -> str:
    """The line for a member's port that cannot be listened on."""
    why = error.strerror if error is not None and error.strerror else str(error)
    line = f"cannot listen on {where} for {member!r} of group {group!r}: {why}"
    if error is not None and error.errno == errno.EACCES:
        line += (
            "; a port below 1024 needs privilege (run as root, give Python "
            "CAP_NET_BIND_SERVICE, or lower net.ipv4.ip_unprivileged_port_start)"
        )
    elif error is not None and error.errno == errno.EADDRNOTAVAIL:
        line += "; --bind must be an address of this machine (127.0.0.2 on Linux and Windows)"
    elif error is not None and error.errno == errno.EADDRINUSE:
        line += "; something else listens there: stop it, or use another --bind address"
    return line
