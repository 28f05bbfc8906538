"""Configuration files: TOML in, typed frozen objects out, or one clear error.

Plant IT edits ``gateway.toml`` by hand and vendor operators edit ``relay.toml``; a mistake must
come back as one line naming the file, the key and the problem (``ConfigError``), never as a
traceback from deep inside the daemon.  Everything is validated here, once, so that the programs
can trust what they are given.  This module knows nothing of Twisted.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from attrs import Factory, field, frozen

T = TypeVar("T")

_LABEL = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
_TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def is_target_name(name: str) -> bool:
    """Whether ``name`` can name a target (letters, digits, ``. _ -``; at most 64): the relay
    refuses anything else before it reaches a gateway."""
    return _TARGET_NAME.fullmatch(name) is not None


class ConfigError(Exception):
    """A configuration problem a user can fix: which file, which key, what is wrong."""

    def __init__(self, file: Path | str, key: str, problem: str) -> None:
        super().__init__(file, key, problem)
        self.file = str(file)
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}: " if self.key else f"{self.file}: "
        return where + self.problem


class AccessMode(enum.Enum):
    """Who may open streams through the gateway (BRIEF section 2: the gateway decides)."""

    ATTENDED = "attended"
    UNATTENDED = "unattended"
    DISABLED = "disabled"


@frozen
class Address:
    """A ``host:port`` pair; IPv6 hosts are written ``[::1]:443``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def parse_address(text: str, *, allow_port_zero: bool = False) -> Address:
    """Parse ``host:port``; raises ``ValueError`` with a message fit for a user."""
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"not host:port ({text!r})")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"not host:port ({text!r})")
        if ":" in host:
            raise ValueError(f"IPv6 addresses need brackets, like [::1]:443 ({text!r})")
        if not _is_ip(host) and not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host!r} is not a valid host name or IP address")
    if not port_text.isdigit():
        raise ValueError(f"port {port_text!r} is not a number ({text!r})")
    port = int(port_text)
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"port {port} is out of range {low}-65535")
    return Address(host, port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@frozen
class Heartbeat:
    """PING cadence: a dead peer is noticed within ``interval + timeout`` seconds."""

    interval: float = 10.0
    timeout: float = 10.0


DEFAULT_CONGESTION_CONTROL = "bbr"
"""Delay-based: keeps a slow uplink's queue near empty while a download runs (issue 21)."""
_CONGESTION_NAME = re.compile(r"[a-z][a-z0-9_]{0,15}")


@frozen
class RelayLink:
    """How the gateway reaches its relay (``[relay]`` in gateway.toml)."""

    address: Address
    ca: Path
    cert: Path
    key: Path
    proxy: Address | None = None
    server_name: str | None = None
    heartbeat: Heartbeat = field(factory=Heartbeat)
    connect_timeout: float = 10.0
    reconnect_cap: float = 30.0
    proxy_credentials: ProxyCredentials | None = None
    """``proxy_credentials``: the Basic user and password for ``proxy``, from a private file."""
    no_proxy: tuple[str, ...] = ()
    """``no_proxy``: relay hosts reached directly although ``proxy`` is set (see
    `gateway.net.proxy.bypasses_proxy`)."""
    congestion_control: str | None = DEFAULT_CONGESTION_CONTROL
    """``congestion_control``: the TCP congestion control of the tunnel's socket (None: the
    system's).  BBR keeps the modem's queue short while a download runs (README "Slow uplinks")."""

    @property
    def expected_name(self) -> str:
        """The name the relay's certificate must carry."""
        return self.server_name or self.address.host


@frozen
class ProxyCredentials:
    """``user:password`` for the plant proxy's Basic authentication, read from ``path``.

    The password never appears in a repr (logs, tracebacks, a snapshot of the configuration).
    """

    path: Path
    user: str
    password: str = field(repr=False)


class TargetKind(enum.Enum):
    """What the gateway knows of a processor's protocol (``[[target]] kind``)."""

    TCP = "tcp"
    """Bytes only: the gateway cannot tell reading from writing, so view-only sessions cannot
    use it."""
    HTTP = "http"
    """HTTP/1.1 (and WebSocket upgrades): the gateway follows each request's method and path."""


@frozen
class Target:
    """One processor the gateway may forward to: nothing off this list is reachable."""

    name: str
    address: Address
    connect_timeout: float = 5.0
    kind: TargetKind = TargetKind.TCP
    view_websocket: bool = False
    """``http`` only: a view-only session may open WebSocket upgrades (their messages pass both
    ways uninspected)."""


@frozen
class ConsentRules:
    """The ``[access]`` timings of attended sessions (BRIEF section 3, "Sessions and consent")."""

    request_timeout: float = 300.0
    """Seconds an engineer's request waits for the plant's answer; then it is denied."""
    session_minutes: int = 60
    """Length of an approved session unless the plant says otherwise."""
    max_session_minutes: int = 480
    """Nobody can approve a longer session."""
    grace_seconds: float = 120.0
    """How long a session outlives its engineer's client (a reconnect within it resumes)."""


@frozen
class StreamLimits:
    """``[limits]``: engineer streams the gateway carries at once (`gateway.edge.limits`)."""

    streams_per_engineer: int = 64
    """Per engineer identity, over all targets."""
    streams_per_target: int = 32
    """Per target, over all engineers: a PLC's web server has a handful of HTTP slots."""
    streams_per_tunnel: int = 512
    """Per tunnel connection to the relay: bounds the gateway's descriptors."""


@frozen
class StatusTLS:
    """``[status] cert`` / ``key``: the certificate (PEM, chain after it) the page is served
    with, and its private key."""

    cert: Path
    key: Path


@frozen
class GatewayConfig:
    path: Path
    relay: RelayLink
    targets: tuple[Target, ...]
    access_mode: AccessMode
    status_listen: Address | None
    metrics_listen: Address | None
    drain_timeout: float = 10.0
    half_close_timeout: float = 30.0
    state_dir: Path = field(default=Factory(lambda self: _default_state_dir(self), takes_self=True))
    """``[service] state_dir``: access mode, audit trail, control socket (default ``state``)."""
    consent: ConsentRules = field(factory=lambda: ConsentRules())
    """``[access]``: how long requests wait and sessions last."""
    checks_interval: float = 300.0
    """``[checks] interval``: seconds between the daemon's connectivity checks."""
    limits: StreamLimits = field(factory=lambda: StreamLimits())
    """``[limits]``: streams per engineer, per target and per tunnel."""
    status_allowed_hosts: tuple[str, ...] = ()
    """``[status] allowed_hosts``: host names the status listener answers to besides its own."""
    metrics_allowed_hosts: tuple[str, ...] = ()
    """``[metrics] allowed_hosts``: the same for the metrics listener."""
    status_tls: StatusTLS | None = None
    """``[status] cert`` and ``key``: serve the status page over HTTPS (None: plain HTTP)."""
    target_groups: tuple[TargetGroup, ...] = ()
    """``[[target_group]]``: processors that serve one UI on several ports."""

    def target(self, name: str) -> Target | None:
        for target in self.targets:
            if target.name == name:
                return target
        return None


@frozen
class GatewayListener:
    """The relay's mutual-TLS listener for gateways (``[gateways]``)."""

    listen: Address
    ca: Path
    cert: Path
    key: Path
    heartbeat: Heartbeat = field(factory=Heartbeat)
    limits: GatewayLimits = field(factory=lambda: GatewayLimits())
    """``max_unauthenticated_per_source``, ``max_streams_per_tunnel``."""
    congestion_control: str | None = DEFAULT_CONGESTION_CONTROL
    """For the tunnels' sockets: what an upload to a plant crosses its slow downlink with."""


@frozen
class GatewayLimits:
    """What the relay lets gateway connections hold (`gateway.relay.admission`)."""

    max_unauthenticated_per_source: int = 64
    """Connections from one address still in their TLS handshake (no certificate yet)."""
    max_streams_per_tunnel: int = 256
    """Engineer streams open at once on one gateway's tunnel."""


@frozen
class EngineerLimits:
    """What the relay lets engineer connections hold, and for how long (`relay.admission`)."""

    auth_timeout: float = 10.0
    """Seconds from connecting to a first stream with a valid token; then the relay hangs up."""
    idle_timeout: float = 600.0
    """Seconds an authenticated connection may carry no stream before it is closed."""
    max_connections_per_source: int = 64
    max_unauthenticated_per_source: int = 16
    max_unauthenticated: int = 512
    """Unauthenticated connections from all addresses together."""
    max_streams_per_connection: int = 128


@frozen
class LoginLimits:
    """Failed engineer logins the relay tolerates (``[engineers]`` login_*; IEC 62443 SR 1.11).

    ``failures`` within ``window`` seconds from one source address (bad or expired tokens), or
    for one engineer (expired token, a gateway they are not authorised for), and that source or
    engineer is refused for ``lockout`` seconds, even with a good token.
    """

    failures: int = 10
    window: float = 60.0
    lockout: float = 300.0


@frozen
class EngineerListener:
    """The relay's TLS listener for engineer clients (``[engineers]``)."""

    listen: Address
    tokens: Path
    cert: Path
    key: Path
    logins: LoginLimits = field(factory=lambda: LoginLimits())
    """``login_failures``, ``login_window``, ``login_lockout``."""
    limits: EngineerLimits = field(factory=lambda: EngineerLimits())
    """``auth_timeout``, ``idle_timeout``, ``max_*``: connection and stream limits."""
    congestion_control: str | None = DEFAULT_CONGESTION_CONTROL


@frozen
class EnrollmentSettings:
    """``[enrollment]`` in relay.toml: the relay signs gateway certificates (issue 19).

    ``ca_key`` is the gateway CA's private key (0600, the relay's user's); ``ca_cert`` its
    certificate, by default ``[gateways] ca``.  ``certificate_days``: the life of a certificate
    it issues (fractions allowed, for tests); gateways renew at two thirds of it.
    """

    ca_cert: Path
    ca_key: Path
    certificate_days: float = 90.0


@frozen
class PortalConfig:
    """The relay's engineer portal (``[portal]``): HTTPS for browsers, one origin per target."""

    listen: Address
    domain: str
    """The portal's own host name; each (gateway, target) is ``<target>--<gateway>.<domain>``."""
    cert: Path
    key: Path
    login_minutes: int = 480
    """How long a portal login lasts (then the engineer logs in again)."""
    extra_ports: tuple[int, ...] = ()
    """More ports the portal listens on (same address): a target group's member whose port
    number is one of them is served there, on the group's host name."""


@frozen
class RelayConfig:
    path: Path
    gateways: GatewayListener
    engineers: EngineerListener
    metrics_listen: Address | None
    drain_timeout: float = 10.0
    state_dir: Path = field(default=Factory(lambda self: _default_state_dir(self), takes_self=True))
    """``[service] state_dir``: the relay's audit trail (default ``state``)."""
    half_close_timeout: float = 300.0
    """``[service] half_close_timeout``: a backstop for a half-closed stream gone quiet.  Each
    gateway enforces its plant's own (default 30 s); the relay's only catches what no gateway
    ends, so it is longer than any gateway should need."""
    enrollment: EnrollmentSettings | None = None
    """``[enrollment]``: None, and the relay enrolls no gateway (and its gateway listener
    demands a certificate in the TLS handshake, as before)."""
    portal: PortalConfig | None = None
    """``[portal]``: the engineers' portal in the browser; None: no portal."""


def _default_state_dir(config: GatewayConfig | RelayConfig) -> Path:
    """``state`` next to the config file, as a relative ``state_dir`` would resolve."""
    return config.path.parent / "state"


def _state_dir(service: _Table | None, file: Path) -> Path:
    """``[service] state_dir``, resolved against the config file's folder; not a file."""
    path = None if service is None else service.path("state_dir", must_exist=False, required=False)
    path = (file.parent / "state").resolve() if path is None else path
    if path.exists() and not path.is_dir():
        raise ConfigError(file, "service.state_dir", f"{str(path)!r} is a file, not a folder")
    return path


class _Table:
    """A TOML table being read: typed getters, and a record of which keys were used."""

    def __init__(self, file: Path, prefix: str, data: dict[str, Any]) -> None:
        self.file, self.prefix, self.data = file, prefix, data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), problem)

    def _get(self, name: str, kind: type[T], kind_name: str, default: T | None) -> T | None:
        self.used.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.error(name, f"must be {kind_name}, not {_toml_type(value)}")
        return value

    def required_str(self, name: str) -> str:
        value = self._get(name, str, "a string", None)
        if value is None:
            raise self.error(name, "is required")
        return value

    def optional_str(self, name: str) -> str | None:
        return self._get(name, str, "a string", None)

    def flag(self, name: str, default: bool) -> bool:
        value = self._get(name, bool, "true or false", default)
        assert value is not None
        return value

    def seconds(self, name: str, default: float, *, low: float = 0.1, high: float = 3600) -> float:
        value = self._get(name, float, "a number of seconds", default)
        assert value is not None
        if not low <= value <= high:
            raise self.error(name, f"must be between {low:g} and {high:g} seconds, not {value:g}")
        return value

    def address(self, name: str, *, listen: bool = False, required: bool = True) -> Address | None:
        text = self.required_str(name) if required else self.optional_str(name)
        if text is None:
            return None
        try:
            return parse_address(text, allow_port_zero=listen)
        except ValueError as e:
            raise self.error(name, str(e)) from None

    def path(self, name: str, *, must_exist: bool = True, required: bool = True) -> Path | None:
        """A path relative to the config file's folder; with ``must_exist``, a regular file
        that is not empty (a FIFO, a device or ``/dev/null`` is refused before it is opened)."""
        text = self.required_str(name) if required else self.optional_str(name)
        if text is None:
            return None
        try:
            path = resolve_path(text, self.file.parent)
        except ValueError as e:
            raise self.error(name, str(e)) from None
        problem = file_problem(path) if must_exist else None
        if problem == MISSING:
            raise self.error(name, f"file {str(path)!r} does not exist")
        if problem is not None:
            raise self.error(name, f"{str(path)!r} {problem}")
        return path

    def table(self, name: str, *, required: bool = True) -> _Table | None:
        self.used.add(name)
        value = self.data.get(name)
        if value is None:
            if required:
                raise ConfigError(self.file, self.key(name), "section is missing")
            return None
        if not isinstance(value, dict):
            raise self.error(name, f"must be a [{self.key(name)}] section, not {_toml_type(value)}")
        return _Table(self.file, self.key(name), value)

    def tables(self, name: str) -> Iterator[_Table]:
        self.used.add(name)
        value = self.data.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(name, f"must be written as [[{self.key(name)}]] sections")
        for index, item in enumerate(value):
            yield _Table(self.file, f"{self.key(name)}[{index}]", item)

    def finish(self) -> None:
        """Refuse keys nobody read: a typo must not silently fall back to a default."""
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(self.file, self.key(unknown[0]), "unknown key")


