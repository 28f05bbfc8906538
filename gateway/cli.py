"""The ``gateway`` command: argv, exit codes, logging, and the reactor.

Only this module reads argv, prints, exits or imports the global reactor.  A user's mistake (bad
flag, bad config, unreadable certificate) is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)

from gateway import __version__
from gateway.config import (
    Address,
    ConfigError,
    load_gateway_config,
    load_relay_config,
    parse_address,
)
from gateway.pki_cli import add_pki_commands, run_pki
from gateway.relay.credentials import CredentialFileError, add_engineer
from gateway.tls import TLSFileError

EXIT_USAGE = 2


class UsageError(Exception):
    """One line for the user; exit code 2."""


def _address(text: str) -> Address:
    try:
        return parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="gateway",
        description="Remote service gateway: reach a processor's web UI on an isolated plant "
        "network through an outbound mutual-TLS tunnel.",
    )
    top.add_argument("--version", action="version", version=f"gateway {__version__}")
    top.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="log as text or JSON lines"
    )
    top.add_argument(
        "--log-level", choices=["debug", "info", "warn", "error"], default="info", help="log level"
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="the edge daemon (foreground; systemd runs it)")
    run.add_argument("-c", "--config", required=True, type=Path, help="gateway.toml")

    relay = sub.add_parser(
        "relay",
        help="the vendor relay (foreground), or 'relay add-engineer NAME'",
        description="Run the relay, or with 'add-engineer NAME' create an engineer token "
        "(printed once; only its hash is stored).",
    )
    relay.add_argument("action", nargs="*", metavar="add-engineer NAME", help="manage engineers")
    relay.add_argument("-c", "--config", required=True, type=Path, help="relay.toml")

    connect = sub.add_parser(
        "connect",
        help="engineer's local forward to one processor target",
        epilog="example: gateway connect --relay relay.example.com:9443 --ca ca.pem "
        "--token $TOKEN --gateway plant7 --target web --listen 127.0.0.1:8080",
    )
    connect.add_argument("--relay", required=True, type=_address, help="relay engineer HOST:PORT")
    connect.add_argument("--ca", required=True, type=Path, help="CA that signed the relay's cert")
    connect.add_argument(
        "--token",
        default=os.environ.get("GATEWAY_TOKEN"),
        help="engineer token (or set GATEWAY_TOKEN, which keeps it out of the process list)",
    )
    connect.add_argument("--gateway", required=True, help="gateway id")
    connect.add_argument("--target", required=True, help="target name on that gateway")
    connect.add_argument(
        "--listen", default="127.0.0.1:8080", type=_address, help="local HOST:PORT"
    )
    connect.add_argument("--server-name", help="relay certificate name, if not the HOST")

    add_pki_commands(sub)

    demo = sub.add_parser("demo", help="the whole stack on loopback, ready to try")
    demo.add_argument("--workdir", type=Path, help="where to put configs, certificates, logs")
    demo.add_argument("--mode", choices=["attended", "unattended"], default="unattended")

    proc = sub.add_parser("demo-processor", help="the demo processor web UI alone")
    proc.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT")
    proc.add_argument("--name", default="Demo vision processor", help="name shown on the page")
    return top


def _start_logging(fmt: str, level: str, stream: TextIO) -> None:
    observer = jsonFileLogObserver(stream) if fmt == "json" else textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(observer, [predicate])], redirectStandardIO=False
    )


def _tune_malloc() -> None:
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


def _exit_with_parent() -> None:
    """Under ``gateway demo``, die with the parent even if it is killed with SIGKILL."""
    if os.environ.get("GATEWAY_EXIT_WITH_PARENT") != "1" or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:
        raise SystemExit(1)


def _second_signal_stops_at_once(reactor: Any) -> None:
    """First SIGINT/SIGTERM: graceful (drain).  Second: stop now."""
    count = {"n": 0}

    def handler(signum: int, frame: object) -> None:
        count["n"] += 1
        if count["n"] == 1:
            reactor.callFromThread(reactor.stop)
        else:
            sys.stderr.write("gateway: second signal, stopping at once\n")
            os._exit(128 + signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _react(main: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
    """Run ``main`` under the reactor and return its exit code."""
    from twisted.internet import task

    result = {"code": 0}

    async def wrapped(reactor: Any) -> None:
        reactor.callWhenRunning(_second_signal_stops_at_once, reactor)
        result["code"] = await main(reactor)

    try:
        task.react(lambda r: Deferred.fromCoroutine(wrapped(r)))
    except SystemExit as e:
        if e.code not in (0, None) and not result["code"]:
            result["code"] = int(e.code) if isinstance(e.code, int) else 1
    return result["code"]


def _global_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _raise_listen_errors(service: Any) -> None:
    """A port already in use must stop the program with a clear line, not just log."""
    for child in getattr(service, "services", []):
        if hasattr(child, "_raiseSynchronously"):
            child._raiseSynchronously = True
        _raise_listen_errors(child)


async def _run_service(reactor: Any, service: Any) -> int:
    """Start a service tree; stop it (gracefully) when the reactor shuts down."""
    _raise_listen_errors(service)
    try:
        service.startService()
    except CannotListenError as e:
        print(
            f"gateway: cannot listen on {e.interface or '*'}:{e.port}: {e.socketError}",
            file=sys.stderr,
        )
        await service.stopService()
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    await Deferred()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = load_gateway_config(args.config)
    from gateway.edge.service import makeService

    daemon = makeService(config, _global_reactor())
    return _react(lambda reactor: _run_service(reactor, daemon))


def cmd_relay(args: argparse.Namespace) -> int:
    config = load_relay_config(args.config)
    if args.action:
        if len(args.action) != 2 or args.action[0] != "add-engineer":
            raise UsageError("usage: gateway relay add-engineer NAME -c relay.toml")
        token = add_engineer(config.engineers.tokens, args.action[1])
        print(
            f"Engineer {args.action[1]!r} added to {config.engineers.tokens}. "
            "Their token (shown once, store it now):",
            file=sys.stderr,
        )
        print(token)
        return 0
    from gateway.relay.service import makeService

    daemon = makeService(config, _global_reactor())
    return _react(lambda reactor: _run_service(reactor, daemon))


def cmd_connect(args: argparse.Namespace) -> int:
    from gateway.connect import ConnectOptions, EngineerClient

    if not args.token:
        raise UsageError("connect: an engineer token is needed: --token or GATEWAY_TOKEN")
    if not args.ca.is_file():
        raise UsageError(f"connect: --ca {args.ca}: file does not exist")
    options = ConnectOptions(
        relay=args.relay,
        ca=args.ca.resolve(),
        token=args.token,
        gateway=args.gateway,
        target=args.target,
        listen=args.listen,
        server_name=args.server_name,
    )

    def report(line: str) -> None:
        print(f"gateway connect: {line}", file=sys.stderr, flush=True)

    client = EngineerClient(options, _global_reactor(), report)
    url = f"http://{options.listen}/"

    async def main(reactor: Any) -> int:
        _raise_listen_errors(client)
        try:
            client.startService()
        except CannotListenError as e:
            report(f"cannot listen on {options.listen}: {e.socketError}")
            return 1
        reactor.addSystemEventTrigger("before", "shutdown", client.stopService)
        report(
            f"forwarding {url} -> target {options.target!r} on gateway {options.gateway!r} "
            f"via relay {options.relay}"
        )
        try:
            info = await client.check_gateway()
            state = "online" if info.get("online") else "offline (waiting for it)"
            report(f"gateway {options.gateway!r} is {state}; open {url}")
        except Exception as e:
            report(str(e))
        await Deferred()
        return 0

    return _react(main)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo.orchestrator import run_demo

    return run_demo(args.workdir, args.mode)


def cmd_demo_processor(args: argparse.Namespace) -> int:
    from gateway.demo.processor import run_processor

    try:
        parse_address(args.listen)
    except ValueError as e:
        raise UsageError(f"demo-processor: --listen: {e}") from None

    async def main(reactor: Any) -> int:
        try:
            await run_processor(reactor, args.listen)
        except CannotListenError as e:
            print(f"gateway: cannot listen on {args.listen}: {e.socketError}", file=sys.stderr)
            return 1
        return 0

    return _react(main)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "relay": cmd_relay,
    "connect": cmd_connect,
    "demo": cmd_demo,
    "demo-processor": cmd_demo_processor,
}


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)  # bad flags: argparse prints usage and exits 2
    if args.command == "pki":
        raise SystemExit(run_pki(args, sys.stdout, sys.stderr))
    _exit_with_parent()
    if args.command in ("run", "relay", "connect"):
        _tune_malloc()
    if args.command not in ("demo",):
        _start_logging(args.log_format, args.log_level, sys.stderr)
    try:
        code = COMMANDS[args.command](args)
    except (ConfigError, TLSFileError, CredentialFileError, UsageError) as e:
        print(f"gateway: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except CannotListenError as e:
        print(f"gateway: cannot listen on {e.interface}:{e.port}: {e.socketError}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code)
