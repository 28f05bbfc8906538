# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The control socket's file: a stale one replaced, a live one never stolen, mode 0660, a folder
nobody else may write to.

The checks run on real files and sockets in a temporary folder; listening goes through a
``MemoryReactorClock`` whose ``listenUNIX`` binds Twisted's real Unix port (so the file and its
mode are real) without running a reactor.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any, cast

from twisted.internet import unix
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.net import unixsocket
from gateway.net.unixsocket import (
    SOCKET_MODE,
    UnixSocketRefused,
    UnixSocketService,
    prepare_socket_path,
)

IN_USE = "another gateway daemon is running with this state directory"


class BindingReactor(MemoryReactorClock):
    """``listenUNIX`` binds a real ``twisted.internet.unix.Port`` (readers are only recorded)."""

    def listenUNIX(
        self, address: Any, factory: Any, backlog: Any = 50, mode: Any = 0o666, wantPID: Any = 0
    ) -> Any:
        super().listenUNIX(address, factory, backlog, mode, wantPID)
        port = unix.Port(address, factory, backlog, mode, self, False)
        port.startListening()
        return port


def leave_stale_socket(path: Path) -> None:
    """What a crashed daemon leaves: the socket file, with nobody listening on it."""
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()


class SocketPathTests(SynchronousTestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-unixsocket-")
        self.addCleanup(tmp.cleanup)
        self.state = Path(tmp.name) / "state"
        self.path = self.state / "control.sock"

    def refusal(self) -> str:
        error = self.assertRaises(UnixSocketRefused, prepare_socket_path, self.path, in_use=IN_USE)
        self.assertEqual(error.port, str(self.path))
        return str(error.reason)

    def test_a_missing_folder_is_made_for_the_owner_and_group(self) -> None:
        self.assertFalse(prepare_socket_path(self.path, in_use=IN_USE))
        mode = stat.S_IMODE(self.state.stat().st_mode)
        self.assertEqual(mode & 0o007, 0, oct(mode))

    def test_a_crashed_daemons_socket_is_removed(self) -> None:
        self.state.mkdir(mode=0o700)
        leave_stale_socket(self.path)
        self.assertTrue(prepare_socket_path(self.path, in_use=IN_USE))
        self.assertFalse(self.path.exists())

    def test_a_live_daemons_socket_is_never_taken(self) -> None:
        self.state.mkdir(mode=0o700)
        live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(live.close)
        live.bind(str(self.path))
        live.listen(1)
        self.assertEqual(self.refusal(), IN_USE)
        self.assertTrue(stat.S_ISSOCK(os.lstat(self.path).st_mode))

    def test_something_else_in_the_way_is_left_alone(self) -> None:
        self.state.mkdir(mode=0o700)
        self.path.write_text("notes\n")
        self.assertIn("not a socket", self.refusal())
        self.assertEqual(self.path.read_text(), "notes\n")
        self.path.unlink()
        self.path.symlink_to(self.state)
        self.assertIn("not a socket", self.refusal())

    def test_a_folder_others_may_write_to_is_refused(self) -> None:
        self.state.mkdir()
        os.chmod(self.state, 0o777)
        reason = self.refusal()
        self.assertIn("writable by others (mode 0777)", reason)
        self.assertIn(f"chmod o-w {self.state}", reason)
        os.chmod(self.state, 0o1777)  # sticky, like /tmp: still anyone's
        self.assertIn("writable by others", self.refusal())

    def test_a_folder_this_daemon_cannot_write_is_refused(self) -> None:
        self.state.mkdir(mode=0o700)
        self.patch(unixsocket, "_writable", lambda folder: False)
        self.assertIn("is not writable by this daemon's user", self.refusal())

    def test_a_folder_that_cannot_be_made_is_refused(self) -> None:
        self.state.write_text("a file where the folder should be\n")
        self.assertIn("cannot create the folder", self.refusal())

    def test_a_path_too_long_for_a_unix_socket_is_refused(self) -> None:
        self.path = self.state / ("x" * 120) / "control.sock"
        self.assertIn("choose a shorter state directory", self.refusal())
        self.assertFalse(self.state.exists())


class UnixSocketServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-unixsocket-")
        self.addCleanup(tmp.cleanup)
        self.state = Path(tmp.name) / "state"
        self.state.mkdir(mode=0o750)
        self.path = self.state / "control.sock"
        self.reactor = BindingReactor()
        self.factory = Factory.forProtocol(Protocol)

    def service(self) -> UnixSocketService:
        return UnixSocketService(self.reactor, self.path, self.factory, in_use=IN_USE)

    def stop(self, service: UnixSocketService) -> None:
        d = service.stopService()
        self.reactor.advance(0)
        self.successResultOf(d)

    def test_starting_nothing_until_started(self) -> None:
        self.service()
        self.assertEqual(self.reactor.unixServers, [])
        self.assertFalse(self.path.exists())

    def test_it_listens_with_mode_0660_and_removes_its_file_when_stopped(self) -> None:
        service = self.service()
        service.startService()
        [(address, factory, _, mode, want_pid)] = self.reactor.unixServers
        self.assertEqual(
            (address, factory, mode, want_pid), (str(self.path), self.factory, 0o660, False)
        )
        info = os.lstat(self.path)
        self.assertTrue(stat.S_ISSOCK(info.st_mode))
        self.assertEqual(stat.S_IMODE(info.st_mode), SOCKET_MODE)
        self.stop(service)
        self.assertFalse(self.path.exists())

    def test_a_second_daemon_is_refused_and_the_first_keeps_its_socket(self) -> None:
        first = self.service()
        first.startService()
        self.addCleanup(self.stop, first)
        second = self.service()
        error = self.assertRaises(UnixSocketRefused, second.startService)
        self.assertEqual(error.reason, IN_USE)
        self.assertFalse(second.running)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(probe.close)
        probe.connect(str(self.path))  # still the first daemon's
        self.successResultOf(second.stopService())

    def test_a_stale_socket_is_replaced_and_said_so(self) -> None:
        leave_stale_socket(self.path)
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        service = self.service()
        service.startService()
        self.addCleanup(self.stop, service)
        self.assertEqual(stat.S_IMODE(os.lstat(self.path).st_mode), SOCKET_MODE)
        warnings = [e for e in events if "did not stop cleanly" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
