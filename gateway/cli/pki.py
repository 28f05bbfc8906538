"""``gateway pki``: the vendor's CA and certificate tooling on the command line.

Only argument wiring and output live here; `gateway.pki` does the work.  Each sub-command is a
handler like every other command's; a `PKIError` (a user's mistake: a missing CA, a file that
exists, a bad name) becomes one ``gateway pki: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.common import Commands, Console, Handler, UsageError
from gateway.identity import GATEWAY_ID_RULE

if TYPE_CHECKING:
    from gateway.pki import CertificateInfo

__all__ = ["register"]

PROG = "gateway pki"
CA_CERT = "ca.pem"
CA_KEY = "ca.key"


def register(commands: Commands) -> None:
    """Add ``gateway pki`` and its sub-commands; each sets ``args.pki_handler``."""
    pki = commands.add(
        "pki",
        run_pki,
        help="vendor CA and certificate tooling",
        description=(
            "Create the vendor CA and issue the certificates the relay and the gateways "
            "authenticate each other with (mutual TLS). The CA key signs every certificate: "
            "keep the CA directory on a machine only the vendor's PKI staff can reach."
        ),
        epilog=(
            "example, a CA, a relay certificate and one gateway certificate:\n"
            "  gateway pki init-ca --dir pki\n"
            "  gateway pki issue-relay --ca-dir pki --name relay.example.com\n"
            "  gateway pki issue-gateway --ca-dir pki --id plant-7-line-2\n"
            "  gateway pki show pki/plant-7-line-2.pem"
        ),
        formatter_class=_HelpFormatter,
    )
    subcommands = pki.add_subparsers(
        title="commands", dest="pki_command", metavar="COMMAND", required=True
    )
    _add_init_ca(subcommands)
    _add_issue_relay(subcommands)
    _add_issue_gateway(subcommands)
    _add_show(subcommands)


def run_pki(args: argparse.Namespace, console: Console) -> int:
    """Run the parsed ``gateway pki COMMAND``."""
    from gateway.pki import PKIError

    handler: Handler = args.pki_handler
    try:
        return handler(args, console)
    except PKIError as e:
        raise UsageError(str(e), prog=PROG) from None


# --------------------------------------------------------------------------------------------
# Parsers


class _HelpFormatter(argparse.HelpFormatter):
    """Wrap prose lines to the terminal but keep indented example lines exactly as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            if not line or line.startswith(" "):
                lines.append(indent + line)
            else:
                lines.append(
                    textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
                )
        return "\n".join(lines)


def _add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Handler,
    *,
    help: str,
    description: str,
    epilog: str,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=_HelpFormatter,
    )
    parser.set_defaults(pki_handler=handler)
    return parser


def _add_common_issue_options(parser: argparse.ArgumentParser, *, days: int) -> None:
    parser.add_argument(
        "--days",
        type=_positive_int,
        default=days,
        metavar="N",
        help=f"validity in days from now (default: {days})",
    )
    parser.add_argument(
        "--rsa",
        action="store_true",
        help="use an RSA 3072 key instead of ECDSA P-256 (only for peers without ECDSA)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace existing certificate and key files"
    )


def _add_issuer_options(parser: argparse.ArgumentParser) -> None:
    """Where the signing CA lives and where the new certificate and key go."""
    parser.add_argument("--ca-dir", required=True, type=Path, metavar="DIR", help="CA directory")
    parser.add_argument(
        "--out", type=Path, metavar="PREFIX", help="write PREFIX.pem and PREFIX.key"
    )


