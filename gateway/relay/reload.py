"""``SIGHUP`` on the relay: engineers.toml and the TLS identities again, without a restart.

* **engineers.toml** is re-read at once (`AccessWatch.check`: the same reading the watch does
  twice a second, so a removed engineer's streams end and a new one gets in now);
* **the certificates and keys** of both listeners, and the CA that signs gateway certificates
  (paths in relay.toml, or the files replaced in place): every new connection's handshake uses
  them; connections and tunnels that are up carry on;
* **everything else** (listen addresses, limits, heartbeat, the engineers file's path, the state
  directory) is left as it runs, and the log names what needs a restart.

A relay.toml that does not load, or a certificate that does not match its key, changes nothing:
one log line names the file, the key and the problem, and the relay serves on as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from attrs import frozen
from OpenSSL import SSL
from prometheus_client import CollectorRegistry
from twisted.internet.interfaces import IOpenSSLContextFactory, IReactorTime
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from zope.interface import implementer

from gateway.audit import AuditWriteError, IAuditTrail
from gateway.config import ConfigError, RelayConfig
from gateway.reloading import ReloadMetrics
from gateway.tls import TLSFileError, server_options

log = Logger()


@implementer(IOpenSSLContextFactory)
class SwappableOptions:
    """A listener's TLS options that a reload can replace: each new connection asks for the
    context of the options current then (Twisted calls ``getContext`` per connection)."""

    def __init__(self, options: CertificateOptions) -> None:
        self.current = options

    def getContext(self) -> SSL.Context:
        return self.current.getContext()


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


@frozen
class RelayFiles:
    """SHA-256 of the files each listener's TLS is made of."""

    gateways: str
    engineers: str


def relay_files(config: RelayConfig) -> RelayFiles:
    """Read the listeners' PEM files (small); OSError if one cannot be read."""
    gw, eng = config.gateways, config.engineers
    return RelayFiles(_digest(gw.cert, gw.key, gw.ca), _digest(eng.cert, eng.key))


_RESTART_ONLY = (
    ("gateways.listen", lambda c: c.gateways.listen),
    ("gateways.heartbeat", lambda c: c.gateways.heartbeat),
    ("gateways limits", lambda c: c.gateways.limits),
    ("gateways.congestion_control", lambda c: c.gateways.congestion_control),
    ("engineers.listen", lambda c: c.engineers.listen),
    ("engineers.tokens", lambda c: c.engineers.tokens),
    ("engineers login limits", lambda c: c.engineers.logins),
    ("engineers limits", lambda c: c.engineers.limits),
    ("engineers.congestion_control", lambda c: c.engineers.congestion_control),
    ("metrics.listen", lambda c: c.metrics_listen),
    ("service.state_dir", lambda c: c.state_dir),
    ("service.drain_timeout", lambda c: c.drain_timeout),
    ("service.half_close_timeout", lambda c: c.half_close_timeout),
)


@frozen
class RelayReloadPlan:
    gateways_tls: bool = False
    engineers_tls: bool = False
    restart_needed: tuple[str, ...] = ()

    def changes(self) -> list[str]:
        out = []
        if self.gateways_tls:
            out.append("gateways.cert/key/ca")
        if self.engineers_tls:
            out.append("engineers.cert/key")
        out += [f"{k} (needs a restart)" for k in self.restart_needed]
        return out


def plan_relay_reload(
    old: RelayConfig, new: RelayConfig, old_files: RelayFiles, new_files: RelayFiles
) -> RelayReloadPlan:
    """What a new relay.toml changes (the decision only)."""
    gw_old, gw_new = old.gateways, new.gateways
    eng_old, eng_new = old.engineers, new.engineers
    return RelayReloadPlan(
        gateways_tls=(gw_old.cert, gw_old.key, gw_old.ca) != (gw_new.cert, gw_new.key, gw_new.ca)
        or old_files.gateways != new_files.gateways,
        engineers_tls=(eng_old.cert, eng_old.key) != (eng_new.cert, eng_new.key)
        or old_files.engineers != new_files.engineers,
        restart_needed=tuple(name for name, get in _RESTART_ONLY if get(old) != get(new)),
    )


@frozen
class RelayReloadOutcome:
    applied: bool
    plan: RelayReloadPlan | None = None
    problem: str | None = None


