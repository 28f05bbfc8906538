"""``SIGHUP``: read gateway.toml again and apply what changed, without dropping the tunnel.

Two halves.  `plan_reload` is the decision, plain data in and out: the old and the new
configuration (and fingerprints of the files they name, so a certificate replaced under the same
path counts as a change) give a `ReloadPlan` saying what to do.  `ConfigReloader` carries a plan
out on the running daemon (`gateway.edge.service.EdgeDaemon`), audits it and counts it.

What each change does:

* **targets** added are reachable at once; removed ones are refused from now on, and their live
  streams end (the engineer's stream is reset, the log and audit say "target removed from the
  allowlist by a reload"); a target whose address or kind changed ends its live streams too (they
  go to a processor the allowlist no longer names); a new ``connect_timeout`` alone keeps them;
* **the relay's address, CA (path or content), server name, proxy and its credentials, no_proxy**:
  the tunnel drains as on shutdown and reconnects with the new settings;
* **the certificate and key** (paths, or the files replaced in place: a renewal): the next
  connection presents them, the live tunnel carries on (`GatewayTunnelService.use_identity`);
* **heartbeat, connect timeout, congestion control, reconnect delay**: from the next connection;
* **[status] / [metrics]**: a new address is bound before the old one is closed; if it cannot be
  bound the old listener keeps serving and the log says why; new ``allowed_hosts`` apply to the
  next connection;
* **[checks] interval**, **[access]** timings, **[limits]**, drain and half-close timeouts: at
  once; **[access] mode**: only while the plant has not chosen one (its choice wins, as after a
  restart);
* **[service] state_dir** cannot move under a running daemon: the rest is applied and the log
  says it needs a restart.

A new file that does not load (TOML, a key, a certificate that does not match its key or names
another gateway) changes nothing: one log line names the file, the key and the problem.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs
from attrs import frozen
from prometheus_client import CollectorRegistry
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.audit import AuditWriteError
from gateway.config import ConfigError, GatewayConfig, RelayLink, Target
from gateway.reloading import ReloadMetrics
from gateway.tls import TLSFileError

log = Logger()

ListenerKind = Literal["status", "metrics"]

TARGET_REMOVED = "target removed from the allowlist by a reload"
TARGET_MOVED = "target changed by a reload"

_RECONNECT_KEYS = ("address", "ca", "server_name", "proxy", "proxy_credentials", "no_proxy")
"""``[relay]`` keys whose change replaces the tunnel: where it goes and whom it trusts."""
_NEXT_CONNECTION_KEYS = ("heartbeat", "connect_timeout", "congestion_control", "reconnect_cap")
"""``[relay]`` keys that apply from the next connection on."""
_KEY_NAMES = {
    "heartbeat": "heartbeat_interval/heartbeat_timeout",
    "reconnect_cap": "reconnect_max_delay",
}


@frozen
class Fingerprints:
    """What the files a configuration names held when they were read (SHA-256 each)."""

    identity: str
    """The certificate and the key together."""
    ca: str


def fingerprints(link: RelayLink) -> Fingerprints:
    """Read the ``[relay]`` cert, key and CA files (small); OSError if one cannot be read."""

    def digest(*paths: Path) -> str:
        h = hashlib.sha256()
        for path in paths:
            h.update(hashlib.sha256(path.read_bytes()).digest())
        return h.hexdigest()

    return Fingerprints(identity=digest(link.cert, link.key), ca=digest(link.ca))


@frozen
class ListenerChange:
    """What to do with the ``[status]`` or ``[metrics]`` listener."""

    rebind: bool = False
    """Its address changed (or it was added or removed)."""
    hosts: bool = False
    """Only its ``allowed_hosts`` changed: new rules for new connections."""


@frozen
class ReloadPlan:
    """What a reload changes; `changes` lists it in words for the log and the audit."""

    targets_added: tuple[str, ...] = ()
    targets_removed: tuple[str, ...] = ()
    targets_changed: tuple[str, ...] = ()
    targets_moved: tuple[str, ...] = ()
    """Changed in address or kind: their live streams end."""
    reconnect: tuple[str, ...] = ()
    """``[relay]`` keys that changed and need a new tunnel."""
    next_connection: tuple[str, ...] = ()
    """``[relay]`` keys that changed and apply from the next connection on."""
    identity: bool = False
    """The certificate or key changed (path or content)."""
    status: ListenerChange = ListenerChange()
    metrics: ListenerChange = ListenerChange()
    checks: bool = False
    access_mode: bool = False
    consent: bool = False
    limits: bool = False
    timeouts: tuple[str, ...] = ()
    """``[service]`` drain_timeout and half_close_timeout that changed."""
    restart_needed: tuple[str, ...] = ()
    """Keys that changed but cannot be applied to a running daemon."""

    @property
    def relay_changed(self) -> bool:
        return bool(self.reconnect or self.next_connection or self.identity)

    def changes(self) -> list[str]:
        """Each change in a few words: ``target web2 added``, ``relay.address``, ..."""
        out = [f"target {n} added" for n in self.targets_added]
        out += [f"target {n} removed" for n in self.targets_removed]
        out += [f"target {n} changed" for n in self.targets_changed]
        out += [f"relay.{_KEY_NAMES.get(k, k)}" for k in self.reconnect + self.next_connection]
        if self.identity:
            out.append("relay.cert/key")
        for name, change in (("status", self.status), ("metrics", self.metrics)):
            if change.rebind:
                out.append(f"{name}.listen")
            elif change.hosts:
                out.append(f"{name}.allowed_hosts")
        if self.checks:
            out.append("checks.interval")
        if self.access_mode:
            out.append("access.mode")
        if self.consent:
            out.append("access timings")
        if self.limits:
            out.append("limits")
        out += [f"service.{k}" for k in self.timeouts]
        out += [f"{k} (needs a restart)" for k in self.restart_needed]
        return out


def plan_reload(
    old: GatewayConfig, new: GatewayConfig, old_files: Fingerprints, new_files: Fingerprints
) -> ReloadPlan:
    """What to do to go from ``old`` to ``new`` (the decision only: nothing is touched)."""
    before = {t.name: t for t in old.targets}
    after = {t.name: t for t in new.targets}
    changed = tuple(n for n in after if n in before and before[n] != after[n])
    moved = tuple(n for n in changed if _moved(before[n], after[n]))
    link_old, link_new = old.relay, new.relay
    reconnect = tuple(k for k in _RECONNECT_KEYS if getattr(link_old, k) != getattr(link_new, k))
    if "ca" not in reconnect and old_files.ca != new_files.ca:
        reconnect += ("ca",)  # the same path, a new CA in it: whom we trust changed
    return ReloadPlan(
        targets_added=tuple(n for n in after if n not in before),
        targets_removed=tuple(n for n in before if n not in after),
        targets_changed=changed,
        targets_moved=moved,
        reconnect=reconnect,
        next_connection=tuple(
            k for k in _NEXT_CONNECTION_KEYS if getattr(link_old, k) != getattr(link_new, k)
        ),
        identity=(link_old.cert, link_old.key) != (link_new.cert, link_new.key)
        or old_files.identity != new_files.identity,
        status=_listener_change(
            old.status_listen, new.status_listen, old.status_allowed_hosts, new.status_allowed_hosts
        ),
        metrics=_listener_change(
            old.metrics_listen,
            new.metrics_listen,
            old.metrics_allowed_hosts,
            new.metrics_allowed_hosts,
        ),
        checks=old.checks_interval != new.checks_interval,
        access_mode=old.access_mode is not new.access_mode,
        consent=old.consent != new.consent,
        limits=old.limits != new.limits,
        timeouts=tuple(
            k for k in ("drain_timeout", "half_close_timeout") if getattr(old, k) != getattr(new, k)
        ),
        restart_needed=("service.state_dir",) if old.state_dir != new.state_dir else (),
    )


def _moved(old: Target, new: Target) -> bool:
    before = (old.address, old.kind, old.view_websocket)
    return before != (new.address, new.kind, new.view_websocket)


def _listener_change(
    old: object, new: object, old_hosts: tuple[str, ...], new_hosts: tuple[str, ...]
) -> ListenerChange:
    if old != new:
        return ListenerChange(rebind=True)
    return ListenerChange(hosts=new is not None and old_hosts != new_hosts)


@frozen
class ReloadOutcome:
    """What a reload did: applied (with its plan and any warnings) or refused (why)."""

    applied: bool
    plan: ReloadPlan | None = None
    problem: str | None = None
    warnings: tuple[str, ...] = ()


class ConfigReloader:
    """Carries out reloads on the edge daemon (see the module docstring).

    ``daemon``: the `gateway.edge.service.EdgeDaemon` (not imported: it builds this)."""

    def __init__(
        self,
        daemon: Any,
        clock: IReactorTime,
        registry: CollectorRegistry,
        *,
        load: Callable[[Path], GatewayConfig] | None = None,
    ) -> None:
        from gateway.config import load_gateway_config

        self._daemon = daemon
        self._clock = clock
        self.load = load or load_gateway_config
        """Reads the config file (tests hand in their own)."""
        self.metrics = ReloadMetrics(registry)
        self.metrics.last_success.set(clock.seconds())
        self.files = fingerprints(daemon.config.relay)

    def reload(self) -> ReloadOutcome:
        """Read the config file again and apply it; never raises (a signal handler calls it)."""
        try:
            return self._reload()
        except Exception:
            log.failure("reloading {file} failed", file=str(self._daemon.config.path))
            self.metrics.refused.inc()
            self.metrics.last_ok.set(0)
            return ReloadOutcome(False, problem="internal error (see the log)")

    def _reload(self) -> ReloadOutcome:
        daemon = self._daemon
        old = daemon.config
        try:
            new = self.load(old.path)
            files = _read_fingerprints(new)
            plan = plan_reload(old, new, self.files, files)
            endpoint_check = self._check_identity(new, plan)
        except ConfigError as e:
            return self._refused(str(e))
        if endpoint_check is not None:
            return self._refused(endpoint_check)
        warnings, running = self._apply(old, new, plan)
        if running.relay == new.relay:
            self.files = files
        # What runs now: the new file, but for what could not be applied (a port taken, the
        # state directory), so that the next SIGHUP tries those again.
        daemon.config = running
        changes = plan.changes()
        self.metrics.applied.inc()
        self.metrics.last_ok.set(1)
        self.metrics.last_success.set(self._clock.seconds())
        log.info(
            "configuration reloaded from {file}: {changes}",
            file=str(new.path),
            changes=", ".join(changes) if changes else "nothing changed",
        )
        self._audit("ok", file=str(new.path), changes=changes, warnings=list(warnings))
        return ReloadOutcome(True, plan=plan, warnings=tuple(warnings))

    def _refused(self, problem: str) -> ReloadOutcome:
        self.metrics.refused.inc()
        self.metrics.last_ok.set(0)
        log.error("configuration not reloaded, the running one stays: {problem}", problem=problem)
        self._audit("refused", file=str(self._daemon.config.path), problem=problem)
        return ReloadOutcome(False, problem=problem)

    def _audit(self, result: str, **details: Any) -> None:
        try:
            self._daemon.audit.record("config.reloaded", who="SIGHUP", result=result, **details)
        except AuditWriteError as e:
            log.error("cannot audit the reload: {error}", error=str(e))

    def _check_identity(self, new: GatewayConfig, plan: ReloadPlan) -> str | None:
        """Load the new relay settings' files now (so nothing is half applied), and refuse a
        certificate that names another gateway: the audit trail and sessions are this one's."""
        if not plan.relay_changed:
            return None
        from gateway.identity import gateway_id_from_certificate
        from gateway.tls import load_identity

        link = new.relay
        try:
            identity = load_identity(link.cert, link.key)
        except TLSFileError as e:
            return f"{new.path}: relay.cert: {e}"
        try:
            name = gateway_id_from_certificate(identity.original.to_cryptography())
        except ValueError as e:
            return f"{new.path}: relay.cert: {e}"
        if name != self._daemon.gateway_id:
            return (
                f"{new.path}: relay.cert: {link.cert} is for gateway {name!r}, this daemon is "
                f"{self._daemon.gateway_id!r} (a new id needs a restart)"
            )
        return None

    def _apply(
        self, old: GatewayConfig, new: GatewayConfig, plan: ReloadPlan
    ) -> tuple[list[str], GatewayConfig]:
        """Apply ``plan``; the warnings, and the configuration that runs now."""
        daemon = self._daemon
        warnings: list[str] = []
        running = new
        if plan.relay_changed:
            try:
                self._apply_relay(new, plan)
            except (TLSFileError, OSError, ValueError) as e:
                warnings.append(f"relay settings not applied: {e}")
                log.error("relay settings not applied, the old ones stay: {e}", e=str(e))
                running = attrs.evolve(running, relay=old.relay)
        daemon.policy.set_targets(new.targets)
        daemon.consent.allowlist_changed()
        gone = frozenset(plan.targets_removed)
        moved = frozenset(plan.targets_moved)
        for names, why in ((gone, TARGET_REMOVED), (moved, TARGET_MOVED)):
            if names:
                cut = daemon.forwarder.abort_targets(names)
                if cut:
                    log.info(
                        "ended {n} stream(s) to {targets}: {why}",
                        n=len(cut),
                        targets=", ".join(sorted(names)),
                        why=why,
                    )
        if plan.checks:
            daemon.checks.set_interval(new.checks_interval)
        daemon.checks.use_config(new)
        if plan.consent:
            daemon.consent.rules = new.consent
        if plan.limits and daemon.forwarder.limits is not None:
            daemon.forwarder.limits.limits = new.limits
        daemon.forwarder.half_close_timeout = new.half_close_timeout
        daemon.tunnel.drain_timeout = new.drain_timeout
        if plan.access_mode:
            self._apply_mode(new)
        listeners: tuple[tuple[ListenerKind, ListenerChange], ...] = (
            ("status", plan.status),
            ("metrics", plan.metrics),
        )
        for kind, change in listeners:
            if change.rebind or change.hosts:
                problem = daemon.rebind(kind, new, hosts_only=not change.rebind)
                if problem is not None:
                    warnings.append(problem)
                    running = attrs.evolve(
                        running, **{f"{kind}_listen": getattr(old, f"{kind}_listen")}
                    )
        for key in plan.restart_needed:
            warnings.append(f"{key} changed: takes effect after a restart")
            log.warn("{key} changed: takes effect after a restart", key=key)
        if plan.restart_needed:
            running = attrs.evolve(running, state_dir=old.state_dir)
        return warnings, running

    def _apply_relay(self, new: GatewayConfig, plan: ReloadPlan) -> None:
        daemon = self._daemon
        why = None
        if plan.reconnect:
            keys = ", ".join(f"relay.{k}" for k in plan.reconnect)
            why = f"{keys} changed by a reload"
        daemon.tunnel.use_link(new.relay, reconnect=why)
        daemon.renewal.link = new.relay  # renewals use the new files and relay too
        relay = str(new.relay.address)
        daemon.observer.relay = relay
        daemon.tunnel_status.relay = relay
        if plan.identity:
            daemon.metrics.set_certificate(new.relay.cert.read_bytes())

    def _apply_mode(self, new: GatewayConfig) -> None:
        """The file's mode, unless the plant chose one (saved in the state directory)."""
        daemon = self._daemon
        try:
            saved = daemon.state.read_mode()
        except Exception:
            saved = None
        if saved is not None:
            log.info(
                "access.mode in the file changed to {mode}, but the plant chose {saved} "
                "(`gateway access`), which stays",
                mode=new.access_mode.value,
                saved=saved.value,
            )
            return
        daemon.consent.apply_configured_mode(new.access_mode)


def _read_fingerprints(config: GatewayConfig) -> Fingerprints:
    try:
        return fingerprints(config.relay)
    except OSError as e:
        raise ConfigError(config.path, "relay", f"cannot read {e.filename}: {e.strerror}") from None


__all__ = [
    "ConfigReloader",
    "Fingerprints",
    "ListenerChange",
    "ReloadOutcome",
    "ReloadPlan",
    "fingerprints",
    "plan_reload",
]
