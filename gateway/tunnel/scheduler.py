"""Fair sending: a round-robin over the streams that have something to send.

h2 does no send scheduling and buffers whatever it is handed, so the connection decides what goes
out.  Each round gives every ready stream at most one frame, and no new round starts once the
transport has pushed back (``pauseProducing``): a bulk download cannot make a WebSocket message
wait behind megabytes, and the bytes in front of the socket stay few.  A stream whose send window
is empty is *blocked*: it has no turns until a WINDOW_UPDATE (for it, or for the whole connection)
puts it back.  Same shape as ``H2Connection._sendPrioritisedData`` in twisted/web/_http2.py.

Streams that carry little go first: a stream whose queue fits in one small frame when it becomes
ready (a request, a click's answer, a WebSocket message) is *light* and takes its turn at the
front of the next round, ahead of the streams moving bulk; once it has more than that waiting it
joins the bulk streams' turn order.  So a message waits behind at most what is already written,
never behind a frame of every download in the same round.

The scheduler knows streams only by their ``stream_id``; what sending one frame means is the
connection's business (``run``'s ``send_one``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Generic, Protocol, TypeVar


class Schedulable(Protocol):
    @property
    def stream_id(self) -> int: ...

    @property
    def queued(self) -> int: ...


LIGHT = 16 * 1024
"""A stream with at most this much queued when it becomes ready goes ahead of bulk streams."""


S = TypeVar("S", bound=Schedulable)


class RoundRobin(Generic[S]):
    """The ready streams in turn order, the blocked ones, and whether the transport paused us."""

    __slots__ = ("_blocked", "_in_ready", "_light", "_ready", "paused")

    def __init__(self) -> None:
        self._light: deque[S] = deque()
        """Ready streams with little to send: served first in each round."""
        self._ready: deque[S] = deque()
        self._in_ready: set[int] = set()
        self._blocked: set[int] = set()
        self.paused = False
        """True while the transport has paused us: no new round starts."""

    def add(self, stream: S) -> None:
        """``stream`` has something to send: give it turns (unless it waits for window)."""
        sid = stream.stream_id
        if sid not in self._in_ready and sid not in self._blocked:
            self._in_ready.add(sid)
            (self._light if stream.queued <= LIGHT else self._ready).append(stream)

    @property
    def has_ready(self) -> bool:
        return bool(self._ready or self._light)

    def is_blocked(self, stream_id: int) -> bool:
        return stream_id in self._blocked

    def block(self, stream_id: int) -> None:
        """The stream's send window is empty: no turns until ``window_opened`` for it."""
        self._blocked.add(stream_id)

    def window_opened(self, stream_id: int, streams: Mapping[int, S]) -> bool:
        """A WINDOW_UPDATE for ``stream_id`` (0: the connection) arrived: unblock what it frees.

        Returns True if a stream got its turns back (so there is something to send).
        """
        if stream_id == 0:
            if not self._blocked:
                return False
            freed, self._blocked = self._blocked, set()
        elif stream_id in self._blocked:
            self._blocked.discard(stream_id)
            freed = {stream_id}
        else:
            return False
        resumed = False
        for sid in freed:
            stream = streams.get(sid)
            if stream is not None:
                self.add(stream)
                resumed = True
        return resumed

    def forget(self, stream_id: int) -> None:
        """The stream ended.  Were it still in the turn order, ``send_one`` declines its turn."""
        self._blocked.discard(stream_id)

    def run(self, send_one: Callable[[S], bool], end_of_round: Callable[[], bool]) -> None:
        """Give every ready stream one turn per round until none is ready or we are paused.

        ``send_one(stream)`` sends at most one frame and says whether the stream has more to send
        right away (it keeps its place in the turn order); a blocked stream says False after
        ``block``.  ``end_of_round()`` writes the round out (which may pause us) and says whether
        to go on (False: the connection closed).
        """
        light, ready, in_ready = self._light, self._ready, self._in_ready
        while (ready or light) and not self.paused:
            while light:  # streams that became ready during the round join the next one
                stream = light.popleft()
                in_ready.discard(stream.stream_id)
                if send_one(stream):  # more than one frame after all: bulk from now on
                    in_ready.add(stream.stream_id)
                    ready.append(stream)
            for _ in range(len(ready)):
                stream = ready.popleft()
                in_ready.discard(stream.stream_id)
                if send_one(stream):
                    in_ready.add(stream.stream_id)
                    ready.append(stream)
            if not end_of_round():
                return