class RelayReloader:
    """Carries out reloads on the relay daemon (`gateway.relay.service.RelayDaemon`)."""

    def __init__(
        self,
        *,
        config: RelayConfig,
        gateway_tls: SwappableOptions,
        engineer_tls: SwappableOptions,
        recheck_engineers: Callable[[], None],
        audit: IAuditTrail,
        clock: IReactorTime,
        registry: CollectorRegistry,
        load: Callable[[Path], RelayConfig] | None = None,
    ) -> None:
        from gateway.config import load_relay_config

        self.config = config
        self._gateway_tls, self._engineer_tls = gateway_tls, engineer_tls
        self._recheck = recheck_engineers
        self._audit_trail = audit
        self._clock = clock
        self.load = load or load_relay_config
        self.metrics = ReloadMetrics(registry, prefix="relay")
        self.metrics.last_success.set(clock.seconds())
        self.files = relay_files(config)

    def reload(self) -> RelayReloadOutcome:
        """Read relay.toml again and apply it; never raises (a signal handler calls it)."""
        try:
            return self._reload()
        except Exception:
            log.failure("reloading {file} failed", file=str(self.config.path))
            self.metrics.refused.inc()
            self.metrics.last_ok.set(0)
            return RelayReloadOutcome(False, problem="internal error (see the log)")

    def _reload(self) -> RelayReloadOutcome:
        old = self.config
        try:
            new = self.load(old.path)
            try:
                files = relay_files(new)
            except OSError as e:
                raise ConfigError(new.path, "", f"cannot read {e.filename}: {e.strerror}") from None
            plan = plan_relay_reload(old, new, self.files, files)
            gateway_tls = engineer_tls = None
            gw, eng = new.gateways, new.engineers
            if plan.gateways_tls:
                # Enrollment is not reloaded: the listener keeps taking what it took.
                gateway_tls = _options(
                    new, "gateways.cert", gw.cert, gw.key, gw.ca, enrollment=old.enrollment
                )
            if plan.engineers_tls:
                engineer_tls = _options(new, "engineers.cert", eng.cert, eng.key, None)
        except ConfigError as e:
            return self._refused(str(e))
        if gateway_tls is not None:
            self._gateway_tls.current = gateway_tls
        if engineer_tls is not None:
            self._engineer_tls.current = engineer_tls
        self._recheck()  # engineers.toml now, not at the watch's next round
        for key in plan.restart_needed:
            log.warn("{key} changed: takes effect after a restart", key=key)
        # What runs now: the new files, the old settings that need a restart.
        self.config = attrs.evolve(
            old, gateways=attrs.evolve(old.gateways, cert=gw.cert, key=gw.key, ca=gw.ca)
        )
        self.config = attrs.evolve(
            self.config, engineers=attrs.evolve(old.engineers, cert=eng.cert, key=eng.key)
        )
        self.files = files
        changes = plan.changes()
        self.metrics.applied.inc()
        self.metrics.last_ok.set(1)
        self.metrics.last_success.set(self._clock.seconds())
        log.info(
            "configuration reloaded from {file}: {changes}",
            file=str(new.path),
            changes=", ".join(changes) if changes else "engineers.toml re-read, nothing else",
        )
        self._audit("ok", file=str(new.path), changes=changes)
        return RelayReloadOutcome(True, plan=plan)

    def _refused(self, problem: str) -> RelayReloadOutcome:
        self.metrics.refused.inc()
        self.metrics.last_ok.set(0)
        log.error("configuration not reloaded, the running one stays: {problem}", problem=problem)
        self._audit("refused", file=str(self.config.path), problem=problem)
        return RelayReloadOutcome(False, problem=problem)

    def _audit(self, result: str, **details: Any) -> None:
        try:
            self._audit_trail.record("config.reloaded", who="SIGHUP", result=result, **details)
        except AuditWriteError as e:
            log.error("cannot audit the reload: {error}", error=str(e))


def _options(
    config: RelayConfig,
    key: str,
    cert: Path,
    private: Path,
    ca: Path | None,
    *,
    enrollment: object | None = None,
) -> CertificateOptions:
    try:
        return server_options(cert, private, client_ca=ca, enrollment=enrollment is not None)
    except TLSFileError as e:
        raise ConfigError(config.path, key, str(e)) from None
