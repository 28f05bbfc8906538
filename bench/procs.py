"""Starting, watching and reliably stopping the benchmark's processes; reading /proc.

Every process starts in its own session (so its process group can be signalled as a whole), and
every descendant ever seen is remembered by (pid, start time): sshd forks per connection into a
new session, so a process group alone does not reach everything. The harness also makes itself a
child subreaper, so anything orphaned on the way is re-parented to it and swept at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PR_SET_CHILD_SUBREAPER = 36


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat the benchmark uses."""

    pid: int
    ppid: int
    starttime: int
    cpu_ticks: int  # utime + stime + cutime + cstime
    rss_pages: int


def parse_stat(text: str) -> ProcStat:
    """Parse /proc/PID/stat; the command name may itself contain spaces and parentheses."""
    pid = int(text[: text.index(" ")])
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); field k of proc(5) is rest[k - 3].
    utime, stime, cutime, cstime = (int(rest[i]) for i in (11, 12, 13, 14))
    return ProcStat(
        pid=pid,
        ppid=int(rest[1]),
        starttime=int(rest[19]),
        cpu_ticks=utime + stime + cutime + cstime,
        rss_pages=int(rest[21]),
    )


def read_stat(pid: int) -> ProcStat | None:
    try:
        return parse_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None  # gone, or a zombie mid-exit


def all_stats() -> dict[int, ProcStat]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def tree(roots: Iterable[int], stats: Mapping[int, ProcStat]) -> list[ProcStat]:
    """The processes in `stats` that are one of `roots` or descend from one."""
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: list[ProcStat] = []
    todo = [pid for pid in roots if pid in stats]
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        found.append(stats[pid])
        todo.extend(children.get(pid, []))
    return found


@dataclass(frozen=True)
class Usage:
    """CPU ticks per process (keyed by pid and start time, so a reused pid never counts) and RSS."""

    cpu: dict[tuple[int, int], int]
    rss_bytes: int

    def cpu_seconds_since(self, earlier: Usage) -> float:
        ticks = sum(t - earlier.cpu.get(key, 0) for key, t in self.cpu.items())
        return ticks / CLK_TCK


def usage(roots: Sequence[int]) -> Usage:
    """CPU and RSS of the process trees under `roots`, summed."""
    members = tree(roots, all_stats())
    return Usage(
        cpu={(s.pid, s.starttime): s.cpu_ticks for s in members},
        rss_bytes=sum(s.rss_pages for s in members) * PAGE_SIZE,
    )


def become_subreaper() -> None:
    """Orphans of our children re-parent to us rather than to init, so cleanup can find them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not fatal: the (pid, start time) registry still covers known descendants


def raise_nofile_limit() -> int:
    """Raise the soft open-files limit to the hard one (children inherit it); return it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 65536 and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
            return 65536
        except (ValueError, OSError):
            pass
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def free_ports(count: int) -> list[int]:
    """Ports that were free a moment ago (all held at once, so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def why_dead(self) -> str:
        return f"{self.name} exited with {self.popen.returncode}: {tail(self.log)}"


@dataclass
class Supervisor:
    """Owns every process the benchmark starts; `stop_all` leaves none behind."""

    logdir: Path
    prefix: str = ""  # e.g. "run2-", so each fresh run keeps its own logs
    procs: list[Proc] = field(default_factory=list)
    known: dict[int, int] = field(default_factory=dict)  # pid -> start time, all ever seen

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        stdin_pipe: bool = False,
        stdout_pipe: bool = False,
    ) -> Proc:
        log = self.logdir / f"{self.prefix}{name}.log"
        with log.open("ab") as logfile:
            popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else logfile,
                stderr=logfile,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        self.remember([proc.pid])
        return proc

    def remember(self, roots: Iterable[int]) -> None:
        for stat in tree(roots, all_stats()):
            self.known[stat.pid] = stat.starttime

    def stop(self, proc: Proc, grace: float = 5.0) -> None:
        """SIGTERM the process group and known descendants, then SIGKILL what is left."""
        self.remember([proc.pid])
        family = [s.pid for s in tree([proc.pid], all_stats()) if self._alive(s.pid)]
        self._signal_group(proc, signal.SIGTERM)
        for pid in family:
            self._signal_known(pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=grace)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(self._alive(pid) for pid in family):
            time.sleep(0.02)
        self._signal_group(proc, signal.SIGKILL)
        for pid in family:
            self._signal_known(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=grace)
        for stream in (proc.popen.stdin, proc.popen.stdout):
            if stream is not None:
                stream.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc, grace=3.0)
        for pid in list(self.known):
            self._signal_known(pid, signal.SIGKILL)
        self._sweep_orphans()

    def _alive(self, pid: int) -> bool:
        stat = read_stat(pid)
        return stat is not None and stat.starttime == self.known.get(pid)

    def _signal_known(self, pid: int, sig: signal.Signals) -> None:
        if self._alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    @staticmethod
    def _signal_group(proc: Proc, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # start_new_session: the group id is the pid

    @staticmethod
    def _sweep_orphans() -> None:
        """Kill and reap anything re-parented to us (we are a subreaper)."""
        me = os.getpid()
        for stat in all_stats().values():
            if stat.ppid == me:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stat.pid, signal.SIGKILL)
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return


def read_line(stream: IO[bytes], timeout: float, what: str) -> str:
    """One line from a child's stdout pipe, or BenchError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise BenchError(f"{what}: no output within {timeout:.0f} s")
            chunk = os.read(stream.fileno(), 1)
            if not chunk:
                raise BenchError(f"{what}: exited without output")
            buf += chunk
    return buf.decode().strip()


def wait_until(
    ready: Callable[[], bool], procs: Sequence[Proc], timeout: float, what: str
) -> float:
    """Poll `ready` until true; fail early if a process we depend on died. Returns seconds."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        for proc in procs:
            if not proc.alive():
                raise BenchError(f"{what}: {proc.why_dead()}")
        if ready():
            return time.monotonic() - start
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready within {timeout:.0f} s")
        time.sleep(0.02)


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def run_quiet(
    argv: Sequence[str],
    timeout: float = 30,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run a short helper command; return its stdout, or BenchError naming it and its stderr."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            timeout=timeout,
            check=False,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"{Path(argv[0]).name}: {e}") from e
    out = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        last = err[-1] if err else out.strip()[-200:]
        raise BenchError(f"`{' '.join(argv[:4])} ...` exited {done.returncode}: {last}")
    return out


def echo_probe(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> bool:
    """One verified echo through the path: the whole chain is up, not only its first listener."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"ECHO\nprobe")
            got = b""
            while len(got) < 5:
                chunk = s.recv(5 - len(got))
                if not chunk:
                    return False
                got += chunk
            return got == b"probe"
    except OSError:
        return False
