"""The gateway's one-line state for systemd (``STATUS=``, shown by ``systemctl status``).

A consumer of the tunnel's events, like the status model: "tunnel up to relay X", "connecting
to relay X (last attempt: why)", "tunnel down: why; reconnecting to relay X", "stopping".
"""

from __future__ import annotations

from zope.interface import implementer

from gateway.edge.events import ITunnelEvents


@implementer(ITunnelEvents)
class TunnelLine:
    def __init__(self, relay: str) -> None:
        self.relay = relay
        self.line = f"connecting to relay {relay}"

    def __call__(self) -> str:
        return self.line

    def tunnel_up(self, why: str) -> None:
        self.line = f"tunnel up to relay {self.relay}"

    def tunnel_down(self, why: str) -> None:
        self.line = f"tunnel down: {why}; reconnecting to relay {self.relay}"

    def tunnel_failed(self, why: str) -> None:
        if self.line.startswith("tunnel up"):
            return
        if self.line.startswith("tunnel down"):
            self.line = f"tunnel down: {why}; reconnecting to relay {self.relay}"
        else:
            self.line = f"connecting to relay {self.relay} (last attempt: {why})"

    def tunnel_stopped(self, why: str) -> None:
        self.line = f"stopping: {why}"

    def tunnel_rtt(self, seconds: float) -> None:
        pass
