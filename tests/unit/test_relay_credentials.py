"""Who may ask, as engineers.toml says: patterns, expiry, one engineer whatever the case, edits that
never lose an entry when several run at once, and failed logins that lock a source out."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import LoginLimits
from gateway.relay.credentials import (
    CredentialFileError,
    TokenFile,
    add_engineer,
    expiry_moment,
    read_entries,
    remove_engineer,
)
from gateway.relay.logins import FailureCounter

WRITERS = 8


class CredentialFileCase(SynchronousTestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-relay-credentials-")
        self.addCleanup(tmp.cleanup)
        self.path = Path(tmp.name) / "engineers.toml"


class PatternTests(CredentialFileCase):
    def test_patterns_decide_which_gateways_an_engineer_may_reach(self) -> None:
        add_engineer(self.path, "alice", gateways=["plant7-*", "lab"])
        (entry,) = read_entries(self.path)
        self.assertTrue(entry.may_reach("plant7-cell2"))
        self.assertTrue(entry.may_reach("lab"))
        self.assertFalse(entry.may_reach("plant8-cell2"))
        self.assertFalse(entry.may_reach("lab2"))

    def test_an_engineer_without_patterns_reaches_no_gateway(self) -> None:
        add_engineer(self.path, "bob")
        (entry,) = read_entries(self.path)
        self.assertFalse(entry.may_reach("plant7-cell2"))

    def test_a_token_stops_working_on_its_expiry_day(self) -> None:
        add_engineer(self.path, "carol", gateways=["*"], expires=date(2030, 1, 2))
        (entry,) = read_entries(self.path)
        moment = expiry_moment(date(2030, 1, 2))
        self.assertEqual(moment, datetime(2030, 1, 2, tzinfo=UTC).timestamp())
        self.assertFalse(entry.expired(moment - 1))
        self.assertTrue(entry.expired(moment))


class NameTests(CredentialFileCase):
    def test_names_differing_only_in_case_are_one_engineer(self) -> None:
        add_engineer(self.path, "Alice", gateways=["*"])
        error = self.assertRaises(CredentialFileError, add_engineer, self.path, "alice")
        self.assertIn("an engineer named 'Alice' already exists", str(error))
        self.assertIn("differing only in case", str(error))
        self.assertEqual([e.name for e in read_entries(self.path)], ["Alice"])

    def test_remove_finds_the_engineer_whatever_the_case(self) -> None:
        add_engineer(self.path, "Alice", gateways=["*"])
        token = add_engineer(self.path, "bob", gateways=["*"])
        self.assertEqual(remove_engineer(self.path, "ALICE"), "Alice")
        self.assertEqual([e.name for e in read_entries(self.path)], ["bob"])
        store = TokenFile(self.path)
        engineer = store.authenticate(token)
        assert engineer is not None
        self.assertEqual(engineer.name, "bob")


class ConcurrentEditTests(CredentialFileCase):
    def test_add_engineer_runs_at_the_same_time_lose_no_entry(self) -> None:
        """Real processes of ``gateway relay add-engineer`` started together: the file lock
        makes each read-modify-write whole, so every engineer is in the file afterwards."""
        config = _relay_toml(self.path)
        add = [sys.executable, "-m", "gateway", "relay", "add-engineer"]
        commands = [
            [*add, f"eng{i}", "-c", str(config), "--gateways", "plant-*"] for i in range(WRITERS)
        ]
        runs = [
            subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands
        ]
        outcomes = [run.communicate(timeout=60) for run in runs]
        for run, (_, err) in zip(runs, outcomes, strict=True):
            self.assertEqual(run.returncode, 0, err.decode())
        names = sorted(e.name for e in read_entries(self.path))
        self.assertEqual(names, sorted(f"eng{i}" for i in range(WRITERS)))
        self.assertEqual(self.path.stat().st_mode & 0o077, 0)


class FailureCounterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.counter = FailureCounter(
            LoginLimits(failures=3, window=60.0, lockout=300.0), self.clock
        )

    def test_the_limit_within_the_window_locks_out_for_the_lockout(self) -> None:
        self.assertIsNone(self.counter.failed("198.51.100.7"))
        self.clock.advance(10)
        self.assertIsNone(self.counter.failed("198.51.100.7"))
        until = self.counter.failed("198.51.100.7")
        self.assertEqual(until, 310.0)
        self.assertEqual(self.counter.locked_until("198.51.100.7"), 310.0)
        self.assertIsNone(self.counter.locked_until("203.0.113.9"), "other sources are free")
        self.clock.advance(299)
        self.assertEqual(self.counter.locked_until("198.51.100.7"), 310.0)
        self.clock.advance(1)
        self.assertIsNone(self.counter.locked_until("198.51.100.7"))

    def test_failures_spread_wider_than_the_window_never_lock_out(self) -> None:
        for _ in range(10):
            self.assertIsNone(self.counter.failed("198.51.100.7"))
            self.clock.advance(31)
        self.assertIsNone(self.counter.locked_until("198.51.100.7"))


def _relay_toml(tokens: Path) -> Path:
    """A relay.toml beside ``tokens``, its certificate files present (the loader checks that they
    exist and that the key is private; add-engineer reads none of them)."""
    folder = tokens.parent
    for name in ("ca.pem", "relay.pem", "relay.key"):
        (folder / name).write_text("dummy\n")
    (folder / "relay.key").chmod(0o600)
    config = folder / "relay.toml"
    config.write_text(
        '[gateways]\nlisten = "127.0.0.1:0"\nca = "ca.pem"\ncert = "relay.pem"\n'
        'key = "relay.key"\n\n[engineers]\nlisten = "127.0.0.1:0"\n'
        f'tokens = "{tokens.name}"\n'
    )
    return config
