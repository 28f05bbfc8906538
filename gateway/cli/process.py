"""The process around a long-running command: logging, signals, the reactor and its exit code.

Only here is the global reactor imported, and only when a command is about to run it, so that
``gateway --help`` or a bad config never pays for Twisted's start-up.  Startup follows Twisted's
own ``twist``: build the service, start it under `task.react`, stop it before shutdown.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.cli.common import EXIT_REFUSED, Console, Refused

Main = Callable[[Any], Coroutine[Any, Any, int]]
"""What runs under the reactor: ``async def main(reactor) -> exit code``."""


def global_reactor() -> Any:
    """The reactor the programs are built on (installed on first import)."""
    from twisted.internet import reactor

    return reactor


def react(console: Console, args: argparse.Namespace, main: Main, *, daemon: bool = False) -> int:
    """Run ``main`` under the reactor, with logging on stderr; returns its exit code.

    ``daemon``: a program that moves tunnel bytes for hours (tune the allocator for it).
    """
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    exit_with_parent()
    if daemon:
        tune_malloc()
    start_logging(args.log_format, args.log_level, console)
    result = {"code": 0}

    async def wrapped(reactor: Any) -> None:
        reactor.callWhenRunning(second_signal_stops_at_once, reactor, console)
        result["code"] = await main(reactor)

    try:
        task.react(lambda r: Deferred.fromCoroutine(wrapped(r)))
    except SystemExit as e:
        if e.code not in (0, None) and not result["code"]:
            result["code"] = int(e.code) if isinstance(e.code, int) else EXIT_REFUSED
    return result["code"]


async def run_service(reactor: Any, service: Any, console: Console) -> int:
    """Start a service tree; stop it (gracefully) when the reactor shuts down."""
    from twisted.internet.defer import Deferred
    from twisted.internet.error import CannotListenError

    raise_listen_errors(service)
    try:
        service.startService()
    except CannotListenError as e:
        code = console.fail(
            Refused(f"cannot listen on {e.interface or '*'}:{e.port}: {e.socketError}")
        )
        forget_unstarted(service)
        await service.stopService()
        return code
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    if callable(getattr(service, "reload", None)):
        reload_on_sighup(reactor, service)
    await Deferred()
    return 0


def reload_on_sighup(reactor: Any, service: Any) -> None:
    """``SIGHUP`` (systemd's ``ExecReload=``): the service reads its config file again.

    The handler only schedules the work on the reactor (a signal can arrive anywhere); the
    reload runs between events, is small (one TOML file, a few PEM files) and never raises.
    """

    def reload_now() -> None:
        announce_reloading(service)
        outcome = service.reload()
        announce_reloaded(service, outcome)

    def handler(signum: int, frame: object) -> None:
        reactor.callFromThread(reload_now)

    signal.signal(signal.SIGHUP, handler)


def _notifier(service: Any) -> Any:
    """The daemon's systemd notifier (`gateway.sdnotify`), or None."""
    try:
        return service.getServiceNamed("sd_notify")
    except (KeyError, AttributeError):
        return None


def announce_reloading(service: Any) -> None:
    """Before every reload: systemd shows the unit reloading (``RELOADING=1`` with
    ``MONOTONIC_USEC``, so ``systemctl reload`` waits for the answer)."""
    notifier = _notifier(service)
    if notifier is not None:
        notifier.reloading()


def announce_reloaded(service: Any, outcome: Any) -> None:
    """After every reload, applied or refused (the old configuration runs on): ready again,
    with the current state line."""
    notifier = _notifier(service)
    if notifier is not None:
        notifier.reloaded()


def serve(console: Console, args: argparse.Namespace, service: Any) -> int:
    """Run a daemon's service tree until a signal stops it."""
    return react(console, args, lambda reactor: run_service(reactor, service, console), daemon=True)


def forget_unstarted(service: Any) -> None:
    """Take the services a failed start never reached out of the tree, so that stopping it stops
    only what started.  Twisted's ``MultiService.stopService`` stops every child, and a listener
    that never started cannot stop (``StreamServerEndpointService`` has no port to cancel): a
    second daemon refused on the control socket used to end in tracebacks."""
    for child in list(getattr(service, "services", [])):
        if child.running:
            forget_unstarted(child)
            continue
        service.services.remove(child)
        if child.name and service.namedServices.get(child.name) is child:
            del service.namedServices[child.name]
        child.parent = None


def raise_listen_errors(service: Any) -> None:
    """A port already in use must stop the program with a clear line, not just log."""
    for child in getattr(service, "services", []):
        if hasattr(child, "_raiseSynchronously"):
            child._raiseSynchronously = True
        raise_listen_errors(child)


def add_log_flags(parser: argparse.ArgumentParser) -> None:
    """``--log-format`` and ``--log-level`` after the command too (``gateway run -c F
    --log-format json``), as well as before it; given in neither place, the top level's
    defaults hold."""
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=argparse.SUPPRESS,
        help="log as text or JSON lines (one object a line)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warn", "error"],
        default=argparse.SUPPRESS,
        help="log level",
    )


def start_logging(fmt: str, level: str, console: Console) -> None:
    """Log lines on stderr: text, or JSON lines; under the journal without timestamps and with
    syslog priorities (`gateway.logformat`)."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
    )

    from gateway.logformat import LineObserver, journal_stream

    stream = console.err
    journal = journal_stream(os.environ, stream)
    observer = LineObserver(stream, json_lines=fmt == "json", journal=journal)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(observer, [predicate])], redirectStandardIO=False
    )


def second_signal_stops_at_once(reactor: Any, console: Console) -> None:
    """First SIGINT/SIGTERM: graceful (drain).  Second: stop now."""
    count = {"n": 0}

    def handler(signum: int, frame: object) -> None:
        count["n"] += 1
        if count["n"] == 1:
            reactor.callFromThread(reactor.stop)
        else:
            console.tell("gateway: second signal, stopping at once")
            os._exit(128 + signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def tune_malloc() -> None:
    """Keep freed buffers instead of returning them to the kernel after every megabyte.

    The tunnel allocates and frees ~1 MiB buffers per frame; glibc's defaults mmap and unmap
    each one (hundreds of thousands of page faults per GiB).  Raising the mmap and trim
    thresholds, as GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:trim_threshold=... would,
    measured +21 % throughput for ~40 MiB more RSS on a busy tunnel (TUNNEL-NOTES.md).
    """
    if not sys.platform.startswith("linux") or "GLIBC_TUNABLES" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    libc.mallopt(m_trim_threshold, 1024 * 1024 * 1024)


def exit_with_parent() -> None:
    """Under ``gateway demo``, die with the parent even if it is killed with SIGKILL."""
    if os.environ.get("GATEWAY_EXIT_WITH_PARENT") != "1" or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:
        raise SystemExit(1)
