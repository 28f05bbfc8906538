"""An emulated slow uplink in three network namespaces: plant, router, vendor.

    plant (10.211.1.2) --veth-- router --veth-- vendor (10.211.2.2)

The router forwards between its two veths and shapes both egress directions with a token bucket
(`tbf rate R burst 32kbit latency Q`): a modem with a rate and a queue of Q milliseconds, no
added delay, so the queue is the only latency. Each namespace's default congestion control is
set (cubic by default, what a Debian edge PC runs); a program may still choose its own per
socket. Everything stays inside the namespaces: nothing is routed to or from the host.

Used by the WAN benchmark (bench/wan.py) and the slow-uplink end-to-end test. Needs root.
Namespaces are named after the creating process (`gwan<pid>-plant`, ...), so a stale set left by
a killed run is recognised and removed by the next one; `Topology` is a context manager that
removes its own on exit, error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from bench.procs import echo_probe

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
PREFIX = "gwan"
PLANT_IP, ROUTER_PLANT_IP = "10.211.1.2", "10.211.1.1"
VENDOR_IP, ROUTER_VENDOR_IP = "10.211.2.2", "10.211.2.1"
PLANT_DEV, VENDOR_DEV = "wan0", "wan0"  # inside plant and vendor
TO_PLANT_DEV, TO_VENDOR_DEV = "plant0", "vendor0"  # inside the router: egress toward each side
TBF_BURST = "32kbit"
ALLOWED_CC = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control")  # the host's, global
DEFAULT_CC = Path("/proc/sys/net/ipv4/tcp_congestion_control")  # the opening thread's namespace


class NetnsError(Exception):
    """The namespaces could not be set up (not root, no `ip`, no veth or tbf); says why."""


@dataclass(frozen=True)
class Link:
    """One emulated uplink: a rate and the modem's queue, the same both ways."""

    name: str
    rate_bit: int
    queue_ms: int

    @property
    def bytes_per_s(self) -> float:
        return self.rate_bit / 8

    def tbf(self) -> list[str]:
        return [
            *("tbf", "rate", f"{self.rate_bit // 1000}kbit", "burst", TBF_BURST),
            *("latency", f"{self.queue_ms}ms"),
        ]


LINKS = {
    "10mbit": Link("10mbit", 10_000_000, 400),
    "50mbit": Link("50mbit", 50_000_000, 100),
    "2mbit": Link("2mbit", 2_000_000, 1000),
}


