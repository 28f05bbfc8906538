"""``gateway check -c gateway.toml [--json]``: what is wrong on the way to the relay, and what to
ask IT for.  Exit 0 when every check passes, 1 when any fails, 2 for a bad configuration.

Works with and without a running daemon.  When one runs (its control socket or status listener
answers), its tunnel is its own: the command reads the daemon's tunnel state instead of dialling
a second tunnel as the same gateway, which would make the relay drop the daemon's.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path
from typing import Any

from attrs import frozen

from gateway.cli.common import EXIT_OK, EXIT_REFUSED, Commands, Console
from gateway.config import GatewayConfig

STATUS_TIMEOUT = 3.0
CONTROL_SOCKET_NAME = "control.sock"


def register(commands: Commands) -> None:
    parser = commands.add(
        "check",
        check,
        help="connectivity checks: what is wrong on the way to the relay, and what to ask IT for",
        description="Check interfaces, DNS, the proxy, TCP, TLS (and TLS interception), the "
        "clock, this gateway's certificate, the tunnel and each target. Exit 0: all pass; "
        "1: something failed; 2: bad configuration.",
    )
    parser.add_argument("-c", "--config", required=True, type=Path, help="gateway.toml")
    parser.add_argument("--json", action="store_true", help='print {"ok", "checks": [...]}')


@frozen
class DaemonSeen:
    """What `find_daemon` learnt: whether a daemon runs for this config, and its status."""

    running: bool
    status: dict[str, Any] | None = None
    where: str = ""


def find_daemon(config: GatewayConfig) -> DaemonSeen:
    """Ask the daemon behind ``config`` for its status: control socket first, then the status
    listener.  Blocking and short (the command has not started its reactor yet)."""
    from gateway.cli.unixhttp import NoAnswer, call

    socket_path = config.state_dir / CONTROL_SOCKET_NAME
    alive = False
    try:
        answer = call(socket_path, "GET", "/api/status", timeout=STATUS_TIMEOUT)
        alive = True
        if answer.status == 200 and isinstance(answer.body, dict):
            return DaemonSeen(True, answer.body, f"control socket {socket_path}")
    except NoAnswer as e:
        alive = e.kind not in ("absent",)
    if config.status_listen is not None:
        url = f"http://{config.status_listen}/api/status"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=STATUS_TIMEOUT) as response:
                body = json.loads(response.read(4 << 20))
            if isinstance(body, dict):
                return DaemonSeen(True, body, url)
        except (OSError, ValueError):
            pass
    return DaemonSeen(alive, None, f"control socket {socket_path}" if alive else "")


def daemon_tunnel(seen: DaemonSeen) -> Any:
    from gateway.checks.env import TunnelState

    if not seen.running:
        return None
    tunnel = (seen.status or {}).get("tunnel")
    if not isinstance(tunnel, dict):
        return TunnelState(
            "unknown", None, None, None, f"a daemon runs ({seen.where}) but its status is unread"
        )
    return TunnelState(
        state=str(tunnel.get("state")),
        since=tunnel.get("since"),
        rtt_ms=tunnel.get("rtt_ms"),
        last_error=tunnel.get("last_error"),
        via=f"the running daemon, {seen.where}",
    )


def run_cli_checks(reactor: Any, config: GatewayConfig, seen: DaemonSeen) -> Any:
    """The checks as the CLI runs them (also used by ``gateway snapshot``)."""
    from gateway.checks import CheckEnv, run_checks, thread_resolve

    state = daemon_tunnel(seen)
    env = CheckEnv(
        config,
        reactor,
        thread_resolve(reactor),
        tunnel_state=(lambda: state) if state is not None else None,
        fresh_tunnel=not seen.running,
    )
    return run_checks(env)


def check(args: argparse.Namespace, console: Console) -> int:
    from gateway.cli.process import react
    from gateway.config import load_gateway_config

    config = load_gateway_config(args.config)
    seen = find_daemon(config)
    found: dict[str, Any] = {}

    async def main(reactor: Any) -> int:
        found["results"] = await run_cli_checks(reactor, config, seen)
        return 0

    if args.log_level == "info":  # the report is the output; the log only for what goes wrong
        args.log_level = "warn"
    react(console, args, main)
    results = found.get("results", [])
    ok = bool(results) and all(r.ok for r in results)
    if args.json:
        console.print(json.dumps(report_json(results), indent=2))
    else:
        for line in human_view(results, seen, marks=_marks(console)):
            console.print(line)
    return EXIT_OK if ok else EXIT_REFUSED


def report_json(results: list[Any]) -> dict[str, Any]:
    """``{"ok": bool, "checks": [{"name", "ok", "detail", "remedy"}, ...]}``."""
    return {
        "ok": bool(results) and all(r.ok for r in results),
        "checks": [r.to_json() for r in results],
    }


def _marks(console: Console) -> tuple[str, str]:
    encoding = (getattr(console.out, "encoding", None) or "").lower().replace("-", "")
    return ("✓", "✗") if encoding == "utf8" else ("ok", "FAIL")


def human_view(results: list[Any], seen: DaemonSeen, *, marks: tuple[str, str]) -> list[str]:
    """Remedies first (what to do), then every check with its mark and what it found."""
    good, bad = marks
    failed = [r for r in results if not r.ok]
    lines: list[str] = []
    if not failed:
        lines.append(f"{good} all {len(results)} checks passed")
    else:
        lines.append(f"{bad} {len(failed)} of {len(results)} checks failed")
        remedies = [r for r in failed if r.remedy]
        if remedies:
            lines += ["", "What to do:"]
            lines += [f"  {bad} {r.name}: {r.remedy}" for r in remedies]
    width = max((len(r.name) for r in results), default=0)
    lines += ["", "Checks:"]
    for r in results:
        lines.append(f"  {good if r.ok else bad:<4} {r.name:<{width}}  {r.detail}")
    if seen.running:
        lines += [
            "",
            f"A gateway daemon is running ({seen.where}): its tunnel was read, not dialled again.",
        ]
    return lines
