"""``gateway snapshot -c gateway.toml -o FILE.tar.gz`` and ``gateway snapshot --inspect FILE``.

For sites with no internet: everything support would look at, in one archive written 0600
(layout in `gateway.snapshot` and README.md, "Snapshot").  Works without the daemon; then the
archive, and this command's output, say that the live parts (its status) are missing.  Logs come
from the journal when the gateway runs under systemd (``journalctl -u gateway``, run here, in the
CLI, never in the daemon), else from the log files given with ``--log-file``.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from gateway.cli.common import EXIT_OK, EXIT_REFUSED, Commands, Console, Refused, UsageError

JOURNAL_UNIT = "gateway"
JOURNAL_SINCE = "-24h"
MAX_LOG_BYTES = 5 << 20
"""The newest this many bytes of each log: a month of logs is not what support reads first."""
COMMAND_TIMEOUT = 15.0


def register(commands: Commands) -> None:
    parser = commands.add(
        "snapshot",
        snapshot,
        help="one archive for support: versions, redacted config, checks, status, logs, audit",
        description="Write an archive for support (no private key, token, password or code is "
        "ever in it), or list and verify one with --inspect.",
    )
    parser.add_argument("-c", "--config", type=Path, help="gateway.toml")
    parser.add_argument("-o", "--output", type=Path, help="the archive to write (FILE.tar.gz)")
    parser.add_argument("--inspect", type=Path, metavar="FILE", help="list and verify an archive")
    parser.add_argument(
        "--log-file", type=Path, action="append", default=[], metavar="FILE",
        help="a log file to include (when the gateway does not log to the journal)",
    )  # fmt: skip
    parser.add_argument(
        "--since", default=JOURNAL_SINCE, help="journal entries since (default -24h)"
    )
    parser.add_argument("--no-checks", action="store_true", help="do not run the checks")


def snapshot(args: argparse.Namespace, console: Console) -> int:
    if args.inspect is not None:
        if args.output is not None or args.config is not None:
            raise UsageError("--inspect takes only the archive")
        return inspect(args.inspect, console)
    if args.config is None or args.output is None:
        raise UsageError("snapshot needs -c gateway.toml and -o FILE.tar.gz (or --inspect FILE)")
    return take(args, console)


def inspect(path: Path, console: Console) -> int:
    from gateway.snapshot import SnapshotDamaged
    from gateway.snapshot import inspect as read

    try:
        found = read(path)
    except SnapshotDamaged as e:
        raise Refused(str(e)) from None
    console.print(f"{path}: snapshot of {found.manifest.get('created', '?')}")
    width = max((len(name) for name, _, _ in found.members), default=0)
    for name, size, verdict in found.members:
        console.print(f"  {name:<{width}}  {size:>9}  {verdict}")
    for note in found.manifest.get("missing", []):
        console.print(f"  missing: {note}")
    if not found.ok:
        console.tell(f"gateway: {path} does not match its manifest: " + "; ".join(found.problems))
        return EXIT_REFUSED
    console.print(f"all {len(found.members)} members match the manifest")
    return EXIT_OK


def take(args: argparse.Namespace, console: Console) -> int:
    from gateway.cli.check import find_daemon, run_cli_checks
    from gateway.cli.process import react
    from gateway.config import load_gateway_config
    from gateway.snapshot import Snapshot, SnapshotRefused

    config = load_gateway_config(args.config)
    if args.output.exists() and args.output.is_dir():
        raise UsageError(f"{args.output} is a folder; give a file name like snapshot.tar.gz")
    seen = find_daemon(config)
    archive = Snapshot(secrets=known_secrets(config))
    results: dict[str, Any] = {}
    if not args.no_checks:

        async def main(reactor: Any) -> int:
            results["checks"] = await run_cli_checks(reactor, config, seen)
            return 0

        if args.log_level == "info":
            args.log_level = "warn"
        react(console, args, main)
    gather(archive, config, seen, results.get("checks"), args)
    try:
        archive.write(args.output)
    except SnapshotRefused as e:
        raise Refused(str(e)) from None
    except OSError as e:
        raise Refused(f"{args.output}: cannot write: {e.strerror or e}") from None
    console.print(f"wrote {args.output} ({len(archive.members) + 2} members, mode 0600)")
    for note in archive.notes:
        console.print(f"  missing: {note}")
    return EXIT_OK


def known_secrets(config: Any) -> list[str]:
    """Values that must appear nowhere: the proxy password, the private key's body."""
    secrets: list[str] = []
    creds = config.relay.proxy_credentials
    if creds is not None:
        secrets.append(creds.password)
        secrets.append(base64.b64encode(f"{creds.user}:{creds.password}".encode()).decode())
    try:
        key = config.relay.key.read_text("ascii", "replace")
    except OSError:
        key = ""
    secrets += [line for line in key.splitlines() if len(line) >= 16 and "-----" not in line]
    return secrets


