"""The state directory: created private, refused when others could write it, the mode kept."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.config import AccessMode, ConfigError
from gateway.edge.state import MODE_FILE, StateDirectory, StateDirError, StateWriteError
from tests.helpers.unprivileged import as_plain_user

CONFIG = Path("/etc/gateway/gateway.toml")


class StateDirectoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-edge-state-")
        self.addCleanup(tmp.cleanup)
        self.root = Path(tmp.name)

    def test_a_missing_directory_is_created_private(self) -> None:
        path = self.root / "var" / "state"
        state = StateDirectory.open(path, CONFIG)
        self.assertEqual(state.path, path)
        self.assertEqual(path.stat().st_mode & 0o777, 0o700)

    def test_a_directory_others_can_write_is_refused_with_the_fix(self) -> None:
        for mode in (0o770, 0o707, 0o777):
            path = self.root / f"open-{mode:o}"
            path.mkdir()
            os.chmod(path, mode)
            error = self.assertRaises(StateDirError, StateDirectory.open, path, CONFIG)
            self.assertIsInstance(error, ConfigError)  # the CLI's one line and exit 2
            self.assertEqual(
                str(error),
                f"{CONFIG}: service.state_dir: {str(path)!r} is writable by other users, who "
                f"could switch remote access on (run: chmod go-w {path})",
            )
            self.assertNotIn("\n", str(error))

    def test_a_directory_others_may_only_read_is_fine(self) -> None:
        path = self.root / "readable"
        path.mkdir()
        os.chmod(path, 0o755)
        StateDirectory.open(path, CONFIG)

    def test_a_file_in_its_place_is_refused(self) -> None:
        path = self.root / "file"
        path.write_text("x")
        error = self.assertRaises(StateDirError, StateDirectory.open, path, CONFIG)
        self.assertIn("is not a directory", str(error))

    def test_a_directory_this_user_cannot_write_is_refused(self) -> None:
        path = self.root / "locked"
        path.mkdir()
        os.chmod(path, 0o500)
        self.addCleanup(os.chmod, path, 0o700)

        def check() -> None:
            error = self.assertRaises(StateDirError, StateDirectory.open, path, CONFIG)
            self.assertIn("is not writable by this user", str(error))

        as_plain_user(check, own=(self.root, path))

    def test_a_directory_that_cannot_be_created_is_refused(self) -> None:
        parent = self.root / "parent"
        parent.mkdir()
        os.chmod(parent, 0o500)
        self.addCleanup(os.chmod, parent, 0o700)

        def check() -> None:
            error = self.assertRaises(StateDirError, StateDirectory.open, parent / "state", CONFIG)
            self.assertIn("cannot create", str(error))
            self.assertIn("Permission denied", str(error))

        as_plain_user(check, own=(self.root, parent))


class ModeFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-edge-state-")
        self.addCleanup(tmp.cleanup)
        self.root = Path(tmp.name)
        self.state = StateDirectory.open(self.root / "state", CONFIG)

    def test_no_choice_yet_reads_as_none(self) -> None:
        self.assertIsNone(self.state.read_mode())

    def test_a_saved_mode_is_read_back_with_who_and_when(self) -> None:
        self.state.write_mode(AccessMode.DISABLED, by="alice (127.0.0.1)", at=1_700_000_000)
        self.assertIs(self.state.read_mode(), AccessMode.DISABLED)
        saved = json.loads(self.state.mode_file.read_text())
        self.assertEqual(
            saved,
            {"mode": "disabled", "by": "alice (127.0.0.1)", "changed": "2023-11-14T22:13:20+00:00"},
        )
        self.state.write_mode(AccessMode.UNATTENDED, by="bob", at=1_700_000_001)
        self.assertIs(self.state.read_mode(), AccessMode.UNATTENDED)
        self.assertEqual(os.listdir(self.state.path), [MODE_FILE])  # no temporary file left

    def test_forgetting_the_choice_goes_back_to_the_configuration(self) -> None:
        self.state.write_mode(AccessMode.DISABLED, by="alice", at=0)
        self.state.forget_mode()
        self.assertIsNone(self.state.read_mode())
        self.state.forget_mode()  # nothing to forget: fine

    def test_a_damaged_mode_file_stops_start_up_instead_of_guessing(self) -> None:
        for text in ("{", '{"mode": "wide open"}', "[]", '{"by": "x"}'):
            self.state.mode_file.write_text(text)
            error = self.assertRaises(StateDirError, self.state.read_mode)
            self.assertTrue(str(error).startswith(f"{self.state.mode_file}: is not an access mode"))
            self.assertIn("remove it to start from gateway.toml's [access] mode", str(error))

    def test_a_mode_that_cannot_be_written_says_why(self) -> None:
        os.chmod(self.state.path, 0o500)
        self.addCleanup(os.chmod, self.state.path, 0o700)

        def check() -> None:
            error = self.assertRaises(
                StateWriteError, self.state.write_mode, AccessMode.ATTENDED, by="alice", at=0
            )
            self.assertIn("cannot write", str(error))

        as_plain_user(check, own=(self.root, self.state.path))
