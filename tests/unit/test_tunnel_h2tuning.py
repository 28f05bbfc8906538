"""h2 tuning: the cheap DATA frame repr is installed by our connections, and the lean settings
storage is ours alone (another h2 user in the process keeps h2's own)."""

from __future__ import annotations

import collections
import sys
from typing import Any

import h2.settings
from h2.connection import H2Connection
from h2.settings import SettingCodes, Settings
from hyperframe.frame import DataFrame
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.tunnel import h2tuning
from gateway.tunnel.connection import TunnelConnection
from gateway.tunnel.h2tuning import LeanSettings, _SettingValues
from tests.helpers.tunnel import linked_tunnels


def containers(settings: Settings) -> list[Any]:
    return list(settings._settings.values())


def footprint(conn: H2Connection) -> int:
    """Bytes of both ends' settings containers."""
    both = containers(conn.local_settings) + containers(conn.remote_settings)
    return sum(sys.getsizeof(c) for c in both)


class DataFrameReprTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(h2tuning.install)

    def test_the_repr_of_a_data_frame_states_its_length_without_serializing_it(self) -> None:
        h2tuning.install()
        frame = DataFrame(1, data=b"z" * (1 << 20))

        def serialize_body() -> bytes:
            raise AssertionError("repr() serialized a DATA frame's body")

        frame.serialize_body = serialize_body  # type: ignore[method-assign]
        self.assertIn("<1048576 bytes>", repr(frame))

    def test_install_is_idempotent(self) -> None:
        h2tuning.install()
        installed = DataFrame.__dict__["_body_repr"]
        h2tuning.install()
        self.assertIs(DataFrame.__dict__["_body_repr"], installed)

    def test_a_tunnel_connection_installs_it(self) -> None:
        if "_body_repr" in DataFrame.__dict__:
            del DataFrame._body_repr  # back to hyperframe's own, as in a fresh process
        self.assertNotIn("bytes>", repr(DataFrame(1, data=b"abc")))
        TunnelConnection(client_side=False, clock=Clock())
        self.assertIn("<3 bytes>", repr(DataFrame(1, data=b"abc")))


class LeanSettingsTests(SynchronousTestCase):
    def test_importing_the_tunnel_leaves_h2s_settings_module_alone(self) -> None:
        self.assertIs(vars(h2.settings)["collections"], collections)

    def test_another_h2_connection_in_the_process_keeps_h2s_own_settings(self) -> None:
        TunnelConnection(client_side=True, clock=Clock())  # ours exist alongside
        other = H2Connection()
        for settings in (other.local_settings, other.remote_settings):
            self.assertIs(type(settings), Settings)
            self.assertTrue(all(type(c) is collections.deque for c in containers(settings)))
        self.assertIs(
            type(Settings()._settings[SettingCodes.INITIAL_WINDOW_SIZE]), collections.deque
        )

    def test_our_connections_use_the_lean_storage_on_both_ends_after_the_exchange(self) -> None:
        """Also the settings first heard from the peer (h2 adds those in ``__setitem__``)."""
        t = linked_tunnels()
        for conn in (t.client, t.server):
            for settings in (conn.h2.local_settings, conn.h2.remote_settings):
                self.assertIsInstance(settings, LeanSettings)
                self.assertEqual({type(c) for c in containers(settings)}, {_SettingValues})
            self.assertIn(SettingCodes.MAX_CONCURRENT_STREAMS, conn.h2.remote_settings)
        t.close()

    def test_lean_storage_is_a_fraction_of_h2s(self) -> None:
        """The point of it: bench/scale measured 67 -> 57 KiB per idle gateway."""
        ours = TunnelConnection(client_side=False, clock=Clock()).h2
        stock = H2Connection()
        self.assertLess(footprint(ours) * 5, footprint(stock))

    def test_our_settings_still_work_like_h2s(self) -> None:
        """Values set are pending until acknowledged, settings not known before included."""
        settings = LeanSettings(client=False, initial_values={SettingCodes.ENABLE_PUSH: 0})
        self.assertEqual(settings.enable_push, 0)
        settings[SettingCodes.MAX_FRAME_SIZE] = 1 << 20
        settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 7
        self.assertEqual(settings.max_frame_size, 16384)
        self.assertIsNone(settings.get(SettingCodes.MAX_CONCURRENT_STREAMS))
        changes = settings.acknowledge()
        self.assertEqual(
            {k: (c.original_value, c.new_value) for k, c in changes.items()},
            {
                SettingCodes.MAX_FRAME_SIZE: (16384, 1 << 20),
                SettingCodes.MAX_CONCURRENT_STREAMS: (None, 7),
            },
        )
        self.assertEqual((settings.max_frame_size, settings.max_concurrent_streams), (1 << 20, 7))
        self.assertEqual(settings.acknowledge(), {})
        self.assertEqual({type(c) for c in containers(settings)}, {_SettingValues})