def gather(archive: Any, config: Any, seen: Any, checks: Any, args: argparse.Namespace) -> None:
    import netifaces

    from gateway.checks.network import network_facts
    from gateway.snapshot import certificate_file_summary, versions

    archive.add_json("versions.json", versions())
    archive.add_toml("config/gateway.toml", config.path.read_text("utf-8", "replace"))
    if checks is None:
        archive.missing("checks", "not run (--no-checks)")
    else:
        ok = bool(checks) and all(r.ok for r in checks)
        archive.add_json("checks.json", {"ok": ok, "checks": [r.to_json() for r in checks]})
    archive.add_json("network.json", network_facts(netifaces).to_json())
    archive.add_text("routes.txt", route_table())
    link = config.relay
    archive.add_json(
        "certificates.json",
        [
            certificate_file_summary(link.ca, "pinned relay CA ([relay] ca)"),
            certificate_file_summary(link.cert, "this gateway ([relay] cert)"),
        ],
    )
    if seen.status is not None:
        archive.add_json("status.json", seen.status)
    elif seen.running:
        archive.missing("status", f"a daemon runs ({seen.where}) but did not give its status")
    else:
        archive.missing("status", "the gateway daemon was not running: no live status")
    add_logs(archive, args)
    add_audit(archive, config.state_dir)


def route_table() -> str:
    """``ip route`` for both families, else the kernel's tables."""
    parts = []
    ip = shutil.which("ip")
    for family in ("-4", "-6"):
        if ip is not None:
            parts.append(
                f"$ ip {family} route show table all\n"
                + _run([ip, family, "route", "show", "table", "all"])
            )
    if not parts:
        for name in ("/proc/net/route", "/proc/net/ipv6_route"):
            try:
                parts.append(f"{name}\n" + Path(name).read_text())
            except OSError:
                continue
    return "\n".join(parts) or "no route table could be read\n"


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({argv[0]} failed: {e})\n"
    return done.stdout + (f"(stderr: {done.stderr.strip()})\n" if done.stderr.strip() else "")


def add_logs(archive: Any, args: argparse.Namespace) -> None:
    journal = journal_text(args.since)
    if journal:
        archive.add_text("logs/journal.txt", journal)
    for path in args.log_file:
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - MAX_LOG_BYTES))
                archive.add_text(f"logs/{path.name}", f.read().decode("utf-8", "replace"))
        except OSError as e:
            archive.missing(f"logs/{path.name}", f"cannot read {path}: {e.strerror or e}")
    if not journal and not args.log_file:
        archive.missing(
            "logs",
            "none: the gateway does not run under systemd here (no journal entries for unit "
            f"{JOURNAL_UNIT!r}) and no log file was given (--log-file FILE)",
        )


def journal_text(since: str) -> str:
    """The gateway unit's journal, when systemd runs here and it has entries."""
    journalctl = shutil.which("journalctl")
    if journalctl is None or not Path("/run/systemd/system").is_dir():
        return ""
    text = _run([journalctl, "-u", JOURNAL_UNIT, "--since", since, "--no-pager", "-o",
                 "short-iso"])  # fmt: skip
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or all(line.startswith("-- No entries") for line in lines):
        return ""
    return text


def add_audit(archive: Any, state_dir: Path) -> None:
    from gateway.auditlog.files import audit_folder, trail_files

    folder = audit_folder(state_dir)
    try:
        files = trail_files(folder)
    except OSError as e:
        archive.missing("audit", f"cannot list {folder}: {e.strerror or e}")
        return
    if not files:
        archive.missing("audit", f"no audit trail in {folder}")
        return
    for path in files:
        try:
            archive.add_jsonl(f"audit/{path.name}", path.read_bytes())
        except OSError as e:
            archive.missing(f"audit/{path.name}", f"cannot read: {e.strerror or e}")
