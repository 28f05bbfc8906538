"""A Unix socket to listen on for the daemon's local control: private, never stolen, never stale.

Plant staff on the gateway reach the running daemon through its control socket
(``STATE_DIR/control.sock``).  Who may use it is the file system's decision: the socket is mode
0660 (its owner and group; connecting needs write permission), in a folder nobody else may write
to (otherwise anyone could put their own socket in its place and read what staff send).

A daemon that crashed leaves its socket file behind.  The next one checks it before listening:
if nobody answers (connection refused) the file is removed and a new socket takes its place; if
somebody answers, another daemon is running with this state directory, and that is refused: two
daemons would fight over the mode file and the audit trail, and staff would not know which one
they talk to.  The check is a local connect with a short timeout, done once as the service starts.
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorUNIX
from twisted.logger import Logger

__all__ = ["SOCKET_MODE", "UnixSocketRefused", "UnixSocketService", "prepare_socket_path"]

log = Logger()

SOCKET_MODE = 0o660
FOLDER_MODE = 0o750
"""For a folder we create: the daemon's group may reach the socket, others not even list it."""
MAX_PATH_BYTES = 107
"""``sun_path`` holds 108 bytes with the terminating NUL (Linux)."""
PROBE_TIMEOUT = 1.0


class UnixSocketRefused(CannotListenError):
    """The socket cannot be listened on; ``reason`` says why in words, with the fix."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__("unix", str(path), reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def prepare_socket_path(path: Path, *, in_use: str) -> bool:
    """Make ``path`` ready to listen on; True if a stale socket was removed.

    ``in_use``: the words for a socket that answers ("another gateway daemon is running ...").
    Raises `UnixSocketRefused`.
    """
    size = len(os.fsencode(path))
    if size > MAX_PATH_BYTES:
        raise UnixSocketRefused(
            path,
            f"the path is {size} bytes long and a Unix socket's may be at most "
            f"{MAX_PATH_BYTES}; choose a shorter state directory",
        )
    _check_folder(path, path.parent)
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(found.st_mode):
        raise UnixSocketRefused(path, "something that is not a socket is in the way; move it away")
    if _answers(path):
        raise UnixSocketRefused(path, in_use)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as e:
        raise UnixSocketRefused(path, f"cannot remove the stale socket: {e.strerror}") from None
    return True


def _check_folder(path: Path, folder: Path) -> None:
    try:
        folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        found = folder.stat()
    except OSError as e:
        raise UnixSocketRefused(
            path, f"cannot create the folder {folder}: {e.strerror or e}"
        ) from None
    if not stat.S_ISDIR(found.st_mode):
        raise UnixSocketRefused(path, f"{folder} is not a folder")
    if found.st_mode & stat.S_IWOTH:
        mode = stat.S_IMODE(found.st_mode)
        raise UnixSocketRefused(
            path,
            f"the folder {folder} is writable by others (mode {mode:04o}), so anyone could "
            f"replace the control socket; fix it with: chmod o-w {folder}",
        )
    if not _writable(folder):
        raise UnixSocketRefused(
            path, f"the folder {folder} is not writable by this daemon's user (uid {os.getuid()})"
        )


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _answers(path: Path) -> bool:
    """Does a live process listen on ``path``?  Refused: no (a crashed daemon's file)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(os.fsencode(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except (TimeoutError, BlockingIOError):
        return True  # alive but busy: its backlog is full
    except OSError as e:
        raise UnixSocketRefused(path, f"cannot check the socket: {e.strerror or e}") from None
    finally:
        probe.close()
    return True


class UnixSocketService(Service):
    """Listen on a Unix socket while running; the socket file goes when the service stops.

    `prepare_socket_path` runs in ``startService`` (never at construction: ``makeService``
    starts nothing), and its refusal stops start-up with one line, like a port in use.
    """

    def __init__(
        self,
        reactor: IReactorUNIX,
        path: Path,
        factory: IProtocolFactory,
        *,
        in_use: str,
        mode: int = SOCKET_MODE,
    ) -> None:
        self._reactor = reactor
        self.path = path
        self._factory = factory
        self._in_use = in_use
        self._mode = mode
        self._port: IListeningPort | None = None

    def startService(self) -> None:
        if prepare_socket_path(self.path, in_use=self._in_use):
            log.warn(
                "removed the control socket {path} left by a daemon that did not stop cleanly",
                path=str(self.path),
            )
        self._port = self._reactor.listenUNIX(
            str(self.path),
            self._factory,  # type: ignore[arg-type]
            mode=self._mode,
            wantPID=False,
        )
        log.info("control socket on {path}", path=str(self.path))
        super().startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        stopped = port.stopListening()
        return succeed(None) if stopped is None else stopped
