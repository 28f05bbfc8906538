"""Snapshot redaction (by key name and by content), the manifest, refusing a leak, inspection."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.snapshot import (
    REDACTED,
    Snapshot,
    SnapshotDamaged,
    SnapshotRefused,
    certificate_file_summary,
    inspect,
    redact_json,
    redact_jsonl,
    redact_text,
    redact_toml,
)
from tests.helpers.pki import make_pki

KEY = (
    "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBodyOfTheKeyThatMustNeverLeaveXXXXXXXXXXXXXXXXXXXX\n"
    "-----END EC PRIVATE KEY-----\n"
)


class RedactionTests(SynchronousTestCase):
    def test_a_pem_private_key_block_is_removed_anywhere(self) -> None:
        for text in (KEY, f"before\n{KEY}after", KEY.replace("EC ", ""), KEY.split("-----END")[0]):
            self.assertNotIn("PRIVATE KEY", redact_text(text), text)
            self.assertNotIn("BodyOfTheKey", redact_text(text))

    def test_named_secret_values_are_replaced(self) -> None:
        text = redact_text("user:pw-of-plant ok", ["pw-of-plant"])
        self.assertEqual(text, f"user:{REDACTED} ok")

    def test_secret_looking_text_in_logs_is_replaced(self) -> None:
        line = (
            "password=hunter22 Authorization: Bearer abcdefghijklmnopqrstuvwx code 123456 "
            "http://plant:pw@proxy:3128 code refused: wrong"
        )
        out = redact_text(line)
        for secret in ("hunter22", "abcdefghijklmnopqrstuvwx", "123456", ":pw@"):
            self.assertNotIn(secret, out)
        self.assertIn("code refused: wrong", out)

    def test_json_keys_by_name_at_any_depth(self) -> None:
        value = {
            "a": {"token": "t0k3n", "password": "p", "code": "123456", "name": "x"},
            "list": [{"secret": "s"}],
            "proxy_credentials": "/etc/gw/creds",
            "key": "gw.key",
        }
        out = redact_json(value)
        self.assertEqual(out["a"], {"token": REDACTED, "password": REDACTED, "code": REDACTED,
                                    "name": "x"})  # fmt: skip
        self.assertEqual(out["list"], [{"secret": REDACTED}])
        self.assertEqual(out["proxy_credentials"], "/etc/gw/creds")  # a path, kept
        self.assertEqual(out["key"], "gw.key")

    def test_toml_keeps_comments_and_paths_and_hides_secrets(self) -> None:
        toml = (
            '# the relay\n[relay]\nkey = "gateway.key"\nproxy = "http://u:pw1234@proxy:3128"\n'
            'password = "hunter22"\n'
        )
        out = redact_toml(toml)
        self.assertIn("# the relay", out)
        self.assertIn('key = "gateway.key"', out)
        self.assertIn(f'password = "{REDACTED}"', out)
        self.assertNotIn("pw1234", out)

    def test_audit_lines_without_secrets_keep_their_bytes(self) -> None:
        clean = b'{"event":"stream.opened","prev":"00"}'
        dirty = b'{"event":"code.created","code":"123456"}'
        out = redact_jsonl(clean + b"\n" + dirty + b"\n")
        first, second, _ = out.split(b"\n")
        self.assertEqual(first, clean)
        self.assertNotIn(b"123456", second)


class ArchiveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="gw-snap-"))

    def test_the_archive_is_private_and_its_manifest_verifies(self) -> None:
        snap = Snapshot(secrets=["pw-of-plant"])
        snap.add_json("versions.json", {"product": "1"})
        snap.add_text("logs/gateway.log", "login with pw-of-plant\n")
        snap.missing("status", "the gateway daemon was not running")
        path = self.tmp / "s.tar.gz"
        snap.write(path)
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)
        found = inspect(path)
        self.assertTrue(found.ok, found.problems)
        names = [name for name, _, _ in found.members]
        self.assertIn("status.MISSING.txt", names)
        self.assertIn("README.txt", names)
        with tarfile.open(path) as tar:
            log = tar.extractfile("snapshot/logs/gateway.log").read()  # type: ignore[union-attr]
            readme = tar.extractfile("snapshot/README.txt").read()  # type: ignore[union-attr]
        self.assertNotIn(b"pw-of-plant", log)
        self.assertIn(b"status: the gateway daemon was not running", readme)

    def test_a_key_that_slipped_past_is_refused_and_nothing_written(self) -> None:
        snap = Snapshot()
        snap.members["raw.bin"] = KEY.encode()  # as a bug would, bypassing the add_ methods
        path = self.tmp / "never.tar.gz"
        self.assertRaises(SnapshotRefused, snap.write, path)
        self.assertFalse(path.exists())

    def test_inspect_names_an_edited_a_missing_and_an_extra_member(self) -> None:
        snap = Snapshot()
        snap.add_json("a.json", {"x": 1})
        snap.add_json("b.json", {"y": 2})
        good = self.tmp / "good.tar.gz"
        snap.write(good)
        with tarfile.open(good) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        members["snapshot/a.json"] = b"{}"
        del members["snapshot/b.json"]
        members["snapshot/extra.txt"] = b"?"
        bad = self.tmp / "bad.tar.gz"
        with tarfile.open(bad, "w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        found = inspect(bad)
        self.assertFalse(found.ok)
        self.assertEqual(
            sorted(found.problems),
            [
                "a.json: SHA-256 does not match the manifest",
                "b.json: listed in the manifest but missing",
                "extra.txt: not in the manifest",
            ],
        )

    def test_something_that_is_not_a_snapshot_is_said_so(self) -> None:
        path = self.tmp / "x.tar.gz"
        path.write_bytes(b"not a tar")
        self.assertRaises(SnapshotDamaged, inspect, path)

    def test_certificate_summaries_never_carry_a_key(self) -> None:
        pki = make_pki(self.tmp / "pki")
        both = self.tmp / "both.pem"
        both.write_bytes(pki.gateway_cert.read_bytes() + pki.gateway_key.read_bytes())
        summary = certificate_file_summary(both, "gateway")
        text = json.dumps(summary)
        self.assertEqual(summary["certificates"][0]["subject"], "CN=test-gateway")
        self.assertIn("also holds a private key", summary["warning"])
        self.assertNotIn("PRIVATE KEY-----", text)
