"""``gateway audit`` and ``gateway relay audit``: the views, ``--verify``, and their exit codes."""

from __future__ import annotations

import io
import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import ClassVar

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.auditlog.files import CURRENT
from gateway.auditlog.writer import FileAuditTrail
from gateway.cli import main
from gateway.config import load_gateway_config, load_relay_config
from tests.helpers.pki import make_pki

START = 1_714_560_000.0  # 2024-05-01T10:40:00Z

GATEWAY_TOML = """
[relay]
address = "relay.example.com:443"
ca = "{pki}/ca.pem"
cert = "{pki}/gateway.pem"
key = "{pki}/gateway.key"

[[target]]
name = "web"
address = "127.0.0.1:80"
{service}
"""

RELAY_TOML = """
[gateways]
listen = "127.0.0.1:0"
ca = "{pki}/ca.pem"
cert = "{pki}/relay.pem"
key = "{pki}/relay.key"

[engineers]
listen = "127.0.0.1:0"
tokens = "engineers.toml"
"""


class AuditCommandTests(SynchronousTestCase):
    pki: ClassVar[tempfile.TemporaryDirectory[str]]

    @classmethod
    def setUpClass(cls) -> None:
        cls.pki = tempfile.TemporaryDirectory(prefix="test-audit-cli-pki-")
        make_pki(Path(cls.pki.name))  # the loaders check the files; audit reads none

    @classmethod
    def tearDownClass(cls) -> None:
        cls.pki.cleanup()

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-audit-cli-")
        self.addCleanup(tmp.cleanup)
        self.root = Path(tmp.name)
        self.gateway_toml = self.root / "gateway.toml"
        self.write_gateway_toml("")
        self.relay_toml = self.root / "relay.toml"
        self.relay_toml.write_text(RELAY_TOML.format(pki=self.pki.name))
        self.folder = self.root / "state" / "audit"
        self.clock = Clock()
        self.clock.advance(START)

    def write_gateway_toml(self, service: str) -> None:
        self.gateway_toml.write_text(GATEWAY_TOML.format(pki=self.pki.name, service=service))

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    def gateway(self, *flags: str) -> tuple[int, str, str]:
        return self.run_cli("audit", "-c", str(self.gateway_toml), *flags)

    def record_some(self, folder: Path | None = None) -> None:
        trail = FileAuditTrail(folder or self.folder, clock=self.clock)
        trail.record("mode.changed", who="alice", mode="attended")
        self.clock.advance(3600)
        trail.record("session.requested", who="bob", request="r1", reason="ticket 4711: camera")
        self.clock.advance(60)
        trail.record("session.approved", who="alice", request="r1", minutes=60)
        trail.close()

    def test_a_trail_that_does_not_exist_yet_says_so(self) -> None:
        code, out, err = self.gateway()
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, f"no audit records yet in {self.folder.resolve()}\n")
        self.assertEqual(self.gateway("--verify")[:2], (0, out))

    def test_the_readable_view_is_one_line_a_record_in_local_time(self) -> None:
        self.record_some()
        code, out, err = self.gateway()
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(len(lines), 3)
        local = datetime.fromtimestamp(START + 3600).strftime("%Y-%m-%d %H:%M:%S")
        self.assertTrue(lines[1].startswith(f"{local}  #2  session.requested"), lines[1])
        self.assertIn("bob", lines[1])
        self.assertIn('request=r1 reason="ticket 4711: camera"', lines[1])
        self.assertNotIn("prev", out)
        self.assertIn("minutes=60", lines[2])

    def test_json_prints_the_records_as_json_lines(self) -> None:
        self.record_some()
        code, out, _ = self.gateway("--json")
        records = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(code, 0)
        events = [r["event"] for r in records]
        self.assertEqual(events, ["mode.changed", "session.requested", "session.approved"])
        self.assertEqual(records[0]["time"], "2024-05-01T10:40:00.000Z")
        self.assertEqual(len(records[2]["prev"]), 64)

    def test_since_shows_the_later_records(self) -> None:
        self.record_some()
        code, out, _ = self.gateway("--since", "2024-05-01T11:40:00Z", "--json")
        self.assertEqual(code, 0)
        self.assertEqual(
            [json.loads(line)["event"] for line in out.splitlines()],
            ["session.requested", "session.approved"],
        )

    def test_session_shows_only_that_sessions_records(self) -> None:
        trail = FileAuditTrail(self.folder, clock=self.clock)
        trail.record("session.approved", who="alice", request="r1", session="s-1", minutes=60)
        trail.record("session.approved", who="alice", request="r2", session="s-2", minutes=60)
        trail.record(
            "http.request",
            who="erin",
            result="refused",
            session="s-1",
            target="web",
            method="POST",
            path="/upload",
            status=403,
            why="view-only",
        )
        trail.record("mode.changed", who="alice", mode="attended")
        trail.close()
        code, out, _ = self.gateway("--session", "s-1")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(len(lines), 2)
        self.assertIn("session.approved", lines[0])
        self.assertIn("http.request", lines[1])
        self.assertIn("method=POST path=/upload status=403 why=view-only", lines[1])
        self.assertIn("refused", lines[1])
        code, out, _ = self.gateway("--session", "s-9")
        self.assertEqual(out, f"no audit records yet of session s-9 in {self.folder.resolve()}\n")
        self.assertEqual(self.gateway("--session", "s-1", "--verify")[0], 2)

    def test_an_empty_trail_says_there_are_no_records_yet(self) -> None:
        FileAuditTrail(self.folder, clock=self.clock).close()
        self.assertEqual(self.gateway(), (0, f"no audit records yet in {self.folder}\n", ""))
        code, out, err = self.gateway("--json")
        self.assertEqual((code, out), (0, ""))
        self.assertIn("no audit records yet", err)

    def test_since_with_nothing_after_it_says_so(self) -> None:
        self.record_some()
        code, out, _ = self.gateway("--since", "1h")  # now is long after 2024
        self.assertEqual(code, 0)
        self.assertIn("no audit records since 1h in", out)

    def test_a_bad_since_is_one_line_and_exit_2(self) -> None:
        code, out, err = self.gateway("--since", "last tuesday")
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn("gateway: --since: 'last tuesday' is neither", err)

    def test_verify_checks_the_whole_trail_only(self) -> None:
        code, _, err = self.gateway("--verify", "--since", "1h")
        self.assertEqual(code, 2)
        self.assertIn("leave out --since", err)

    def test_verify_passes_on_an_untouched_trail(self) -> None:
        self.record_some()
        self.assertEqual(self.gateway("--verify"), (0, "audit trail OK: 3 records in 1 file\n", ""))

    def test_verify_fails_naming_the_edited_record(self) -> None:
        self.record_some()
        path = self.folder / CURRENT
        path.write_bytes(path.read_bytes().replace(b'"minutes":60', b'"minutes":600', 1))
        lines = path.read_bytes().splitlines()
        path.write_bytes(b"\n".join([lines[0].replace(b"alice", b"mallory"), *lines[1:]]) + b"\n")
        code, out, err = self.gateway("--verify")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn("audit.jsonl line 1 (seq 1) was edited", err)

    def test_verify_json_for_scripts(self) -> None:
        self.record_some()
        code, out, _ = self.gateway("--verify", "--json")
        result = json.loads(out)
        self.assertEqual(code, 0)
        self.assertEqual((result["ok"], result["records"], result["files"]), (True, 3, 1))
        self.assertEqual(result["last_seq"], 3)
        (self.folder / CURRENT).write_bytes(b"{}\n")
        code, out, _ = self.gateway("--verify", "--json")
        self.assertEqual((code, json.loads(out)["ok"]), (1, False))

    def test_an_unreadable_trail_is_one_line_and_exit_2(self) -> None:
        self.folder.parent.mkdir()
        self.folder.write_text("")  # a file where the folder should be
        code, out, err = self.gateway()
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn("cannot read the audit trail in", err)

    def test_the_state_dir_comes_from_the_config(self) -> None:
        self.write_gateway_toml('[service]\nstate_dir = "var/gw"\n')
        config = load_gateway_config(self.gateway_toml)
        self.assertEqual(config.state_dir, (self.root / "var" / "gw").resolve())
        self.record_some(config.state_dir / "audit")
        self.assertEqual(
            self.gateway("--verify")[0:2], (0, "audit trail OK: 3 records in 1 file\n")
        )

    def test_the_default_state_dir_is_beside_the_config(self) -> None:
        self.assertEqual(load_gateway_config(self.gateway_toml).state_dir, self.root / "state")
        self.assertEqual(load_relay_config(self.relay_toml).state_dir, self.root / "state")

    def test_a_state_dir_that_is_a_file_is_a_config_error(self) -> None:
        (self.root / "plain").write_text("")
        self.write_gateway_toml('[service]\nstate_dir = "plain"\n')
        code, _, err = self.gateway()
        self.assertEqual(code, 2)
        self.assertIn("service.state_dir", err)
        self.assertIn("is a file, not a folder", err)

    def test_the_relay_has_the_same_command(self) -> None:
        self.record_some()
        relay = ("relay", "audit", "-c", str(self.relay_toml))
        code, out, _ = self.run_cli(*relay)
        self.assertEqual((code, len(out.splitlines())), (0, 3))
        self.assertEqual(
            self.run_cli(*relay, "--verify"), (0, "audit trail OK: 3 records in 1 file\n", "")
        )
        code, out, _ = self.run_cli(*relay, "--json", "--since", "2024-05-01T11:00:00Z")
        self.assertEqual(len(out.splitlines()), 2)

    def test_relay_audit_takes_no_words(self) -> None:
        code, _, err = self.run_cli("relay", "audit", "extra", "-c", str(self.relay_toml))
        self.assertEqual(code, 2)
        self.assertIn("gateway relay audit [--since WHEN] [--json] [--verify]", err)

    def test_help_names_the_options(self) -> None:
        code, out, _ = self.run_cli("audit", "--help")
        self.assertEqual(code, 0)
        for flag in ("--since", "--json", "--verify", "-c"):
            self.assertIn(flag, out)
