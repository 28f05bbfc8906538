"""Flush the tunnels a batch of input wrote to once that input is handled, in the same turn.

Bytes arriving on a tunnel usually cause writes to tunnels: to the same one (window updates, acks)
or another (the relay forwarding an engineer's bytes to a gateway).  Those writes are collected
while the input is handled and flushed as soon as it is done, in the same reactor turn: one TLS
write per tunnel per batch.  Writes caused by plain sockets (a processor, a browser) are flushed at
the end of the reactor turn instead, so the chunks read from many sockets in one turn share a TLS
write.

One `WriteBatch` serves all the tunnels of one program (the relay's gateway and engineer
connections share one, so forwarding between them is batched); it is handed to each
``TunnelConnection``, never kept in a module.
"""

from __future__ import annotations

from typing import Protocol


class Flushable(Protocol):
    def flush_batched(self) -> None:
        """Write out what was queued while the batch ran."""


class WriteBatch:
    """Input being handled right now, and the tunnels it wrote to."""

    __slots__ = ("_depth", "_dirty", "active")

    def __init__(self) -> None:
        self._depth = 0
        self._dirty: list[Flushable] = []
        self.active = False
        """True while some tunnel's input is being handled (read-only outside this class).

        A plain attribute rather than a property: every write to a tunnel stream reads it.
        """

    def begin(self) -> None:
        self._depth += 1
        self.active = True

    def end(self) -> None:
        self._depth -= 1
        self.active = self._depth > 0
        if self._depth == 0:
            while self._dirty:
                dirty, self._dirty = self._dirty, []
                for tunnel in dirty:
                    tunnel.flush_batched()

    def add(self, tunnel: Flushable) -> None:
        """``tunnel`` wrote during the batch; flush it when the batch ends (the caller dedups)."""
        self._dirty.append(tunnel)