def _toml_type(value: object) -> str:
    return {
        bool: "true/false",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a section",
    }.get(type(value), type(value).__name__)


def read_toml(path: Path | str) -> tuple[Path, dict[str, Any]]:
    """Read a TOML file, turning every way that can fail into a ``ConfigError``.

    A byte-order mark (Windows Notepad writes one) is skipped; UTF-16 is named as such.
    """
    text = str(path)
    try:
        file = resolve_path(text, Path.cwd(), follow_links=False)
    except ValueError as e:
        raise ConfigError(text, "", str(e)) from None
    try:
        raw = read_regular_file(file, max_bytes=MAX_CONFIG_BYTES, allow_empty=True)
    except FileProblem as e:
        problem = str(e)
        if problem == MISSING:
            problem = "file does not exist"
        elif problem == IS_DIRECTORY:
            problem = "is a directory, not a configuration file"
        raise ConfigError(file, "", problem) from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    elif raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(file, "", "is UTF-16 text: save it as UTF-8") from None
    try:
        return file, tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(file, "", "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "", f"not valid TOML: {e}") from None


# -- paths and files: every way a path can be wrong is one sentence, and nothing blocks ----------

MAX_CONFIG_BYTES = 1 << 20
"""No configuration, certificate or key file of ours comes near this; /dev/zero would."""
MISSING = "does not exist"
IS_DIRECTORY = "is a directory, not a file"


class FileProblem(Exception):
    """Why a file cannot be used, as the end of a sentence that starts with its name."""


def resolve_path(text: str, base: Path, *, follow_links: bool = True) -> Path:
    """``text`` as an absolute path: ``~`` and ``~user`` expanded, relative to ``base``, and
    (with ``follow_links``) symbolic links followed.  Raises ``ValueError`` saying what is
    wrong: a NUL byte, an unknown ``~user``, a loop of symbolic links."""
    if "\x00" in text:
        raise ValueError(f"{text!r} contains a NUL byte")
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # ~nosuchuser, or ~ without a home directory
        user = text[1:].split("/", 1)[0]
        raise ValueError(
            f"{text!r}: there is no user {user!r} to take ~{user} from"
            if user
            else f"{text!r}: this user has no home directory for ~"
        ) from None
    path = base / path
    if not follow_links:
        return path.absolute()
    try:
        return path.resolve()
    except RuntimeError:  # Python 3.11's resolve(): "Symlink loop from ..."
        raise ValueError(f"{str(path)!r} is a loop of symbolic links") from None
    except OSError as e:
        raise ValueError(f"{str(path)!r}: {_os_problem(e)}") from None


def _os_problem(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "is a loop of symbolic links"
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return MISSING
    if error.errno == errno.EACCES:
        return "cannot be read: permission denied"
    return (error.strerror or str(error)).lower()


_KINDS = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _kind_problem(mode: int) -> str | None:
    if stat.S_ISDIR(mode):
        return IS_DIRECTORY
    if not stat.S_ISREG(mode):
        return f"is {_KINDS.get(stat.S_IFMT(mode), 'not a file')}, not a regular file"
    return None


def file_problem(path: Path, *, allow_empty: bool = False) -> str | None:
    """Why ``path`` is not a regular file with something in it, or None; never opens it."""
    try:
        info = os.stat(path)
    except ValueError:
        return "contains a NUL byte"
    except OSError as e:
        return _os_problem(e)
    problem = _kind_problem(info.st_mode)
    if problem is None and not allow_empty and info.st_size == 0:
        problem = "is empty"
    return problem


def existing_file(text: str, base: Path | None = None) -> Path:
    """A file named on a command line (``--ca``): resolved, and a regular file with something
    in it; raises ``ValueError`` starting with ``text`` and saying what is wrong."""
    try:
        path = resolve_path(text, base or Path.cwd())
    except ValueError as e:
        raise ValueError(str(e) if str(e).startswith(repr(text)) else f"{text}: {e}") from None
    problem = file_problem(path)
    if problem is not None:
        raise ValueError(f"{text}: {'file does not exist' if problem == MISSING else problem}")
    return path


def read_regular_file(path: Path, *, max_bytes: int, allow_empty: bool = False) -> bytes:
    """The bytes of a small regular file; raises ``FileProblem`` for anything else.

    The type is checked before the file is opened (opening a FIFO blocks until a writer comes;
    opening some devices has effects), and again on the open descriptor, which is opened
    non-blocking so that a FIFO swapped in between cannot hang us either.
    """
    problem = file_problem(path, allow_empty=allow_empty)
    if problem is not None:
        raise FileProblem(problem)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise FileProblem(_os_problem(e)) from None
    try:
        info = os.fstat(fd)
        problem = _kind_problem(info.st_mode)
        too_large = f"is larger than {max_bytes // 1024} KiB: not the file meant here"
        if problem is None and info.st_size > max_bytes:
            problem = too_large
        if problem is not None:
            raise FileProblem(problem)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise FileProblem(too_large)
    except OSError as e:
        raise FileProblem(_os_problem(e)) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if not data and not allow_empty:
        raise FileProblem("is empty")
    return data


def _congestion_control(table: _Table) -> str | None:
    """``congestion_control``: a kernel algorithm's name, or ``"system"`` for the system's."""
    name = table._get("congestion_control", str, "a string", DEFAULT_CONGESTION_CONTROL)
    if name == "system":
        return None
    if name is None or not _CONGESTION_NAME.fullmatch(name):
        raise table.error(
            "congestion_control",
            f'{name!r} is not a congestion control name (e.g. "bbr", "cubic" or '
            '"system" for the system\'s own)',
        )
    return name


def _heartbeat(table: _Table) -> Heartbeat:
    default = Heartbeat()
    interval = table.seconds("heartbeat_interval", default.interval, low=0.5, high=300)
    timeout = table.seconds("heartbeat_timeout", default.timeout, low=0.5, high=300)
    return Heartbeat(interval=interval, timeout=timeout)


def load_gateway_config(path: Path | str) -> GatewayConfig:
    file, data = read_toml(path)
    top = _Table(file, "", data)

    relay_table = top.table("relay")
    assert relay_table is not None
    relay = RelayLink(
        address=_required(relay_table.address("address")),
        ca=_required(relay_table.path("ca")),
        cert=_required(relay_table.path("cert")),
        key=_required(relay_table.path("key")),
        proxy=_proxy(relay_table),
        proxy_credentials=_proxy_credentials(relay_table),
        no_proxy=_no_proxy(relay_table),
        server_name=relay_table.optional_str("server_name"),
        heartbeat=_heartbeat(relay_table),
        connect_timeout=relay_table.seconds("connect_timeout", 10.0, high=300),
        reconnect_cap=relay_table.seconds("reconnect_max_delay", 30.0, low=1, high=3600),
        congestion_control=_congestion_control(relay_table),
    )
    relay_table.finish()

    targets: list[Target] = []
    for table in top.tables("target"):
        name = table.required_str("name")
        if not _TARGET_NAME.fullmatch(name):
            raise table.error("name", f"{name!r} is not a target name (letters, digits, . _ -)")
        if any(t.name == name for t in targets):
            raise table.error("name", f"target {name!r} is listed twice")
        address = _required(table.address("address"))
        timeout = table.seconds("connect_timeout", 5.0, high=120)
        kind, view_websocket = _target_kind(table)
        targets.append(
            Target(
                name=name,
                address=address,
                connect_timeout=timeout,
                kind=kind,
                view_websocket=view_websocket,
            )
        )
        table.finish()

    access = top.table("access", required=False)
    mode = AccessMode.ATTENDED
    if access is not None:
        text = access.optional_str("mode")
        text = "attended" if text is None else text
        try:
            mode = AccessMode(text)
        except ValueError:
            choices = ", ".join(m.value for m in AccessMode)
            raise access.error("mode", f"{text!r} is not one of {choices}") from None
    consent = _consent_rules(access)
    if access is not None:
        access.finish()

    status_tls = _status_tls(top)
    status, status_hosts = _web_listener(top, "status")
    metrics, metrics_hosts = _web_listener(top, "metrics")
    limits = _stream_limits(top)
    service = top.table("service", required=False)
    drain, half_close = 10.0, 30.0
    state_dir = _state_dir(service, file)
    if service is not None:
        drain = service.seconds("drain_timeout", 10.0, low=0, high=3600)
        half_close = service.seconds("half_close_timeout", 30.0, low=1, high=86400)
        service.finish()
    checks_interval = _checks_interval(top)
    groups = _target_groups(top, targets)
    top.finish()
    return GatewayConfig(
        path=file,
        relay=relay,
        targets=tuple(targets),
        access_mode=mode,
        status_listen=status,
        metrics_listen=metrics,
        drain_timeout=drain,
        half_close_timeout=half_close,
        state_dir=state_dir,
        consent=consent,
        checks_interval=checks_interval,
        limits=limits,
        status_allowed_hosts=status_hosts,
        metrics_allowed_hosts=metrics_hosts,
        status_tls=status_tls,
        target_groups=groups,
    )


def _target_kind(table: _Table) -> tuple[TargetKind, bool]:
    """``kind`` (default ``tcp``) and ``view_websocket`` (only with ``kind = "http"``)."""
    text = table.optional_str("kind")
    try:
        kind = TargetKind.TCP if text is None else TargetKind(text)
    except ValueError:
        choices = ", ".join(f'"{k.value}"' for k in TargetKind)
        raise table.error("kind", f"{text!r} is not one of {choices}") from None
    view_websocket = table.flag("view_websocket", False)
    if "view_websocket" in table.data and kind is not TargetKind.HTTP:
        raise table.error(
            "view_websocket",
            'only applies to kind = "http" targets (the gateway sees no requests on a tcp one)',
        )
    return kind, view_websocket


def _consent_rules(access: _Table | None) -> ConsentRules:
    """``[access]`` request_timeout, session_minutes, max_session_minutes and the grace period
    (``grace_seconds`` or ``grace_minutes``, not both)."""
    default = ConsentRules()
    if access is None:
        return default
    timeout = access.seconds("request_timeout", default.request_timeout, low=10, high=86400)
    longest = _whole_number(access, "max_session_minutes", default.max_session_minutes, 1, 10080)
    minutes = _whole_number(
        access, "session_minutes", min(default.session_minutes, longest), 1, 10080
    )
    if minutes > longest:
        raise access.error(
            "session_minutes",
            f"must not be more than max_session_minutes ({longest}), not {minutes}",
        )
    if "grace_seconds" in access.data and "grace_minutes" in access.data:
        raise access.error("grace_minutes", "set grace_seconds or grace_minutes, not both")
    grace = access.seconds("grace_seconds", default.grace_seconds, low=1, high=86400)
    grace_minutes = access._get("grace_minutes", float, "a number of minutes", None)
    if grace_minutes is not None:
        if not 0 < grace_minutes <= 1440:
            raise access.error(
                "grace_minutes",
                f"must be more than 0 and at most 1440 minutes, not {grace_minutes:g}",
            )
        grace = grace_minutes * 60
    return ConsentRules(
        request_timeout=timeout,
        session_minutes=minutes,
        max_session_minutes=longest,
        grace_seconds=grace,
    )


def _whole_number(table: _Table, name: str, default: int, low: int, high: int) -> int:
    value = table._get(name, int, "a whole number", default)
    assert value is not None
    if not low <= value <= high:
        raise table.error(name, f"must be between {low} and {high}, not {value}")
    return value


def _proxy_credentials(table: _Table) -> ProxyCredentials | None:
    """``proxy_credentials``: a file holding ``user:password`` (one line), readable only by
    us: a proxy password anyone on the edge PC can read is everyone's."""
    from gateway._files import private_file_problem

    path = table.path("proxy_credentials", required=False)
    if path is None:
        return None
    if "proxy" not in table.data:
        raise table.error("proxy_credentials", "is set but there is no proxy to use it with")
    problem = private_file_problem(path, "proxy credentials")
    if problem is not None:
        raise table.error("proxy_credentials", problem)
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise table.error("proxy_credentials", f"{path}: cannot read: {e}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    user, sep, password = (lines[0] if len(lines) == 1 else "").partition(":")
    if len(lines) != 1 or not sep or not user.strip():
        raise table.error("proxy_credentials", f"{path}: must hold one line, user:password")
    return ProxyCredentials(path=path, user=user.strip(), password=password.rstrip("\r\n"))


def _no_proxy(table: _Table) -> tuple[str, ...]:
    """``no_proxy``: a list of host names (``.example.com`` for a whole domain), IP addresses
    or networks (``10.0.0.0/8``), or ``*``; a comma-separated string is taken too, as in the
    ``no_proxy`` environment variable."""
    table.used.add("no_proxy")
    value = table.data.get("no_proxy")
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise table.error("no_proxy", f"must be a list of host names, not {_toml_type(value)}")
    entries: list[str] = []
    for raw in value:
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry != "*" and not _no_proxy_entry_ok(entry):
            raise table.error(
                "no_proxy", f"{raw!r} is not a host name, .domain, IP address or network"
            )
        entries.append(entry)
    return tuple(entries)


def _no_proxy_entry_ok(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
        return True
    except ValueError:
        pass
    return bool(_HOSTNAME.fullmatch(entry.lstrip(".").removeprefix("*.")))


def _checks_interval(top: _Table) -> float:
    """``[checks] interval``: seconds between the daemon's connectivity checks."""
    table = top.table("checks", required=False)
    if table is None:
        return 300.0
    interval = table.seconds("interval", 300.0, low=10, high=86400)
    table.finish()
    return interval


def _proxy(table: _Table) -> Address | None:
    text = table.optional_str("proxy")
    if text is None:
        return None
    rest = text
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme.lower() != "http":
            raise table.error("proxy", f"only http:// proxies are supported, not {scheme}://")
    rest = rest.rstrip("/")
    if "@" in rest:
        raise table.error(
            "proxy",
            "proxy user names and passwords are not supported here (remove 'user:password@'); "
            "put them in a file named by proxy_credentials",
        )
    try:
        return parse_address(rest)
    except ValueError as e:
        raise table.error("proxy", str(e)) from None


def _listener(top: _Table, name: str) -> Address | None:
    table = top.table(name, required=False)
    if table is None:
        return None
    address = table.address("listen", listen=True)
    table.finish()
    return address


def _status_tls(top: _Table) -> StatusTLS | None:
    """``[status] cert`` and ``key`` (both or neither), read before `_web_listener` finishes
    the table."""
    data = top.data.get("status")
    if not isinstance(data, dict) or ("cert" not in data and "key" not in data):
        return None
    table = _Table(top.file, "status", data)
    cert = table.path("cert", required=False)
    key = table.path("key", required=False)
    if cert is None or key is None:
        missing = "key" if key is None else "cert"
        raise table.error(missing, "is required when the other of cert/key is set")
    return StatusTLS(cert, key)


def _web_listener(top: _Table, name: str) -> tuple[Address | None, tuple[str, ...]]:
    """``[status]`` or ``[metrics]``: ``listen``, and ``allowed_hosts`` (the host names, besides
    its own, that a browser may use to reach it: anything else is refused, DNS rebinding)."""
    table = top.table(name, required=False)
    if table is None:
        return None, ()
    address = table.address("listen", listen=True)
    if name == "status":
        table.used.update({"cert", "key"})  # _status_tls
    table.used.add("allowed_hosts")
    value = table.data.get("allowed_hosts", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise table.error("allowed_hosts", f"must be a list of host names, not {_toml_type(value)}")
    hosts: list[str] = []
    for raw in value:
        host = raw.strip().lower().rstrip(".")
        if not _HOSTNAME.fullmatch(host) or _is_ip(host):
            raise table.error(
                "allowed_hosts",
                f"{raw!r} is not a host name (IP addresses are always accepted; no ports)",
            )
        hosts.append(host)
    table.finish()
    return address, tuple(hosts)


def _stream_limits(top: _Table) -> StreamLimits:
    """``[limits]``: streams per engineer, per target and per tunnel (1 to 100000 each)."""
    table = top.table("limits", required=False)
    default = StreamLimits()
    if table is None:
        return default
    limits = StreamLimits(
        streams_per_engineer=_whole_number(
            table, "streams_per_engineer", default.streams_per_engineer, 1, 100_000
        ),
        streams_per_target=_whole_number(
            table, "streams_per_target", default.streams_per_target, 1, 100_000
        ),
        streams_per_tunnel=_whole_number(
            table, "streams_per_tunnel", default.streams_per_tunnel, 1, 100_000
        ),
    )
    table.finish()
    return limits


def load_relay_config(path: Path | str) -> RelayConfig:
    file, data = read_toml(path)
    top = _Table(file, "", data)

    gw = top.table("gateways")
    assert gw is not None
    gateways = GatewayListener(
        listen=_required(gw.address("listen", listen=True)),
        ca=_required(gw.path("ca")),
        cert=_required(gw.path("cert")),
        key=_required(gw.path("key")),
        heartbeat=_heartbeat(gw),
        limits=_gateway_limits(gw),
        congestion_control=_congestion_control(gw),
    )
    gw.finish()

    eng = top.table("engineers")
    assert eng is not None
    eng_cert = eng.path("cert", required=False)
    eng_key = eng.path("key", required=False)
    if (eng_cert is None) != (eng_key is None):
        missing = "key" if eng_key is None else "cert"
        raise eng.error(missing, "is required when the other of cert/key is set")
    engineers = EngineerListener(
        listen=_required(eng.address("listen", listen=True)),
        tokens=_required(eng.path("tokens", must_exist=False)),
        cert=eng_cert or gateways.cert,
        key=eng_key or gateways.key,
        logins=_login_limits(eng),
        limits=_engineer_limits(eng),
        congestion_control=_congestion_control(eng),
    )
    eng.finish()

    metrics = _listener(top, "metrics")
    enrollment = _enrollment(top, gateways)
    portal = _portal(top, gateways)
    service = top.table("service", required=False)
    drain, half_close = 10.0, 300.0
    state_dir = _state_dir(service, file)
    if service is not None:
        drain = service.seconds("drain_timeout", 10.0, low=0, high=3600)
        half_close = service.seconds("half_close_timeout", 300.0, low=1, high=86400)
        service.finish()
    top.finish()
    return RelayConfig(
        path=file,
        gateways=gateways,
        engineers=engineers,
        metrics_listen=metrics,
        drain_timeout=drain,
        state_dir=state_dir,
        half_close_timeout=half_close,
        enrollment=enrollment,
        portal=portal,
    )


def _enrollment(top: _Table, gateways: GatewayListener) -> EnrollmentSettings | None:
    """``[enrollment] ca_key``, ``ca_cert`` (default ``[gateways] ca``), ``certificate_days``."""
    table = top.table("enrollment", required=False)
    if table is None:
        return None
    key = _required(table.path("ca_key"))
    cert = table.path("ca_cert", required=False) or gateways.ca
    days = table._get("certificate_days", float, "a number of days", 90.0)
    if isinstance(days, int) and not isinstance(days, bool):
        days = float(days)
    assert days is not None
    if not 0.0002 <= days <= 825:  # 0.0002 days: 17 s, for tests of renewal
        raise table.error("certificate_days", f"must be between 0.0002 and 825, not {days}")
    table.finish()
    return EnrollmentSettings(ca_cert=cert, ca_key=key, certificate_days=days)


def _login_limits(eng: _Table) -> LoginLimits:
    """``[engineers] login_failures``, ``login_window`` and ``login_lockout``."""
    default = LoginLimits()
    failures = eng._get("login_failures", int, "a whole number", default.failures)
    assert failures is not None
    if not 1 <= failures <= 1000:
        raise eng.error("login_failures", f"must be between 1 and 1000, not {failures}")
    return LoginLimits(
        failures=failures,
        window=eng.seconds("login_window", default.window, low=1, high=86400),
        lockout=eng.seconds("login_lockout", default.lockout, low=1, high=86400),
    )


def _relay_count(table: _Table, name: str, default: int, high: int) -> int:
    value = table._get(name, int, "a whole number", default)
    assert value is not None
    if not 1 <= value <= high:
        raise table.error(name, f"must be between 1 and {high}, not {value}")
    return value


def _gateway_limits(gw: _Table) -> GatewayLimits:
    """``[gateways] max_unauthenticated_per_source`` and ``max_streams_per_tunnel``."""
    default = GatewayLimits()
    return GatewayLimits(
        max_unauthenticated_per_source=_relay_count(
            gw, "max_unauthenticated_per_source", default.max_unauthenticated_per_source, 100_000
        ),
        max_streams_per_tunnel=_relay_count(
            gw, "max_streams_per_tunnel", default.max_streams_per_tunnel, 60_000
        ),
    )


def _engineer_limits(eng: _Table) -> EngineerLimits:
    """``[engineers] auth_timeout``, ``idle_timeout`` and the ``max_*`` connection limits."""
    default = EngineerLimits()
    return EngineerLimits(
        auth_timeout=eng.seconds("auth_timeout", default.auth_timeout, low=1, high=300),
        idle_timeout=eng.seconds("idle_timeout", default.idle_timeout, low=5, high=86400),
        max_connections_per_source=_relay_count(
            eng, "max_connections_per_source", default.max_connections_per_source, 100_000
        ),
        max_unauthenticated_per_source=_relay_count(
            eng, "max_unauthenticated_per_source", default.max_unauthenticated_per_source, 100_000
        ),
        max_unauthenticated=_relay_count(
            eng, "max_unauthenticated", default.max_unauthenticated, 1_000_000
        ),
        max_streams_per_connection=_relay_count(
            eng, "max_streams_per_connection", default.max_streams_per_connection, 60_000
        ),
    )


def _required(value: T | None) -> T:
    """Narrow a getter's result that was asked for with ``required=True``."""
    assert value is not None
    return value


# -- [portal] (the engineers' portal in the browser) ---------------------------------------------

_DOMAIN = re.compile(
    r"(?=.{1,200}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)


def _portal(top: _Table, gateways: GatewayListener) -> PortalConfig | None:
    """``[portal] listen, domain, cert, key, login_minutes``; cert and key default to the
    relay's own (``[gateways]``)."""
    table = top.table("portal", required=False)
    if table is None:
        return None
    domain = table.required_str("domain").strip().lower().rstrip(".")
    if not _DOMAIN.fullmatch(domain) or "--" in domain.split(".")[0]:
        raise table.error("domain", f"{domain!r} is not a host name such as relay.example.com")
    cert = table.path("cert", required=False)
    key = table.path("key", required=False)
    if (cert is None) != (key is None):
        missing = "key" if key is None else "cert"
        raise table.error(missing, "is required when the other of cert/key is set")
    config = PortalConfig(
        listen=_required(table.address("listen", listen=True)),
        domain=domain,
        cert=cert or gateways.cert,
        key=key or gateways.key,
        login_minutes=_whole_number(table, "login_minutes", 480, 1, 7 * 24 * 60),
        extra_ports=_extra_ports(table),
    )
    if config.listen.port in config.extra_ports:
        raise table.error("extra_ports", f"{config.listen.port} is the portal's listen port")
    table.finish()
    return config


def _extra_ports(table: _Table) -> tuple[int, ...]:
    ports = table._get("extra_ports", list, "a list of port numbers", [])
    assert ports is not None
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise table.error("extra_ports", f"{port!r} is not a port number (1 to 65535)")
    if len(set(ports)) != len(ports):
        raise table.error("extra_ports", "lists a port twice")
    return tuple(ports)


# -- [[target_group]] (one processor UI on several ports) ----------------------------------------


@frozen
class TargetGroup:
    """Targets that one processor's UI spans (pages on one port open WebSockets to another by
    the page's own host name): served on one host name, each member at its own port number."""

    name: str
    members: tuple[str, ...]
    """Target names; the first is the group's page."""

    def by_port(self, targets: tuple[Target, ...]) -> dict[int, str]:
        ports = {t.name: t.address.port for t in targets}
        return {ports[m]: m for m in self.members if m in ports}


def _target_groups(top: _Table, targets: list[Target]) -> tuple[TargetGroup, ...]:
    """``[[target_group]] name, members``: members are targets with distinct port numbers."""
    groups: list[TargetGroup] = []
    known = {t.name: t for t in targets}
    for table in top.tables("target_group"):
        name = table.required_str("name")
        if not _TARGET_NAME.fullmatch(name) or "--" in name:
            raise table.error("name", f"{name!r} is not a group name (letters, digits, . _ -)")
        if name in known or any(g.name == name for g in groups):
            raise table.error("name", f"{name!r} is already a target or group name")
        members = table._get("members", list, "a list of target names", None)
        if not members or not all(isinstance(m, str) for m in members):
            raise table.error("members", 'is required: a list of target names, e.g. ["ui", "ws"]')
        ports: dict[int, str] = {}
        for member in members:
            target = known.get(member)
            if target is None:
                raise table.error("members", f"{member!r} is not a [[target]]")
            other = ports.setdefault(target.address.port, member)
            if other != member:
                raise table.error(
                    "members",
                    f"{other!r} and {member!r} both use port {target.address.port}: a group "
                    "serves each member at its own port number",
                )
        groups.append(TargetGroup(name, tuple(dict.fromkeys(members))))
        table.finish()
    return tuple(groups)