def _add_init_ca(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _add_command(
        commands,
        "init-ca",
        _init_ca,
        help="create the vendor CA",
        description=(
            f"Create the vendor CA as DIR/{CA_CERT} (certificate, give it to relays and "
            f"gateways) and DIR/{CA_KEY} (private key, mode 0600, never leaves DIR). DIR is "
            "created with mode 0700 if missing."
        ),
        epilog="example:\n  gateway pki init-ca --dir /srv/gateway-pki --name 'ACME support CA'",
    )
    parser.add_argument("--dir", required=True, type=Path, metavar="DIR", help="CA directory")
    parser.add_argument(
        "--name",
        default="Remote service gateway vendor CA",
        metavar="NAME",
        help="the CA's common name (default: %(default)s)",
    )
    _add_common_issue_options(parser, days=3650)


def _add_issue_relay(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _add_command(
        commands,
        "issue-relay",
        _issue_relay,
        help="issue the relay's server certificate",
        description=(
            "Issue the relay's TLS server certificate, signed by the CA in DIR. List every "
            "host name and IP address gateways dial the relay by; the first one is also the "
            "common name. Writes PREFIX.pem and PREFIX.key (default PREFIX: DIR/relay)."
        ),
        epilog=(
            "example:\n"
            "  gateway pki issue-relay --ca-dir pki --name relay.example.com \\\n"
            "      --name 203.0.113.10 --out /etc/gateway-relay/relay"
        ),
    )
    parser.add_argument(
        "--name",
        dest="names",
        action="append",
        required=True,
        metavar="NAME",
        help="host name or IP address of the relay (repeat for several)",
    )
    _add_issuer_options(parser)
    _add_common_issue_options(parser, days=397)


def _add_issue_gateway(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _add_command(
        commands,
        "issue-gateway",
        _issue_gateway,
        help="issue a gateway's client certificate",
        description=(
            "Issue the TLS client certificate of one gateway (edge PC), signed by the CA in "
            "DIR. Its subject common name is the gateway id: the relay registers the tunnel "
            "under it and engineers pass it to 'gateway connect --gateway'. Writes PREFIX.pem "
            "and PREFIX.key (default PREFIX: DIR/GATEWAY_ID)."
        ),
        epilog=(
            "example:\n"
            "  gateway pki issue-gateway --ca-dir pki --id plant-7-line-2\n"
            "  # copy pki/plant-7-line-2.pem, pki/plant-7-line-2.key and the relay's CA\n"
            "  # certificate to the edge PC; see gateway.toml [relay] cert, key, ca"
        ),
    )
    parser.add_argument(
        "--id",
        dest="gateway_id",
        required=True,
        metavar="GATEWAY_ID",
        help=GATEWAY_ID_RULE,
    )
    _add_issuer_options(parser)
    _add_common_issue_options(parser, days=825)


def _add_show(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = _add_command(
        commands,
        "show",
        _show,
        help="describe certificates",
        description=(
            "Show subject, issuer, names, validity, key, fingerprint and whether it is a CA, "
            "for every certificate in each PEM file."
        ),
        epilog=(
            "examples:\n"
            "  gateway pki show pki/ca.pem pki/relay.pem\n"
            "  gateway pki show --json gateway.pem"
        ),
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="PEM file")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


# --------------------------------------------------------------------------------------------
# Commands


def _init_ca(args: argparse.Namespace, console: Console) -> int:
    from gateway.pki import PKIError, create_ca

    directory: Path = args.dir
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise PKIError(f"{directory}: cannot create directory: {e.strerror or e}") from None
    info = create_ca(
        directory / CA_CERT,
        directory / CA_KEY,
        name=args.name,
        days=args.days,
        key_type=_key_type(args),
        force=args.force,
    )
    _report_written(console, info, directory / CA_KEY)
    return 0


def _issue_relay(args: argparse.Namespace, console: Console) -> int:
    from gateway.pki import issue_relay_certificate

    cert, key = _outputs(args.out, args.ca_dir / "relay")
    info = issue_relay_certificate(
        args.ca_dir / CA_CERT,
        args.ca_dir / CA_KEY,
        cert,
        key,
        names=args.names,
        days=args.days,
        key_type=_key_type(args),
        force=args.force,
    )
    _report_written(console, info, key)
    return 0


def _issue_gateway(args: argparse.Namespace, console: Console) -> int:
    from gateway.pki import issue_gateway_certificate

    cert, key = _outputs(args.out, args.ca_dir / args.gateway_id)
    info = issue_gateway_certificate(
        args.ca_dir / CA_CERT,
        args.ca_dir / CA_KEY,
        cert,
        key,
        gateway_id=args.gateway_id,
        days=args.days,
        key_type=_key_type(args),
        force=args.force,
    )
    _report_written(console, info, key)
    return 0


def _show(args: argparse.Namespace, console: Console) -> int:
    from gateway.pki import describe_certificate

    now = datetime.now(UTC)
    infos: list[CertificateInfo] = []
    for path in args.files:
        infos.extend(describe_certificate(path))
    if args.json:
        console.print(json.dumps([_as_json(info, now) for info in infos], indent=2))
    elif infos:
        console.print("\n\n".join(_as_text(info, now) for info in infos))
    return 0


def _key_type(args: argparse.Namespace) -> str:
    return "rsa" if args.rsa else "ec"


def _outputs(prefix: Path | None, default: Path) -> tuple[Path, Path]:
    """PREFIX.pem and PREFIX.key; ``--out x.pem`` (or ``x.key``) means PREFIX "x"."""
    if prefix is None:
        text = os.fspath(default)
    else:
        text = os.fspath(prefix)
        if text.endswith((".pem", ".key")):
            text = text[:-4]
    return Path(text + ".pem"), Path(text + ".key")


def _report_written(console: Console, info: CertificateInfo, key: Path) -> None:
    console.print(f"wrote {info.path} (certificate)")
    console.print(f"wrote {key} (private key, mode 0600: keep it secret)")
    console.print(f"subject: {info.subject}")
    if info.names:
        console.print(f"names: {', '.join(info.names)}")
    console.print(f"valid until: {_when(info.not_after)}")


def _as_text(info: CertificateInfo, now: datetime) -> str:
    rows = [
        ("subject", info.subject),
        ("issuer", info.issuer),
        ("names", ", ".join(info.names) if info.names else "-"),
        ("valid from", _when(info.not_before)),
        ("valid until", f"{_when(info.not_after)} ({info.validity_text(now)})"),
        ("key", info.key_type),
        ("serial", f"{info.serial:x}"),
        ("sha256", info.sha256_fingerprint),
        ("CA", "yes" if info.is_ca else "no"),
    ]
    lines = [f"{info.path}:"] + [f"  {label + ':':<13}{value}" for label, value in rows]
    return "\n".join(lines)


def _as_json(info: CertificateInfo, now: datetime) -> dict[str, object]:
    if now > info.not_after:
        status = "expired"
    elif now < info.not_before:
        status = "not_yet_valid"
    else:
        status = "valid"
    return {
        "path": os.fspath(info.path),
        "subject": info.subject,
        "common_name": info.common_name,
        "issuer": info.issuer,
        "names": list(info.names),
        "not_before": info.not_before.isoformat(),
        "not_after": info.not_after.isoformat(),
        "status": status,
        "days_left": (info.not_after - now).days,
        "serial": info.serial,
        "sha256_fingerprint": info.sha256_fingerprint,
        "is_ca": info.is_ca,
        "key_type": info.key_type,
    }


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
