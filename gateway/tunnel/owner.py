"""What a stream needs from the connection that carries it.

A ``TunnelStream`` holds its own queue and flags and asks its owner only for these few things, so
``stream.py`` does not import ``connection.py`` (the connection imports the stream, never the
other way round) and a stream can be tested against a fake owner.  ``TunnelConnection`` is the
owner in the product; it matches this protocol structurally.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from twisted.internet.interfaces import IReactorTime

StreamT_contra = TypeVar("StreamT_contra", contravariant=True)


class StreamOwner(Protocol[StreamT_contra]):
    @property
    def transport(self) -> Any:
        """The connection's own transport (for ``getPeer``/``getHost``), or None."""

    @property
    def clock(self) -> IReactorTime:
        """The connection's clock (a stream notes when its first byte arrived)."""

    @property
    def credit_batch(self) -> int:
        """Consumed bytes a stream collects before it credits them: a quarter of the
        connection's current stream window."""

    @property
    def high_water(self) -> int:
        """Queued outbound bytes at which a stream pauses its producer (``high_water_for``)."""

    def path_rtt(self) -> float:
        """The round trip of this connection's path, in seconds (for the window's tuning)."""

    def send_response(
        self, stream: StreamT_contra, status: int, headers: list[tuple[bytes, bytes]], end: bool
    ) -> None:
        """Send the response headers of a stream the other end opened."""

    def schedule(self, stream: StreamT_contra) -> None:
        """The stream has something to send (bytes or its END_STREAM): give it turns."""

    def reset_stream(self, stream: StreamT_contra, code: int) -> None:
        """Send RST_STREAM with ``code``."""

    def credit_stream(self, stream: StreamT_contra, amount: int) -> None:
        """Let the sender have ``amount`` more bytes on this stream (the stream batches)."""

    def owe_credit(self, stream: StreamT_contra) -> None:
        """The stream holds credit below a batch: have it sent soon (``credit_owed``), so that
        a small transfer is acknowledged too."""

    def stream_finished(self, stream: StreamT_contra) -> None:
        """The stream ended (both directions closed, reset, or the connection lost)."""
