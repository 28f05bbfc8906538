"""One-time enrollment tokens: single use, expiring, replaced by a newer one, hashed at rest."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.enrollment import revocations
from gateway.enrollment.revocations import Revocations
from gateway.enrollment.tokens import TokenRefused, TokenStore, gateway_id_of_token, token_hash


class TokenStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(lambda: __import__("shutil").rmtree(self.dir))
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = TokenStore(self.dir, self.clock.seconds)

    def test_a_token_names_its_gateway_and_works_once(self) -> None:
        issued = self.store.issue("plant7-line2", seconds=3600)
        self.assertTrue(issued.token.startswith("plant7-line2."))
        self.assertEqual(gateway_id_of_token(issued.token), "plant7-line2")
        self.assertEqual(self.store.use(issued.token), "plant7-line2")
        with self.assertRaises(TokenRefused) as refused:
            self.store.use(issued.token)
        self.assertIn("used already", str(refused.exception))
        self.assertEqual(refused.exception.gateway_id, "plant7-line2")

    def test_a_token_expires(self) -> None:
        issued = self.store.issue("plant7", seconds=600)
        self.clock.advance(600)
        with self.assertRaises(TokenRefused) as refused:
            self.store.use(issued.token)
        self.assertIn("expired", str(refused.exception))

    def test_a_token_works_until_it_expires(self) -> None:
        issued = self.store.issue("plant7", seconds=600)
        self.clock.advance(599)
        self.assertEqual(self.store.use(issued.token), "plant7")

    def test_a_new_token_replaces_the_unused_one_for_the_same_gateway(self) -> None:
        old = self.store.issue("plant7", seconds=600)
        other = self.store.issue("plant8", seconds=600)
        new = self.store.issue("plant7", seconds=600)
        with self.assertRaises(TokenRefused) as refused:
            self.store.use(old.token)
        self.assertIn("replaced", str(refused.exception))
        self.assertEqual(self.store.use(new.token), "plant7")
        self.assertEqual(self.store.use(other.token), "plant8")

    def test_an_unknown_or_forged_token_is_refused(self) -> None:
        issued = self.store.issue("plant7", seconds=600)
        last = "B" if issued.token.endswith("A") else "A"
        for forged in ("plant7." + "x" * 43, issued.token[:-1] + last, "plant8" + issued.token[6:]):
            with self.assertRaises(TokenRefused):
                self.store.use(forged)
        self.assertEqual(self.store.use(issued.token), "plant7")

    def test_only_the_hash_is_kept_in_a_private_file(self) -> None:
        issued = self.store.issue("plant7", seconds=600)
        files = [p for p in (self.dir / "enrollment").iterdir() if p.name != "lock"]
        text = "".join(p.read_text() for p in files)
        self.assertNotIn(issued.token, text)
        self.assertNotIn(issued.token.split(".")[1], text)
        self.assertIn(token_hash(issued.token), text)
        for path in files:
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE((self.dir / "enrollment").stat().st_mode), 0o700)

    def test_withdrawing_cancels_the_gateways_unused_tokens(self) -> None:
        issued = self.store.issue("plant7", seconds=600)
        self.assertEqual(self.store.withdraw("plant7"), 1)
        with self.assertRaises(TokenRefused):
            self.store.use(issued.token)

    def test_text_that_is_no_token_names_no_gateway(self) -> None:
        for text in ("", "plant7", "plant7.short", "Plant_7." + "x" * 43):
            with self.assertRaises(ValueError):
                gateway_id_of_token(text)


class RevocationListTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        self.addCleanup(lambda: __import__("shutil").rmtree(self.dir))

    def test_an_id_or_a_serial_is_revoked_and_seen_by_a_reader(self) -> None:
        reader = Revocations(self.dir)
        self.assertIsNone(reader.why_revoked("plant7", 0xABC))
        self.assertTrue(revocations.revoke(self.dir, "plant8", now=1.0, serial="0xAbC"))
        self.assertFalse(revocations.revoke(self.dir, "plant8", now=2.0, serial="abc"))
        self.assertTrue(reader.refresh())
        self.assertIsNone(reader.why_revoked("plant8", 0xABD))
        self.assertIn("serial abc", reader.why_revoked("plant8", 0xABC) or "")
        self.assertTrue(revocations.revoke(self.dir, "plant7", now=3.0))
        self.assertTrue(reader.refresh())
        self.assertIn("revoked", reader.why_revoked("plant7", None) or "")
        self.assertFalse(reader.refresh())  # unchanged

    def test_a_broken_list_keeps_the_last_good_one(self) -> None:
        revocations.revoke(self.dir, "plant7", now=1.0)
        reader = Revocations(self.dir)
        (self.dir / "enrollment" / "revoked.json").write_text("{ not json")
        self.assertFalse(reader.refresh())
        self.assertIsNotNone(reader.problem)
        self.assertIsNotNone(reader.why_revoked("plant7", None))


class OwnerTests(SynchronousTestCase):
    def test_files_written_as_root_stay_the_relays(self) -> None:
        import os

        if os.geteuid() != 0:
            raise __import__("unittest").SkipTest("needs root")
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(lambda: __import__("shutil").rmtree(directory))
        os.chown(directory, 65534, 65534)  # the relay's user owns its state directory
        TokenStore(directory, Clock().seconds).issue("plant7", seconds=60)
        revocations.revoke(directory, "plant8", now=1.0)
        for path in [directory / "enrollment", *(directory / "enrollment").iterdir()]:
            self.assertEqual((path.stat().st_uid, path.stat().st_gid), (65534, 65534), path)
