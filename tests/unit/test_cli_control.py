# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The control commands against the real JSON API over a fake consent service, on a Unix socket.

`ApiOnSocket` listens on ``STATE_DIR/control.sock`` in a temporary folder and answers each
connection from one thread by feeding the bytes to the API's real ``Site`` over a
``StringTransport`` (the API is synchronous, so no reactor runs); the commands run in-process
through `gateway.cli.main` with captured streams.  So what is tested is the CLI and the API
together: the HTTP client, the paths and bodies, the words and the exit codes (0 done, 1 refused,
2 a mistake, 3 no daemon).
"""

from __future__ import annotations

import io
import json
import re
import socket
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import attrs
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import control, main, unixhttp
from gateway.cli.control import relative
from gateway.config import AccessMode
from gateway.edge.consent import Actor, Permission
from gateway.edge.status import session_report
from gateway.web import api
from gateway.web.api import api_root, api_site
from gateway.web.status import status_root
from tests.helpers.pki import make_pki
from tests.unit.test_api import REPORT, FakeConsent, FixedView

TESTER = Actor("operator", "alice", "control socket")


class ApiOnSocket:
    """The API tree over ``consent``, served on a Unix socket by a thread, one answer each."""

    def __init__(self, path: Path, consent: FakeConsent) -> None:
        self.view = view = FixedView()
        root = status_root(view, api_root(view, consent, lambda request: TESTER))
        self.site = api_site(root, reactor=Clock(), timeout=None)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(4)
        self.listener.settimeout(0.05)
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                data = self._read_request(connection)
                self.requests.append(data)
                protocol = self.site.buildProtocol(None)
                transport = StringTransport()
                protocol.makeConnection(transport)
                protocol.dataReceived(data)
                connection.sendall(transport.value())
                protocol.connectionLost(Failure(ConnectionDone()))

    @staticmethod
    def _read_request(connection: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += connection.recv(65536)
        head = data.partition(b"\r\n\r\n")[0].lower()
        found = re.search(rb"content-length: *(\d+)", head)
        want = len(head) + 4 + (int(found.group(1)) if found else 0)
        while len(data) < want:
            data += connection.recv(65536)
        return data


def columns(line: str) -> list[str]:
    """A table row's cells (separated by two spaces or more)."""
    return re.split(r" {2,}", line.strip())


class Run:
    def __init__(self, *argv: str) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        self.code = main(list(argv), stdout=self.out, stderr=self.err)

    @property
    def stdout(self) -> str:
        return self.out.getvalue()

    @property
    def stderr(self) -> str:
        return self.err.getvalue()

    def json(self) -> Any:
        return json.loads(self.stdout)


GATEWAY_TOML = """\
[relay]
address = "relay.example:443"
ca = "{pki}/ca.pem"
cert = "{pki}/gateway.pem"
key = "{pki}/gateway.key"

[[target]]
name = "web"
address = "192.168.10.2:80"

[service]
state_dir = "state"
"""


class ControlTestCase(SynchronousTestCase):
    pki: ClassVar[tempfile.TemporaryDirectory[str]]

    @classmethod
    def setUpClass(cls) -> None:
        """Real test certificates: the config loader checks the files it is pointed at."""
        cls.pki = tempfile.TemporaryDirectory(prefix="test-cli-control-pki-")
        make_pki(Path(cls.pki.name), gateway_id="plant7-gw")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.pki.cleanup()

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-cli-control-")
        self.addCleanup(tmp.cleanup)
        self.directory = Path(tmp.name)
        self.config = self.directory / "gateway.toml"
        self.config.write_text(GATEWAY_TOML.format(pki=self.pki.name))
        self.state = self.directory / "state"
        self.state.mkdir(mode=0o750)
        self.socket = self.state / "control.sock"
        self.consent = FakeConsent(now=time.time())

    def daemon(self) -> ApiOnSocket:
        server = ApiOnSocket(self.socket, self.consent)
        self.addCleanup(server.close)
        return server

    def run_command(self, *argv: str) -> Run:
        return Run(*argv, "-c", str(self.config))

    def assertOneLine(self, result: Run, code: int, line: str | None = None) -> str:
        """Exit ``code`` with one line on stderr (``line`` if given), no traceback."""
        self.assertEqual(result.code, code, result.stderr)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        if line is not None:
            self.assertEqual(lines[0], line)
        return lines[0]


