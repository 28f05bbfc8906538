"""What can go wrong with a tunnel stream or connection, as the tunnel's users see it.

Refusals (a stream the far end answered with an error) are part of the wire contract and live in
`gateway.wire`; this module holds the tunnel's own failures.
"""

from __future__ import annotations


class StreamReset(Exception):
    """The stream was reset by the other side or the tunnel went away."""


class TunnelClosed(Exception):
    """The tunnel connection is gone, or is draining and takes no new streams."""
