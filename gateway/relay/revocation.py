"""Access that goes away takes its streams with it: removed, expired or broken credentials.

An engineer removed from ``engineers.toml`` (or whose token expired, or whose ``gateways`` no
longer match, or every engineer when the file breaks) must not keep the streams they opened:
within a second they end, and the engineer's client is told why.  `LiveStreams` knows the
engineer streams open on this relay and who opened them for which gateway; `AccessWatch` checks
them twice a second against the same rules the authorisation step applies to new streams.

How a stream ends: when every open stream of an engineer connection has lost its access, the
connection is closed with a GOAWAY whose debug data is the reason (``gateway connect`` prints
it); otherwise only those streams are reset, and the other engineer's streams carry on.

The watch also re-reads the file (cheap when unchanged), counts and audits what changed, and
writes ``last-used.json``.
"""

from __future__ import annotations

from collections.abc import Iterator

from h2.errors import ErrorCodes
from prometheus_client import Counter, Gauge
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.audit import AuditWriteError, IAuditTrail
from gateway.periodic import PeriodicService
from gateway.relay.authorisation import PatternAuthorisation
from gateway.relay.credentials import Engineer, TokenFile
from gateway.relay.lastused import LastUsed
from gateway.relay.metrics import RelayMetrics
from gateway.tunnel.connection import TunnelConnection
from gateway.tunnel.stream import TunnelStream

log = Logger()

CHECK_INTERVAL = 0.5
"""Seconds between checks: a removed engineer's streams end within a second."""


class LiveStreams:
    """The engineer streams open on this relay: who opened each, for which gateway.

    Finished streams are dropped as the watch goes over the table, so nothing has to be told
    when a stream ends (the data path stays as it is).
    """

    def __init__(self) -> None:
        self._streams: dict[TunnelStream, tuple[Engineer, str]] = {}

    def opened(self, stream: TunnelStream, engineer: Engineer, gateway_id: str) -> None:
        self._streams[stream] = (engineer, gateway_id)

    def forget(self, stream: TunnelStream) -> None:
        self._streams.pop(stream, None)

    def live(self) -> Iterator[tuple[TunnelStream, Engineer, str]]:
        """The streams still open (finished ones are forgotten on the way)."""
        for stream, (engineer, gateway_id) in list(self._streams.items()):
            if stream.finished:
                del self._streams[stream]
            else:
                yield stream, engineer, gateway_id

    def __len__(self) -> int:
        return len(self._streams)


class AccessWatch(PeriodicService):
    """Keeps the engineers' access current while the relay runs (see the module docstring)."""

    name = "engineer-access-watch"

    def __init__(
        self,
        credentials: TokenFile,
        authorisation: PatternAuthorisation,
        live: LiveStreams,
        clock: IReactorTime,
        metrics: RelayMetrics,
        *,
        audit: IAuditTrail | None = None,
        last_used: LastUsed | None = None,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        self.credentials = credentials
        self.authorisation = authorisation
        self.live = live
        self.clock = clock
        self.audit = audit
        self.last_used = last_used
        self.interval = interval
        self._known = {entry.key: entry.name for entry in credentials.entries.values()}
        registry = metrics.registry
        self.file_errors = Counter(
            "relay_engineer_file_errors_total",
            "Readings of engineers.toml that were unusable (every engineer refused meanwhile)",
            registry=registry,
        )
        self.file_usable = Gauge(
            "relay_engineer_file_usable",
            "1 while engineers.toml is usable, 0 while every engineer is refused",
            registry=registry,
        )
        self.engineers = Gauge(
            "relay_engineers", "Engineers listed in engineers.toml", registry=registry
        )
        self.ended = Counter(
            "relay_engineer_streams_ended_total",
            "Engineer streams ended because their access was withdrawn",
            registry=registry,
        )
        self.file_usable.set(0 if credentials.problem else 1)
        self.engineers.set(len(credentials.entries))
        credentials.on_reload = self.file_read

    def stopService(self) -> Deferred[None]:
        stopped = super().stopService()
        if self.last_used is not None:
            self.last_used.flush(keep=self._keep(), force=True)
        return stopped

    def check(self) -> None:
        """One round; never raises (a LoopingCall stops on the first exception)."""
        try:
            self.credentials.reload()
            self.end_withdrawn()
            if self.last_used is not None:
                self.last_used.flush(keep=self._keep())
        except Exception:
            log.failure("checking engineer access")

    def _keep(self) -> set[str] | None:
        if self.credentials.problem is not None:
            return None  # keep every record while the file cannot be read
        return set(self.credentials.entries)

    def end_withdrawn(self) -> int:
        """End the streams whose access is gone; how many."""
        ending: dict[object, list[tuple[TunnelStream, Engineer, str]]] = {}
        for stream, engineer, gateway_id in self.live.live():
            why = self.authorisation.withdrawn(engineer, gateway_id)
            if why is not None:
                ending.setdefault(stream.connection, []).append((stream, engineer, why))
        count = 0
        for connection, streams in ending.items():
            _, engineer, why = streams[0]
            ended = {stream for stream, _, _ in streams}
            others = (
                [s for s in connection.streams.values() if not s.finished and s not in ended]
                if isinstance(connection, TunnelConnection)
                else [None]  # not a connection we can close: end the streams alone
            )
            log.info(
                "ending {count} stream(s) of engineer {engineer!r} from {peer}: {why}",
                count=len(ended),
                engineer=engineer.name,
                peer=_peer(connection),
                why=why,
            )
            if others or not isinstance(connection, TunnelConnection):
                for stream in ended:
                    stream.reset(ErrorCodes.CANCEL)
            else:
                connection.close(ErrorCodes.NO_ERROR, why)
            for stream in ended:
                self.live.forget(stream)
            count += len(ended)
        self.ended.inc(count)
        return count

    def file_read(self, credentials: TokenFile, problem: str | None) -> None:
        """Told by `TokenFile` after each reading: count it, audit who came and went."""
        if problem is not None:
            self.file_errors.inc()
            self.file_usable.set(0)
            self.engineers.set(0)
            return
        self.file_usable.set(1)
        now = {entry.key: entry.name for entry in credentials.entries.values()}
        self.engineers.set(len(now))
        for key in sorted(now.keys() - self._known.keys()):
            self._record("engineer.added", now[key])
        for key in sorted(self._known.keys() - now.keys()):
            self._record("engineer.removed", self._known[key])
        self._known = now

    def _record(self, event: str, name: str) -> None:
        log.info("{event}: {name!r} ({file})", event=event, name=name, file=self.credentials.path)
        if self.audit is None:
            return
        try:
            self.audit.record(event, who=name, file=str(self.credentials.path))
        except AuditWriteError as e:
            log.error("cannot audit {event}: {error}", event=event, error=str(e))


def _peer(connection: object) -> str:
    transport = getattr(connection, "transport", None)
    peer = transport.getPeer() if transport is not None else None
    return str(getattr(peer, "host", "?"))
