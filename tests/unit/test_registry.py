# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""Tests for the relay's engineer credentials, gateway directory and table of live tunnels.

(`gateway.relay.credentials`, `gateway.relay.directory`, `gateway.relay.gateways`)

Engineer tokens are stored only as SHA-256 hashes in ``engineers.toml`` (mode 0600), added while
the relay runs and picked up without a restart; a broken edit must not lock everybody out.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.relay.credentials import (
    TOKEN_PREFIX,
    CredentialFileError,
    CredentialsUnavailable,
    Engineer,
    ICredentialStore,
    TokenFile,
    add_engineer,
    hash_token,
    read_engineers,
)
from gateway.relay.directory import (
    GatewayLocation,
    IGatewayDirectory,
    MemoryGatewayDirectory,
    Presence,
)
from gateway.relay.gateways import GatewayTunnels
from gateway.tunnel.connection import TunnelConnection


def temporary_directory(case: SynchronousTestCase) -> Path:
    """A fresh directory removed after the test (trial's mktemp would write into the repo)."""
    tmp = tempfile.TemporaryDirectory(prefix="test-registry-")
    case.addCleanup(tmp.cleanup)
    return Path(tmp.name)


class StandInTunnel:
    """Takes a tunnel's place: the table only stores and compares tunnels."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<tunnel {self.name}>"


def stand_in(name: str) -> TunnelConnection:
    return cast(TunnelConnection, StandInTunnel(name))


class CredentialTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = temporary_directory(self)
        self.path = self.directory / "engineers.toml"

    def credential_error(self, name: str) -> CredentialFileError:
        try:
            add_engineer(self.path, name)
        except CredentialFileError as e:
            return e
        raise self.failureException(f"engineer {name!r} was added")


class AddEngineerTests(CredentialTestCase):
    def test_only_the_hash_of_the_token_is_stored(self) -> None:
        token = add_engineer(self.path, "alice")
        text = self.path.read_text("utf-8")
        self.assertNotIn(token, text)
        self.assertNotIn(token[len(TOKEN_PREFIX) :], text)
        self.assertIn(hashlib.sha256(token.encode()).hexdigest(), text)
        self.assertEqual(read_engineers(self.path), {"alice": hash_token(token)})

    def test_hash_is_sha256_hex(self) -> None:
        self.assertEqual(hash_token("rsg_abc"), hashlib.sha256(b"rsg_abc").hexdigest())

    def test_tokens_are_long_random_and_recognisable(self) -> None:
        first = add_engineer(self.path, "alice")
        second = add_engineer(self.path, "bob")
        self.assertNotEqual(first, second)
        for token in (first, second):
            self.assertTrue(token.startswith(TOKEN_PREFIX), token)
            self.assertGreaterEqual(len(token) - len(TOKEN_PREFIX), 43)  # 256 bits, base64

    def test_file_is_readable_by_its_owner_only(self) -> None:
        add_engineer(self.path, "alice")
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)

    def test_an_existing_world_readable_file_becomes_private(self) -> None:
        self.path.write_text("# engineers\n")
        self.path.chmod(0o644)
        add_engineer(self.path, "alice")
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)

    def test_new_engineers_are_appended_and_existing_ones_kept(self) -> None:
        self.path.write_text("# hand-written comment\n")
        alice = add_engineer(self.path, "alice")
        bob = add_engineer(self.path, "Bob Service", now=datetime(2030, 6, 1, 12, tzinfo=UTC))
        text = self.path.read_text("utf-8")
        self.assertTrue(text.startswith("# hand-written comment\n"))
        self.assertIn('created = "2030-06-01T12:00:00+00:00"', text)
        self.assertEqual(
            read_engineers(self.path), {"alice": hash_token(alice), "Bob Service": hash_token(bob)}
        )

    def test_a_new_file_explains_how_to_add_engineers(self) -> None:
        add_engineer(self.path, "alice")
        self.assertIn("gateway relay add-engineer NAME -c relay.toml", self.path.read_text())

    def test_missing_folder_is_created(self) -> None:
        self.path = self.directory / "relay" / "engineers.toml"
        add_engineer(self.path, "alice")
        self.assertTrue(self.path.is_file())

    def test_no_temporary_files_are_left_behind(self) -> None:
        add_engineer(self.path, "alice")
        add_engineer(self.path, "bob")
        # Only the file and the lock file beside it (kept: see credentials.locked).
        self.assertEqual(
            sorted(os.listdir(self.directory)), ["engineers.toml", "engineers.toml.lock"]
        )

    def test_duplicate_name_is_refused_and_the_file_left_alone(self) -> None:
        add_engineer(self.path, "alice")
        before = self.path.read_bytes()
        error = self.credential_error("alice")
        self.assertIn(str(self.path), str(error))
        self.assertIn("'alice' already exists", str(error))
        self.assertEqual(self.path.read_bytes(), before)

    def test_bad_names_are_refused(self) -> None:
        for name in ("", " alice", "-alice", 'al"ice', "al\\ice", "alice\nx", "a/b", "a" * 65):
            error = self.credential_error(name)
            self.assertIn(repr(name), str(error))
        self.assertFalse(self.path.exists())

    def test_a_name_ending_in_a_newline_is_refused(self) -> None:
        # A regex ``$`` matches before a final newline; the name must not break the TOML file.
        add_engineer(self.path, "alice")
        before = self.path.read_bytes()
        self.credential_error("bob\n")
        self.assertEqual(self.path.read_bytes(), before)

    def test_good_names_are_accepted(self) -> None:
        for name in ("alice", "alice@vendor.example", "Bob Service", "j.doe_2-x", "a" * 64):
            add_engineer(self.path, name)
        self.assertEqual(len(read_engineers(self.path)), 5)

    def test_a_broken_file_is_not_overwritten(self) -> None:
        self.path.write_text("[[engineer]\n")
        error = self.credential_error("alice")
        self.assertIn(str(self.path), str(error))
        self.assertEqual(self.path.read_text(), "[[engineer]\n")


class TokenFileTests(CredentialTestCase):
    def test_token_authenticates_its_engineer(self) -> None:
        token = add_engineer(self.path, "alice")
        store = TokenFile(self.path)
        self.assertTrue(ICredentialStore.providedBy(store))
        verifyObject(ICredentialStore, store)
        self.assertEqual(store.authenticate(token), Engineer("alice"))

    def test_each_token_authenticates_only_its_own_engineer(self) -> None:
        alice = add_engineer(self.path, "alice")
        bob = add_engineer(self.path, "bob")
        store = TokenFile(self.path)
        self.assertEqual(store.authenticate(alice), Engineer("alice"))
        self.assertEqual(store.authenticate(bob), Engineer("bob"))

    def test_wrong_tokens_are_refused(self) -> None:
        token = add_engineer(self.path, "alice")
        store = TokenFile(self.path)
        for wrong in ("", "rsg_", token[:-1], token + "x", token.upper(), " " + token):
            self.assertIsNone(store.authenticate(wrong), wrong)

    def test_the_stored_hash_is_not_a_token(self) -> None:
        add_engineer(self.path, "alice")
        self.assertIsNone(TokenFile(self.path).authenticate(read_engineers(self.path)["alice"]))

    def test_missing_file_means_no_engineers(self) -> None:
        self.assertEqual(read_engineers(self.path), {})
        self.assertIsNone(TokenFile(self.path).authenticate("rsg_anything"))

    def test_a_newly_added_engineer_is_accepted_without_a_restart(self) -> None:
        add_engineer(self.path, "alice")
        store = TokenFile(self.path)
        bob = add_engineer(self.path, "bob")
        self.assertEqual(store.authenticate(bob), Engineer("bob"))

    def test_the_first_engineer_is_accepted_when_the_relay_started_without_a_file(self) -> None:
        store = TokenFile(self.path)
        token = add_engineer(self.path, "alice")
        self.assertEqual(store.authenticate(token), Engineer("alice"))

    def test_a_removed_engineer_is_refused_without_a_restart(self) -> None:
        alice = add_engineer(self.path, "alice")
        store = TokenFile(self.path)
        self.assertEqual(store.authenticate(alice), Engineer("alice"))
        self.path.write_text("# everyone revoked\n")
        self.assertIsNone(store.authenticate(alice))

    def test_deleting_the_file_revokes_everyone(self) -> None:
        alice = add_engineer(self.path, "alice")
        store = TokenFile(self.path)
        self.path.unlink()
        self.assertIsNone(store.authenticate(alice))

    def test_a_broken_edit_refuses_every_engineer(self) -> None:
        # Issue 14: keeping the previous list would keep an engineer that was just removed.
        alice = add_engineer(self.path, "alice")
        store = TokenFile(self.path)
        good = self.path.read_text()
        self.path.write_text(good + "\n[[engineer]]\nname = 'bob'\ntoken_sha256 = 'short'\n")
        self.assertRaises(CredentialsUnavailable, store.authenticate, alice)
        self.assertEqual(dict(store.entries), {})
        self.path.write_text(good + "\n[[engineer\n")
        self.assertRaises(CredentialsUnavailable, store.authenticate, alice)

    def test_a_repaired_file_is_picked_up_again(self) -> None:
        alice = add_engineer(self.path, "alice")
        store = TokenFile(self.path)
        good = self.path.read_text()
        self.path.write_text("not toml at all [\n")
        self.assertRaises(CredentialsUnavailable, store.authenticate, alice)
        self.path.write_text(good)
        bob = add_engineer(self.path, "bob")
        self.assertEqual(store.authenticate(bob), Engineer("bob"))
        self.assertEqual(store.authenticate(alice), Engineer("alice"))

    def test_a_broken_file_at_startup_is_refused_naming_the_file(self) -> None:
        for text in (
            "[[engineer\n",
            "engineer = 'alice'\n",
            "[[engineer]]\nname = 'alice'\n",
            "[[engineer]]\nname = 'alice'\ntoken_sha256 = 'abc'\n",
            "[[engineer]]\ntoken_sha256 = '" + "0" * 64 + "'\n",
        ):
            self.path.write_text(text)
            try:
                TokenFile(self.path)
            except CredentialFileError as e:
                self.assertIn(str(self.path), str(e))
            else:
                self.fail(f"accepted {text!r}")

    def test_a_non_utf8_file_at_startup_is_refused(self) -> None:
        self.path.write_bytes(b"[[engineer]]\nname = '\xff'\n")
        self.assertRaises(CredentialFileError, TokenFile, self.path)


class MemoryGatewayDirectoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.directory = MemoryGatewayDirectory(self.clock)

    def locate(self, gateway_id: str) -> GatewayLocation:
        return self.successResultOf(self.directory.locate(gateway_id))

    def test_provides_the_directory_interface(self) -> None:
        verifyObject(IGatewayDirectory, self.directory)

    def test_a_never_seen_gateway_is_unknown(self) -> None:
        self.assertEqual(self.locate("plant7"), GatewayLocation("plant7", Presence.UNKNOWN))
        self.assertFalse(self.locate("plant7").online)

    def test_a_connected_gateway_is_online_here_since_it_connected(self) -> None:
        self.successResultOf(self.directory.gateway_connected("plant7"))
        location = self.locate("plant7")
        self.assertEqual(location.presence, Presence.HERE)
        self.assertTrue(location.online)
        self.assertEqual(location.connected_since, 1000)
        self.assertEqual(location.last_seen, 1000)

    def test_a_newer_tunnel_restarts_the_connected_time(self) -> None:
        self.directory.gateway_connected("plant7")
        self.clock.advance(5)
        self.directory.gateway_connected("plant7")
        location = self.locate("plant7")
        self.assertTrue(location.online)
        self.assertEqual(location.connected_since, 1005)

    def test_a_disconnected_gateway_is_known_and_offline(self) -> None:
        self.directory.gateway_connected("plant7")
        self.clock.advance(30)
        self.successResultOf(self.directory.gateway_disconnected("plant7"))
        location = self.locate("plant7")
        self.assertEqual(location.presence, Presence.OFFLINE)
        self.assertFalse(location.online)
        self.assertIsNone(location.connected_since)
        self.assertEqual(location.last_seen, 1030)

    def test_disconnecting_twice_or_unknown_gateways_is_harmless(self) -> None:
        self.directory.gateway_connected("plant7")
        self.directory.gateway_disconnected("plant7")
        self.directory.gateway_disconnected("plant7")
        self.directory.gateway_disconnected("plant9")
        self.assertEqual(self.locate("plant7").presence, Presence.OFFLINE)
        self.assertEqual(self.locate("plant9").presence, Presence.UNKNOWN)

    def test_a_gateway_can_come_back_after_going_offline(self) -> None:
        self.directory.gateway_connected("plant7")
        self.directory.gateway_disconnected("plant7")
        self.directory.gateway_connected("plant7")
        self.assertTrue(self.locate("plant7").online)

    def test_answers_are_ready_at_once(self) -> None:
        # The engineer path relies on it: no reactor turn before the dial.
        self.assertTrue(self.directory.locate("plant7").called)
        self.assertTrue(self.directory.gateway_connected("plant7").called)
        self.assertTrue(self.directory.gateway_disconnected("plant7").called)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class GatewayTunnelsTests(SynchronousTestCase):
    """This relay process's live tunnels: one per gateway id, the newest wins."""

    def setUp(self) -> None:
        self.tunnels = GatewayTunnels()

    def test_a_never_seen_gateway_has_no_tunnel(self) -> None:
        self.assertIsNone(self.tunnels.get("plant7"))
        self.assertEqual(len(self.tunnels), 0)

    def test_adding_a_first_tunnel_replaces_nothing(self) -> None:
        tunnel = stand_in("first")
        self.assertIsNone(self.tunnels.add("plant7", tunnel))
        self.assertIs(self.tunnels.get("plant7"), tunnel)
        self.assertEqual(len(self.tunnels), 1)

    def test_a_new_tunnel_replaces_the_old_one_and_returns_it(self) -> None:
        old, new = stand_in("old"), stand_in("new")
        self.tunnels.add("plant7", old)
        self.assertIs(self.tunnels.add("plant7", new), old)
        self.assertIs(self.tunnels.get("plant7"), new)
        self.assertEqual(len(self.tunnels), 1)

    def test_removing_a_replaced_tunnel_changes_nothing(self) -> None:
        old, new = stand_in("old"), stand_in("new")
        self.tunnels.add("plant7", old)
        self.tunnels.add("plant7", new)
        self.assertFalse(self.tunnels.remove("plant7", old))
        self.assertIs(self.tunnels.get("plant7"), new)
        self.assertEqual(len(self.tunnels), 1)

    def test_removing_the_current_tunnel_leaves_none(self) -> None:
        tunnel = stand_in("only")
        self.tunnels.add("plant7", tunnel)
        self.assertTrue(self.tunnels.remove("plant7", tunnel))
        self.assertIsNone(self.tunnels.get("plant7"))
        self.assertEqual(len(self.tunnels), 0)

    def test_removing_twice_or_unknown_gateways_is_harmless(self) -> None:
        tunnel = stand_in("only")
        self.tunnels.add("plant7", tunnel)
        self.tunnels.remove("plant7", tunnel)
        self.assertFalse(self.tunnels.remove("plant7", tunnel))
        self.assertFalse(self.tunnels.remove("plant9", tunnel))
        self.assertEqual(len(self.tunnels), 0)
        self.assertIsNone(self.tunnels.get("plant9"))

    def test_a_gateway_can_come_back_after_going_offline(self) -> None:
        first, second = stand_in("first"), stand_in("second")
        self.tunnels.add("plant7", first)
        self.tunnels.remove("plant7", first)
        self.assertIsNone(self.tunnels.add("plant7", second))
        self.assertEqual(len(self.tunnels), 1)

    def test_the_count_is_of_gateways_with_a_live_tunnel(self) -> None:
        tunnels = {name: stand_in(name) for name in ("a", "b", "c")}
        for name, tunnel in tunnels.items():
            self.tunnels.add(name, tunnel)
        self.tunnels.add("a", stand_in("a2"))
        self.assertEqual(len(self.tunnels), 3)
        self.tunnels.remove("b", tunnels["b"])
        self.assertEqual(len(self.tunnels), 2)
        self.tunnels.remove("a", tunnels["a"])  # replaced already: still connected
        self.assertEqual(len(self.tunnels), 2)
