"""``gateway enroll``: get this gateway's certificate from the relay with a one-time token.

The key is made here and never leaves the machine (0600; owned by the config's owner when run
as root, so the daemon's user can read it); only a CSR goes to the relay, over TLS to its
gateway listener (the tunnel's address, through the same proxy), checked against the pinned CA.
The certificate that comes back and the key are written together, atomically, and the config's
``[relay]`` is pointed at them (or, without a config, one is written from a template).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from gateway.cli.common import Commands, Console, Refused, UsageError, address

PROG = "gateway enroll"

TEMPLATE = """\
# gateway.toml written by `gateway enroll`: the relay, this gateway's certificate and key.
# Add the processors engineers may reach ([[target]]) and review [access]; the full example
# with every setting explained is config/gateway.toml in the gateway's sources (or
# /usr/share/doc/gateway/ in the Debian package).

[relay]
address = {address}
ca = {ca}
cert = {cert}
key = {key}
{proxy}
# [[target]]
# name = "web"
# address = "192.168.10.2:80"
# kind = "http"

[access]
mode = "attended"

[status]
listen = "127.0.0.1:8081"
"""


def register(commands: Commands) -> None:
    parser = commands.add(
        "enroll",
        enroll,
        help="get this gateway's certificate from the relay with a one-time token",
        description="Create this gateway's private key here (it never leaves the machine), "
        "send a certificate request to the relay's gateway listener with the one-time token "
        "from 'gateway relay enroll-token', and write the certificate, the key and the "
        "config's [relay] cert/key.",
    )
    parser.add_argument(
        "--relay",
        required=True,
        type=address,
        metavar="HOST:PORT",
        help="the relay's gateway listener (the tunnel's address)",
    )
    parser.add_argument(
        "--ca", required=True, type=Path, help="the vendor CA that signed the relay's certificate"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("GATEWAY_ENROLL_TOKEN"),
        help="the one-time enrollment token (or GATEWAY_ENROLL_TOKEN)",
    )
    parser.add_argument("-c", "--config", required=True, type=Path, help="gateway.toml")
    parser.add_argument(
        "--proxy",
        metavar="http://HOST:PORT",
        help="an HTTP proxy to go through (default: the config's [relay] proxy)",
    )
    parser.add_argument(
        "--server-name", help="the name on the relay's certificate (default: the relay's host)"
    )
    parser.add_argument(
        "--owner",
        metavar="USER",
        help="run as root: who owns the key and certificate (default: the 'gateway' service "
        "user if there is one, else the config file's owner)",
    )


def enroll(args: argparse.Namespace, console: Console) -> int:
    from gateway.cli.process import react
    from gateway.config import (
        ConfigError,
        RelayLink,
        _no_proxy,
        _proxy,
        _proxy_credentials,
        existing_file,
        load_gateway_config,
    )
    from gateway.enrollment.tokens import gateway_id_of_token

    if not args.token:
        raise UsageError("enroll: a token is needed: --token or GATEWAY_ENROLL_TOKEN", prog=PROG)
    try:
        gateway_id = gateway_id_of_token(args.token)
    except ValueError as e:
        raise UsageError(f"--token: {e}", prog=PROG) from None
    try:
        ca = existing_file(str(args.ca))
    except ValueError as e:
        raise UsageError(f"--ca {e}", prog=PROG) from None
    config_path: Path = args.config.absolute()
    base = config_path.parent
    relay = _relay_table(config_path)
    if args.proxy is not None:
        relay.data["proxy"] = args.proxy
    cert = relay.path("cert", must_exist=False, required=False) or base / "gateway.pem"
    key = relay.path("key", must_exist=False, required=False) or base / "gateway.key"
    link = RelayLink(
        address=args.relay,
        ca=ca,
        cert=cert,
        key=key,
        proxy=_proxy(relay),
        server_name=args.server_name or relay.optional_str("server_name"),
        proxy_credentials=_proxy_credentials(relay),
        no_proxy=_no_proxy(relay),
    )
    if not base.is_dir():
        raise UsageError(f"{base}: no such folder for the config", prog=PROG)
    owner = _owner(args.owner, config_path) if os.geteuid() == 0 else None

    async def main(reactor: Any) -> int:
        from gateway.enrollment import keys
        from gateway.enrollment.client import request_certificate
        from gateway.enrollment.wire import ENROLL_PATH, EnrollmentRefused

        private = keys.new_key()
        csr = keys.make_csr(private, gateway_id)
        console.tell(
            f"{PROG}: asking relay {link.address} for gateway {gateway_id!r}'s certificate"
        )
        try:
            pem = await request_certificate(
                reactor, link, ENROLL_PATH, {"token": args.token.strip(), "csr": csr.decode()}
            )
        except EnrollmentRefused as e:
            said = f"the relay refused: {e.reason}" if e.status else f"not enrolled: {e.reason}"
            return console.fail(Refused(said, prog=PROG))
        install_identity(cert, key, pem, keys.key_pem(private), owner=owner)
        try:
            if not config_path.exists():
                _write_new_config(config_path, link, cert, key, args.proxy)
            else:
                update_relay_paths(config_path, cert, key)
            load_gateway_config(config_path)
        except ConfigError as e:
            return console.fail(Refused(f"certificate written, but the config: {e}", prog=PROG))
        console.tell(
            f"{PROG}: gateway {gateway_id!r} enrolled: certificate {cert}, key {key} (0600)"
        )
        console.tell(f"{PROG}: {config_path} updated; start the gateway (systemctl start gateway)")
        return 0

    if args.log_level == "info":
        args.log_level = "warn"  # one command, its own lines: not the reactor's
    return react(console, args, main)


def _relay_table(path: Path) -> Any:
    """The config's ``[relay]`` as written (empty without a config).

    Read on its own, not with the whole config: before enrolling, the certificate and key it
    names do not exist yet (the package's example config), and the rest is not ours to check.
    """
    from gateway.config import _Table, read_toml

    data: dict[str, Any] = {}
    if path.exists():
        _, document = read_toml(path)
        relay = document.get("relay")
        if not isinstance(relay, dict):
            raise UsageError(f"{path}: no [relay] table", prog=PROG)
        data = relay
    return _Table(path, "relay", data)


SERVICE_USER = "gateway"
"""The Debian package's system user: the daemon that must read the key runs as it."""


def _owner(name: str | None, config: Path) -> tuple[int, int]:
    """(uid, gid) for the key and certificate when run as root."""
    import pwd

    try:
        entry = pwd.getpwnam(name or SERVICE_USER)
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        if name is not None:
            raise UsageError(f"--owner: no user {name!r}", prog=PROG) from None
    info = (config if config.exists() else config.parent).stat()
    return info.st_uid, info.st_gid


def install_identity(
    cert: Path, key: Path, cert_pem: bytes, key_pem: bytes, *, owner: tuple[int, int] | None
) -> None:
    """Write key (0600) and certificate together, atomically, then hand them to ``owner`` (run
    as root); the key is 0600 throughout, so nobody else can read it in between."""
    from gateway._files import PRIVATE, PUBLIC, install

    install([(key, key_pem, PRIVATE), (cert, cert_pem, PUBLIC)])
    if owner is not None:
        for path in (key, cert):
            os.chown(path, *owner)


def _write_new_config(path: Path, link: Any, cert: Path, key: Path, proxy: str | None) -> None:
    from gateway._files import write_atomically

    text = TEMPLATE.format(
        address=_quote(str(link.address)),
        ca=_quote(str(link.ca)),
        cert=_quote(_relative(cert, path.parent)),
        key=_quote(_relative(key, path.parent)),
        proxy=f"proxy = {_quote(proxy)}\n" if proxy else "",
    )
    write_atomically(path, text)


def update_relay_paths(path: Path, cert: Path, key: Path) -> None:
    """Set ``cert`` and ``key`` in the config's ``[relay]`` table, keeping everything else."""
    import re

    from gateway._files import write_atomically

    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    start = next(
        (i for i, line in enumerate(lines) if re.match(r"\s*\[relay\]\s*(#.*)?$", line)), None
    )
    if start is None:
        raise UsageError(f"{path}: no [relay] table to update", prog=PROG)
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(r"\s*\[", lines[i])), len(lines)
    )
    values = {
        "cert": _quote(_relative(cert, path.parent)),
        "key": _quote(_relative(key, path.parent)),
    }
    wanted = {"cert": cert, "key": key}
    for name, value in values.items():
        pattern = re.compile(rf'(\s*{name}\s*=\s*)("(?:[^"\\]|\\.)*"|\S+)?(.*)$', re.DOTALL)
        for i in range(start + 1, end):
            found = pattern.match(lines[i])
            if found is None:
                continue
            current = (found.group(2) or "").strip('"')
            if current and _same_file(path.parent, current, wanted[name]):
                break  # already names it: the line (and its comment) stays as written
            lines[i] = f"{found.group(1)}{value}{found.group(3)}"
            break
        else:
            lines.insert(start + 1, f"{name} = {value}\n")
            end += 1
    updated = "".join(lines)
    if updated == text:
        return  # already names them: a package's conffile stays untouched
    info = path.stat()
    write_atomically(path, updated, mode=info.st_mode & 0o777)
    if os.geteuid() == 0:
        # The daemon's group reads the config (root:gateway 0640 in the package): keep that.
        os.chown(path, info.st_uid, info.st_gid)


def _same_file(base: Path, written: str, wanted: Path) -> bool:
    """Whether ``written`` (as the config has it, relative to ``base``) names ``wanted``."""
    named = Path(written)
    return (named if named.is_absolute() else base / named).absolute() == wanted.absolute()


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _quote(text: str) -> str:
    import json

    return json.dumps(text)