class AccessTests(ControlTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = self.daemon()

    def test_access_shows_the_mode_in_words(self) -> None:
        result = self.run_command("access")
        self.assertEqual((result.code, result.stderr), (0, ""))
        self.assertEqual(
            result.stdout,
            "remote access is attended: engineers get in only with a request approved here or "
            "a code you give them\n",
        )
        self.assertEqual(
            self.run_command("access", "--json").json(),
            {"mode": "attended", "codes_locked_until": None},
        )

    def test_access_tells_when_codes_are_locked(self) -> None:
        self.consent.locked_until = self.consent.now + 480
        result = self.run_command("access")
        self.assertIn("session codes are locked until", result.stdout)
        self.assertIn("(in 8 min) after too many wrong codes", result.stdout)

    def test_switching_off_says_how_many_sessions_ended(self) -> None:
        self.consent.open("s-1")
        self.consent.open("s-2", engineer="bob")
        result = self.run_command("access", "disabled")
        self.assertEqual(
            (result.code, result.stdout), (0, "remote access switched off; 2 sessions ended\n")
        )
        [(name, actor, details)] = self.consent.calls
        self.assertEqual(
            (name, actor, details), ("set_mode", TESTER, {"mode": AccessMode.DISABLED})
        )

    def test_switching_modes_says_from_what(self) -> None:
        result = self.run_command("access", "unattended")
        self.assertEqual(result.stdout, "remote access is now unattended (was attended)\n")
        result = self.run_command("access", "unattended")
        self.assertEqual(result.stdout, "remote access was already unattended; nothing changed\n")
        result = self.run_command("access", "attended", "--json")
        self.assertEqual(
            result.json(), {"mode": "attended", "previous": "unattended", "sessions_ended": []}
        )

    def test_an_unknown_mode_is_a_mistake_and_nothing_is_sent(self) -> None:
        result = self.run_command("access", "off")
        self.assertOneLine(
            result,
            2,
            "gateway: 'off' is not an access mode: use attended, unattended, disabled",
        )
        self.assertEqual(self.server.requests, [])


class CodeTests(ControlTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = self.daemon()

    def test_a_code_is_printed_large_and_plain_with_its_expiry(self) -> None:
        result = self.run_command("code", "--minutes", "30", "--target", "web", "--view")
        self.assertEqual(result.code, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[:3], ["", "    042917", ""])
        self.assertIn("it works once, until ", lines[3])
        self.assertIn("(in 10 min)", lines[3])
        self.assertIn("a view-only session of 30 min on web", lines[4])
        [(_, _, details)] = self.consent.calls
        self.assertEqual(
            details, {"minutes": 30, "targets": ("web",), "permission": Permission.VIEW}
        )

    def test_code_json_is_the_apis_answer(self) -> None:
        answer = self.run_command("code", "--json").json()
        self.assertEqual(sorted(answer), ["code", "expires", "minutes", "permission", "targets"])
        self.assertRegex(answer["code"], r"^\d{6}$")

    def test_minutes_are_checked_before_anything_is_sent(self) -> None:
        for value in ("0", "-5", "ten", "1.5", ""):
            result = self.run_command("code", "--minutes", value)
            self.assertOneLine(
                result,
                2,
                f"gateway: --minutes: {value!r} is not a number of minutes (1 or more)",
            )
        self.assertEqual(self.server.requests, [])

    def test_a_target_name_with_odd_characters_is_a_mistake(self) -> None:
        result = self.run_command("code", "--target", "web;rm")
        self.assertOneLine(result, 2)
        self.assertEqual(self.server.requests, [])

    def test_the_services_refusal_is_one_line_and_exit_1(self) -> None:
        result = self.run_command("code", "--target", "plc")
        self.assertOneLine(result, 1, "gateway: target 'plc' is not in this gateway's allowlist")
        result = self.run_command("code", "--minutes", "9999")
        self.assertOneLine(result, 1, "gateway: a session lasts 1 to 480 minutes, not 9999")


class RequestTests(ControlTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = self.daemon()

    def test_no_requests(self) -> None:
        self.assertEqual(self.run_command("requests").stdout, "no requests are waiting\n")
        result = self.run_command("requests", "--json")
        self.assertEqual((result.code, result.stdout), (0, "[]\n"))

    def test_requests_are_a_table_people_read(self) -> None:
        self.consent.ask("r-1a2b3c", reason="ticket 4711: recalibrate camera")
        lines = self.run_command("requests").stdout.splitlines()
        self.assertEqual(
            lines[0].split(), ["REQUEST", "ENGINEER", "ASKED", "ANSWER", "BY", "TARGETS", "REASON"]
        )
        self.assertEqual(
            columns(lines[1]),
            [
                "r-1a2b3c",
                "erin",
                "3 min ago",
                "in 2 min",
                "web, hmi",
                "ticket 4711: recalibrate camera",
            ],
        )
        self.assertIn(f"gateway approve REQUEST -c {self.config}", lines[3])

    def test_approve_says_who_may_use_what_until_when(self) -> None:
        self.consent.ask("r-1a2b3c")
        result = self.run_command("approve", "r-1a2b3c", "--minutes", "30", "--target", "web")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertRegex(
            result.stdout,
            r"^approved r-1a2b3c: erin may use web \(full\) until \d\d:\d\d \(in 30 min\); "
            r"session s-1a2b3c\n$",
        )
        [(_, actor, details)] = self.consent.calls
        self.assertEqual(actor, TESTER)
        self.assertEqual(details["targets"], ("web",))

    def test_approve_view_grants_a_view_only_session(self) -> None:
        self.consent.ask("r-1a2b3c")
        result = self.run_command("approve", "r-1a2b3c", "--view")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertIn("(view)", result.stdout)
        self.assertEqual(self.consent.calls[0][2]["permission"], Permission.VIEW)

    def test_approve_session_switches_a_live_session_in_place(self) -> None:
        self.consent.open("s-1", permission=Permission.VIEW)
        result = self.run_command("approve", "--session", "s-1", "--full")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(
            result.stdout,
            "session s-1 (erin) now has full access: every request goes through; from the next "
            "request on every open connection\n",
        )
        result = self.run_command("approve", "--session", "s-1", "--view")
        self.assertIn("now has view-only access: GET, HEAD and OPTIONS only", result.stdout)
        result = self.run_command("approve", "--session", "s-1", "--view")
        self.assertEqual(result.stdout, "session s-1 already has view access; nothing changed\n")
        self.assertEqual(
            [(name, details["permission"]) for name, _, details in self.consent.calls],
            [
                ("set_permission", Permission.FULL),
                ("set_permission", Permission.VIEW),
                ("set_permission", Permission.VIEW),
            ],
        )

    def test_approve_session_switches_one_target_on_its_own(self) -> None:
        self.consent.open("s-1")
        result = self.run_command("approve", "--session", "s-1", "--view", "--target", "hmi")
        self.assertEqual(result.code, 0, result.stderr)
        self.assertEqual(
            result.stdout,
            "session s-1 (erin) is now web full, hmi view; from the next request on every open "
            "connection\n",
        )
        [(_, _, details)] = self.consent.calls
        self.assertEqual(details["targets"], ("hmi",))

    def test_approve_session_mistakes_send_nothing(self) -> None:
        self.consent.open("s-1")
        for args, problem in [
            (("--session", "s-1"), "approve --session: give --full or --view"),
            (("--session", "s-1", "--full", "--view"), "approve --session: give --full or --view"),
            (("r-1", "--session", "s-1", "--full"), "approve: a REQUEST or --session, not both"),
            (("--session", "s-1", "--full", "--minutes", "5"), "leave out --minutes"),
            ((), "approve: name a REQUEST, or give --session ID --full|--view"),
        ]:
            result = self.run_command("approve", *args)
            self.assertEqual(result.code, 2, args)
            self.assertIn(problem, result.stderr)
        self.assertEqual(self.consent.calls, [])
        result = self.run_command("approve", "--session", "s-9", "--full")
        self.assertOneLine(
            result, 1, "gateway: no live session 's-9' on this gateway (see `gateway sessions`)"
        )

    def test_an_unknown_request_exits_1_with_the_reason(self) -> None:
        result = self.run_command("approve", "r-999999")
        self.assertOneLine(
            result,
            1,
            "gateway: no request 'r-999999' on this gateway (see `gateway requests`)",
        )

    def test_a_second_approval_shows_the_services_refusal(self) -> None:
        self.consent.ask("r-1")
        self.assertEqual(self.run_command("approve", "r-1").code, 0)
        result = self.run_command("approve", "r-1")
        self.assertOneLine(result, 1, "gateway: request r-1 was already approved")

    def test_an_approval_for_a_target_off_the_allowlist_loses_nothing(self) -> None:
        self.consent.ask("r-1")
        result = self.run_command("approve", "r-1", "--target", "plc")
        self.assertOneLine(result, 1, "gateway: target 'plc' is not in this gateway's allowlist")
        self.assertEqual([r.id for r in self.consent.pending], ["r-1"])

    def test_an_id_with_odd_characters_is_a_mistake_and_nothing_is_sent(self) -> None:
        for ident in ("r-1;reboot", "../r", "r 1"):
            result = self.run_command("approve", ident)
            self.assertOneLine(
                result,
                2,
                f"gateway: {ident!r} is not a request id (see: gateway requests -c gateway.toml)",
            )
        self.assertEqual(self.server.requests, [])

    def test_deny_tells_what_the_engineer_is_told(self) -> None:
        self.consent.ask("r-1")
        result = self.run_command("deny", "r-1", "--reason", "not during the shift")
        self.assertEqual(
            result.stdout, "denied r-1 from erin; they are told: not during the shift\n"
        )
        result = self.run_command("deny", "r-1")
        self.assertOneLine(result, 1, "gateway: request r-1 was already denied")

    def test_a_reason_of_two_lines_is_a_mistake(self) -> None:
        result = self.run_command("deny", "r-1", "--reason", "one\ntwo")
        self.assertOneLine(result, 2, "gateway: --reason: give one line of at most 300 characters")


class SessionTests(ControlTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = self.daemon()

    def test_no_sessions(self) -> None:
        self.assertEqual(self.run_command("sessions").stdout, "no live sessions\n")
        self.assertEqual(self.run_command("sessions", "--json").json(), [])

    def test_sessions_are_a_table_people_read(self) -> None:
        self.consent.open("s-1", connections=("c-1", "c-2"))
        self.consent.open(
            "s-2", engineer="bob", expires=None, implicit=True, approved_by="unattended mode"
        )
        lines = self.run_command("sessions").stdout.splitlines()
        self.assertTrue(lines[0].startswith("SESSION"), lines)
        self.assertEqual(
            columns(lines[1]),
            [
                "s-1",
                "erin",
                "web, hmi",
                "full",
                "5 min ago",
                "in 55 min",
                "alice (control socket)",
                "2",
                "ticket 4711",
            ],
        )
        self.assertIn("no end", lines[2])
        self.assertIn("unattended mode", lines[2])

    def test_sessions_show_their_last_requests(self) -> None:
        session = self.consent.open("s-1", permission=Permission.VIEW)
        at = datetime.fromtimestamp(self.consent.now).astimezone()
        recent = [
            {
                "at": at.isoformat(),
                "target": "web",
                "method": "GET",
                "path": f"/page{n}",
                "result": "forwarded",
                "why": None,
                "status": 200,
            }
            for n in range(6)
        ]
        recent.append(
            {
                "at": at.isoformat(),
                "target": "web",
                "method": "POST",
                "path": "/upload",
                "result": "refused",
                "why": "view-only",
                "status": 403,
            }
        )
        self.server.view.current = attrs.evolve(
            REPORT, sessions=[attrs.evolve(session_report(session), recent_requests=recent)]
        )
        lines = self.run_command("sessions").stdout.splitlines()
        start = lines.index("last requests of s-1 (gateway audit --session s-1):")
        shown = [columns(line) for line in lines[start + 2 : start + 7]]
        clock = at.strftime("%H:%M:%S")
        self.assertEqual(shown[0], [clock, "web", "GET /page2", "forwarded 200"])
        self.assertEqual(shown[-1], [clock, "web", "POST /upload", "refused 403: view-only"])
        self.assertEqual(len(lines), start + 10)  # and the hints after a blank line
        self.assertIn("gateway approve --session SESSION --view|--full", lines[-1])

    def test_end_one_or_all(self) -> None:
        self.consent.open("s-1")
        self.consent.open("s-2", engineer="bob")
        self.consent.open("s-3", engineer="carl")
        result = self.run_command("end", "s-1", "--reason", "done for today")
        self.assertEqual(result.stdout, "ended s-1 (erin); its connections are closing\n")
        result = self.run_command("end", "--all")
        self.assertEqual(result.stdout, "ended 2 sessions: s-2 (bob), s-3 (carl)\n")
        self.assertEqual(self.run_command("end", "--all").stdout, "no live sessions to end\n")
        self.assertEqual(
            [(name, details) for name, _, details in self.consent.calls],
            [
                ("end", {"id": "s-1", "reason": "done for today"}),
                ("end_all", {"reason": ""}),
                ("end_all", {"reason": ""}),
            ],
        )

    def test_end_an_unknown_session_exits_1(self) -> None:
        result = self.run_command("end", "s-404")
        self.assertOneLine(
            result, 1, "gateway: no live session 's-404' on this gateway (see `gateway sessions`)"
        )

    def test_end_needs_one_session_or_all(self) -> None:
        for argv in (("end",), ("end", "s-1", "--all")):
            self.assertOneLine(
                self.run_command(*argv), 2, "gateway: end: name one SESSION or give --all"
            )
        self.assertEqual(self.server.requests, [])


class NoDaemonTests(ControlTestCase):
    def not_running_line(self) -> str:
        return (
            f"gateway: the gateway daemon is not running (no answer on {self.socket}); start it "
            f"with: systemctl start gateway (or gateway run -c {self.config})"
        )

    def test_no_socket_exits_3_in_one_line(self) -> None:
        for argv in (("access",), ("requests", "--json"), ("end", "--all"), ("code",)):
            result = self.run_command(*argv)
            self.assertOneLine(result, 3, self.not_running_line())
            self.assertEqual(result.stdout, "")

    def test_a_socket_left_by_a_crashed_daemon_exits_3(self) -> None:
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(self.socket))
        dead.close()
        self.assertOneLine(self.run_command("access"), 3, self.not_running_line())

    def test_no_state_directory_at_all_exits_3(self) -> None:
        self.state.rmdir()
        self.assertOneLine(self.run_command("sessions"), 3, self.not_running_line())

    def test_permission_denied_says_who_may_use_the_socket(self) -> None:
        def refuse(path: Path, timeout: float) -> socket.socket:
            raise PermissionError(13, "Permission denied")

        self.patch(unixhttp, "_connect_unix", refuse)
        line = self.assertOneLine(self.run_command("access"), 2)
        self.assertTrue(
            line.startswith(f"gateway: permission denied on {self.socket}: only "), line
        )
        self.assertIn("members of group", line)

    def test_a_bad_config_exits_2_naming_the_file(self) -> None:
        missing = self.directory / "missing.toml"
        result = Run("access", "-c", str(missing))
        self.assertOneLine(result, 2, f"gateway: {missing}: file does not exist")

    def test_a_daemon_that_answers_nonsense_is_refused_in_one_line(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(str(self.socket))
        listener.listen(1)

        def answer() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(b"SSH-2.0-OpenSSH\r\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 10)
        line = self.assertOneLine(self.run_command("access"), 1)
        self.assertTrue(line.startswith("gateway: no usable answer from the gateway daemon"), line)


class HelpTests(SynchronousTestCase):
    def test_every_control_command_has_help_with_an_example(self) -> None:
        for name in ("access", "code", "requests", "approve", "deny", "sessions", "end"):
            result = Run(name, "--help")
            self.assertEqual(result.code, 0, name)
            self.assertIn("example:\n  gateway " + name, result.stdout)
            self.assertIn("3 the daemon is not running", result.stdout)


class SocketNameTests(SynchronousTestCase):
    def test_the_commands_look_where_the_daemon_listens(self) -> None:
        self.assertEqual(control.CONTROL_SOCKET, api.CONTROL_SOCKET)


class RelativeTimeTests(SynchronousTestCase):
    def test_times_read_as_people_say_them(self) -> None:
        now = 1_700_000_000.0
        self.assertEqual(relative(now + 12 * 60, now), "in 12 min")
        self.assertEqual(relative(now - 180, now), "3 min ago")
        self.assertEqual(relative(now + 30, now), "in 30 s")
        self.assertEqual(relative(now + 0.2, now), "now")
        self.assertEqual(relative(now + 2 * 3600 + 300, now), "in 2 h 5 min")
        self.assertEqual(relative(now - 3 * 86400, now), "3 d ago")
        self.assertEqual(relative(None, now), "no end")