def run(argv: Sequence[str], timeout: float = 20) -> str:
    """Run a setup command; NetnsError with its stderr when it fails."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsError(f"`{' '.join(argv)}`: {e}") from e
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        raise NetnsError(f"`{' '.join(argv)}` failed: {err}")
    return done.stdout.decode(errors="replace")


_libc = ctypes.CDLL(None, use_errno=True)


def _enter(ns: str) -> None:
    """Move the calling thread (only it) into namespace `ns`."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"setns into {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(ns: str, fn: Callable[[], T], timeout: float = 30) -> T:
    """`fn()` in a fresh thread inside namespace `ns`: its sockets (and the children it starts)
    belong to `ns`; the calling thread stays where it is."""
    box: dict[str, object] = {}

    def body() -> None:
        try:
            _enter(ns)
            box["value"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e

    thread = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise NetnsError(f"a call inside {ns} did not finish within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _listening_here(port: int) -> bool:
    """Whether anything in this thread's namespace listens on TCP `port` (any address)."""
    try:
        table = Path("/proc/thread-self/net/tcp").read_text("ascii")
    except OSError:
        return False
    suffix = f":{port:04X}"
    for line in table.splitlines()[1:]:
        row = line.split()
        if len(row) > 3 and row[1].endswith(suffix) and row[3] == "0A":
            return True
    return False


def parse_backlog(text: str) -> int | None:
    """The root qdisc's backlog in bytes from `tc -s qdisc show dev X` (tbf: the only one)."""
    match = re.search(r"backlog (\d+)([KM]?)b", text)
    if match is None:
        return None
    scale = {"": 1, "K": 1000, "M": 1000_000}[match.group(2)]
    return int(match.group(1)) * scale


@dataclass(frozen=True)
class SocketQueue:
    """One TCP socket as `ss -tni` shows it: the bytes its kernel still holds."""

    local: str
    peer: str
    send_q: int  # written, not yet acknowledged (in flight + unsent)
    notsent: int  # written, not yet sent at all


def parse_ss(text: str) -> list[SocketQueue]:
    """`ss -tniH state established ...` output: a socket line (Recv-Q Send-Q local peer), then an
    indented info line (`notsent:N` only when N > 0)."""
    found: list[SocketQueue] = []
    current: list[str] | None = None
    info = ""

    def flush() -> None:
        if current is not None:
            notsent = re.search(r"\bnotsent:(\d+)", info)
            found.append(
                SocketQueue(
                    current[2], current[3], int(current[1]), int(notsent.group(1)) if notsent else 0
                )
            )

    for line in text.splitlines():
        if not line.strip():
            continue
        row = line.split()
        if not line[0].isspace() and len(row) >= 4 and row[0].isdigit() and row[1].isdigit():
            flush()
            current, info = row, ""
        else:
            info += " " + line
    flush()
    return found


class Topology:
    """The three namespaces, their veths and routes; the router's shaping set per link."""

    def __init__(self, congestion: str = "cubic") -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.plant, self.router, self.vendor = (
            f"{self.tag}-{n}" for n in ("plant", "router", "vendor")
        )
        self.congestion = congestion
        self.link: Link | None = None
        self.created: list[str] = []
        self.notes: list[str] = []

    # -- setup and teardown ---------------------------------------------------------------

    def __enter__(self) -> Topology:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        if os.geteuid() != 0:
            raise NetnsError("network namespaces need root (run it with sudo)")
        if shutil.which("ip") is None or shutil.which("tc") is None:
            raise NetnsError("`ip` and `tc` are missing (Debian: apt-get install iproute2)")
        remove_stale()
        for ns in (self.plant, self.router, self.vendor):
            run(["ip", "netns", "add", ns])
            self.created.append(ns)
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        p, r, v = self.plant, self.router, self.vendor
        run(
            [
                "ip",
                "link",
                "add",
                PLANT_DEV,
                "netns",
                p,
                "type",
                "veth",
                "peer",
                "name",
                TO_PLANT_DEV,
                "netns",
                r,
            ]
        )
        run(
            [
                "ip",
                "link",
                "add",
                VENDOR_DEV,
                "netns",
                v,
                "type",
                "veth",
                "peer",
                "name",
                TO_VENDOR_DEV,
                "netns",
                r,
            ]
        )
        for ns, dev, addr in (
            (p, PLANT_DEV, PLANT_IP),
            (r, TO_PLANT_DEV, ROUTER_PLANT_IP),
            (r, TO_VENDOR_DEV, ROUTER_VENDOR_IP),
            (v, VENDOR_DEV, VENDOR_IP),
        ):
            run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        run(["ip", "-n", p, "route", "add", "default", "via", ROUTER_PLANT_IP])
        run(["ip", "-n", v, "route", "add", "default", "via", ROUTER_VENDOR_IP])
        run(["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self._set_congestion()

    def _set_congestion(self) -> None:
        """The namespaces' default congestion control. The kernel lets a namespace other than the
        host's pick only an algorithm on the host's allowed list, so a missing one is added for
        the moment it takes and the list restored at once (sockets keep their namespace's
        default; programs choosing their own per socket are not affected)."""
        cc = self.congestion
        available = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")
        if cc not in available.read_text().split():
            with contextlib.suppress(NetnsError):
                run(["modprobe", f"tcp_{cc}"])
            if cc not in available.read_text().split():
                raise NetnsError(f"congestion control {cc} is not available in this kernel")
        for attempt in range(5):
            allowed = ALLOWED_CC.read_text().split()
            try:
                if cc not in allowed:
                    ALLOWED_CC.write_text(" ".join([*allowed, cc]))
                for ns in (self.plant, self.router, self.vendor):
                    in_netns(ns, lambda: DEFAULT_CC.write_text(cc))
                break
            except PermissionError as e:  # another run restored the list in between: again
                if attempt == 4:
                    raise NetnsError(f"cannot make {cc} the namespaces' default: {e}") from e
            finally:
                if cc not in allowed:
                    ALLOWED_CC.write_text(" ".join(allowed))
        for ns in (self.plant, self.vendor):
            got = self.exec_out(ns, ["sysctl", "-n", "net.ipv4.tcp_congestion_control"]).strip()
            if got != cc:
                raise NetnsError(f"{ns}: congestion control is {got}, not {cc}")

    def down(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, timeout=20)
        self.created = []

    def shape(self, link: Link) -> None:
        """The router's tbf on both egress directions (replaced when already there)."""
        for dev in (TO_PLANT_DEV, TO_VENDOR_DEV):
            run(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.router,
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    dev,
                    "root",
                    *link.tbf(),
                ]
            )
        self.link = link

    # -- inside the namespaces ---------------------------------------------------------------

    def exec_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        """`argv` run inside `ns` (`ip netns exec` execs it: the pid is the program's own)."""
        return ["ip", "netns", "exec", ns, *argv]

    def exec_out(self, ns: str, argv: Sequence[str], timeout: float = 20) -> str:
        return run(self.exec_argv(ns, argv), timeout=timeout)

    def listening(self, ns: str, port: int) -> bool:
        return in_netns(ns, lambda: _listening_here(port))

    def echo(self, ns: str, host: str, port: int) -> bool:
        """One verified echo from inside `ns`: the whole path works."""
        return in_netns(ns, lambda: echo_probe(port, host, timeout=3.0))

    def backlogs(self) -> dict[str, int]:
        """Bytes queued in the router right now, per direction ("to_vendor", "to_plant")."""
        out = {}
        for key, dev in (("to_vendor", TO_VENDOR_DEV), ("to_plant", TO_PLANT_DEV)):
            text = self.exec_out(self.router, ["tc", "-s", "qdisc", "show", "dev", dev])
            value = parse_backlog(text)
            if value is not None:
                out[key] = value
        return out

    def wait_drained(self, timeout: float = 20) -> None:
        """Until the router's queues are empty (a previous transfer's tail is gone)."""
        deadline = time.monotonic() + timeout
        while any(self.backlogs().values()):
            if time.monotonic() > deadline:
                raise NetnsError(f"the router's queue did not drain within {timeout:.0f} s")
            time.sleep(0.1)


def remove_stale() -> None:
    """Remove namespaces of earlier runs whose process is gone (killed before it cleaned up)."""
    try:
        listing = run(["ip", "netns", "list"])
    except NetnsError:
        return
    for line in listing.splitlines():
        match = re.match(rf"({PREFIX}(\d+)-\w+)", line.strip())
        if match and not Path(f"/proc/{match.group(2)}").exists():
            subprocess.run(["ip", "netns", "del", match.group(1)], capture_output=True, check=False)


def command(argv: Sequence[str]) -> Callable[[], str]:
    """A sampling function that runs `argv` and returns its output."""

    def sample() -> str:
        done = subprocess.run(list(argv), capture_output=True, timeout=5, check=False)
        return done.stdout.decode(errors="replace")

    return sample


class Sampler(Generic[T]):
    """A thread inside namespace `ns` that calls `fn` every `interval` seconds and keeps
    (monotonic time, result) pairs. One `setns` per thread; commands it runs are plain
    fork/exec (no `ip netns exec` per sample), sockets it opens are the namespace's."""

    def __init__(self, ns: str, fn: Callable[[], T], interval: float) -> None:
        self.ns, self.fn, self.interval = ns, fn, interval
        self.samples: list[tuple[float, T]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"sample-{ns}", daemon=True)

    def _loop(self) -> None:
        try:
            _enter(self.ns)
        except NetnsError as e:
            self.error = str(e)
            return
        next_at = time.monotonic()
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                self.samples.append((t, self.fn()))
            except Exception as e:  # a failed sample is noted, the rest go on
                self.error = f"{type(e).__name__}: {e}"
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Sampler[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@contextlib.contextmanager
def topology(link: Link, congestion: str = "cubic") -> Iterator[Topology]:
    """The three namespaces shaped to `link`, removed on the way out."""
    with Topology(congestion) as topo:
        topo.shape(link)
        yield topo
