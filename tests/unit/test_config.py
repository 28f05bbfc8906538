# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""Tests for the configuration loaders (`gateway.config`) and the examples in ``config/``.

Plant IT and vendor operators edit these files by hand: every mistake must come back as one
``ConfigError`` naming the file, the key and the problem, and the examples they copy must load.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.config import (
    AccessMode,
    Address,
    ConfigError,
    GatewayConfig,
    Heartbeat,
    RelayConfig,
    Target,
    TargetKind,
    load_gateway_config,
    load_relay_config,
    parse_address,
)
from gateway.relay.credentials import TokenFile, add_engineer, read_engineers

EXAMPLES = Path(__file__).resolve().parents[2] / "config"

CERT_FILES = ("ca.pem", "gateway.pem", "gateway.key", "relay.pem", "relay.key")

RELAY_SECTION = """\
[relay]
address = "relay.example.com:443"
ca = "ca.pem"
cert = "gateway.pem"
key = "gateway.key"
"""

ONE_TARGET = """
[[target]]
name = "web"
address = "192.168.10.2:80"
"""

GATEWAYS_SECTION = """\
[gateways]
listen = "0.0.0.0:443"
ca = "ca.pem"
cert = "relay.pem"
key = "relay.key"
"""

ENGINEERS_SECTION = """
[engineers]
listen = "0.0.0.0:9443"
tokens = "engineers.toml"
"""


def gateway_toml(relay_lines: str = "", rest: str = ONE_TARGET) -> str:
    """A valid gateway.toml with ``relay_lines`` added to [relay] and ``rest`` after it."""
    return RELAY_SECTION + relay_lines + "\n" + rest


def relay_toml(gateways_lines: str = "", engineers_lines: str = "", rest: str = "") -> str:
    """A valid relay.toml with lines added to [gateways] and [engineers] and ``rest`` after."""
    return GATEWAYS_SECTION + gateways_lines + ENGINEERS_SECTION + engineers_lines + "\n" + rest


def temporary_directory(case: SynchronousTestCase) -> Path:
    """A fresh directory removed after the test (trial's mktemp would write into the repo)."""
    tmp = tempfile.TemporaryDirectory(prefix="test-config-")
    case.addCleanup(tmp.cleanup)
    return Path(tmp.name).resolve()


def uncomment_settings(text: str) -> str:
    """Turn every ``# key = value`` line of an example into a live setting."""
    return re.sub(r"(?m)^# ([A-Za-z_]+ = .*)$", r"\1", text)


def flat_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    """``{"relay.address", "target.name", ...}`` for a parsed TOML document."""
    keys: set[str] = set()
    for name, value in data.items():
        key = f"{prefix}{name}"
        items = value if isinstance(value, list) else [value]
        tables = [item for item in items if isinstance(item, dict)]
        if tables:
            for table in tables:
                keys |= flat_keys(table, f"{key}.")
        else:
            keys.add(key)
    return keys


class ConfigTestCase(SynchronousTestCase):
    """Writes configuration files into a fresh directory next to dummy certificate files.

    The loaders only check that certificate files exist; reading them is the TLS code's job.
    """

    def setUp(self) -> None:
        self.directory = temporary_directory(self)
        for name in CERT_FILES:
            (self.directory / name).write_text("dummy\n")

    def write(self, text: str, name: str = "gateway.toml") -> Path:
        path = self.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def load_gateway(self, text: str) -> GatewayConfig:
        return load_gateway_config(self.write(text))

    def load_relay(self, text: str) -> RelayConfig:
        return load_relay_config(self.write(text, "relay.toml"))

    def refused(self, load: Callable[[Path], object], path: Path) -> ConfigError:
        try:
            load(path)
        except ConfigError as e:
            return e
        raise self.failureException(f"{path} was accepted")

    def gateway_refused(self, text: str) -> ConfigError:
        path = self.write(text)
        error = self.refused(load_gateway_config, path)
        self.assertEqual(error.file, str(path))
        return error

    def relay_refused(self, text: str) -> ConfigError:
        path = self.write(text, "relay.toml")
        error = self.refused(load_relay_config, path)
        self.assertEqual(error.file, str(path))
        return error

    def assertProblem(self, error: ConfigError, key: str, problem: str) -> None:
        """The error names ``key`` and its problem contains ``problem``."""
        self.assertEqual(error.key, key, str(error))
        self.assertIn(problem, error.problem)
        self.assertEqual(str(error), f"{error.file}: {key}: {error.problem}")


class ExampleConfigTests(ConfigTestCase):
    """The commented examples in config/ are what operators copy: they must load."""

    def copy_example(self, name: str, *, uncomment: bool = False) -> Path:
        text = (EXAMPLES / name).read_text("utf-8")
        return self.write(uncomment_settings(text) if uncomment else text, name)

    def create_example_files(self) -> None:
        for name in ("relay-ca.pem", "engineers.pem", "engineers.key"):
            (self.directory / name).write_text("dummy\n")
        # The proxy's credentials, private as the loader requires (relay.proxy_credentials).
        credentials = self.directory / "proxy-credentials"
        credentials.write_text("plant-gateway:secret\n")
        credentials.chmod(0o600)

    def test_example_gateway_config_loads_once_its_files_exist(self) -> None:
        self.create_example_files()
        config = load_gateway_config(self.copy_example("gateway.toml"))
        self.assertEqual(config.relay.address, Address("relay.example.com", 443))
        self.assertEqual(config.relay.ca, self.directory / "relay-ca.pem")
        self.assertEqual(config.relay.cert, self.directory / "gateway.pem")
        self.assertEqual(config.relay.key, self.directory / "gateway.key")
        self.assertIsNone(config.relay.proxy)
        self.assertEqual([t.name for t in config.targets], ["web", "line2-web"])
        self.assertEqual([t.kind for t in config.targets], [TargetKind.HTTP, TargetKind.TCP])
        self.assertEqual(config.access_mode, AccessMode.ATTENDED)
        self.assertEqual(config.status_listen, Address("127.0.0.1", 8081))
        self.assertEqual(config.metrics_listen, Address("127.0.0.1", 9108))

    def test_example_gateway_config_names_the_missing_certificate_until_it_exists(self) -> None:
        error = self.refused(load_gateway_config, self.copy_example("gateway.toml"))
        self.assertProblem(error, "relay.ca", "relay-ca.pem")

    def test_example_relay_config_loads_once_its_files_exist(self) -> None:
        config = load_relay_config(self.copy_example("relay.toml"))
        self.assertEqual(config.gateways.listen, Address("0.0.0.0", 443))
        self.assertEqual(config.gateways.ca, self.directory / "ca.pem")
        self.assertEqual(config.engineers.listen, Address("0.0.0.0", 9443))
        self.assertEqual(config.engineers.tokens, self.directory / "engineers.toml")
        self.assertEqual(config.engineers.cert, self.directory / "relay.pem")
        self.assertEqual(config.engineers.key, self.directory / "relay.key")
        self.assertEqual(config.metrics_listen, Address("127.0.0.1", 9109))

    def test_optional_gateway_settings_are_accepted_when_uncommented(self) -> None:
        self.create_example_files()
        config = load_gateway_config(self.copy_example("gateway.toml", uncomment=True))
        self.assertEqual(config.relay.proxy, Address("proxy.plant.local", 3128))
        self.assertEqual(config.relay.expected_name, "relay.example.com")

    def test_optional_relay_settings_are_accepted_when_uncommented(self) -> None:
        self.create_example_files()
        config = load_relay_config(self.copy_example("relay.toml", uncomment=True))
        self.assertEqual(config.engineers.cert, self.directory / "engineers.pem")
        self.assertEqual(config.engineers.key, self.directory / "engineers.key")

    def test_commented_gateway_values_are_the_defaults(self) -> None:
        self.create_example_files()
        plain = load_gateway_config(self.copy_example("gateway.toml"))
        uncommented = load_gateway_config(self.copy_example("gateway.toml", uncomment=True))
        for config in (plain, uncommented):
            self.assertEqual(config.relay.heartbeat, Heartbeat())
            self.assertEqual(config.relay.connect_timeout, 10.0)
            self.assertEqual(config.relay.reconnect_cap, 30.0)
            self.assertEqual([t.connect_timeout for t in config.targets], [5.0, 5.0])
            self.assertEqual(config.drain_timeout, 10.0)

    def test_commented_relay_values_are_the_defaults(self) -> None:
        self.create_example_files()
        plain = load_relay_config(self.copy_example("relay.toml"))
        uncommented = load_relay_config(self.copy_example("relay.toml", uncomment=True))
        for config in (plain, uncommented):
            self.assertEqual(config.gateways.heartbeat, Heartbeat())
            self.assertEqual(config.drain_timeout, 10.0)

    def test_gateway_example_documents_every_setting(self) -> None:
        text = uncomment_settings((EXAMPLES / "gateway.toml").read_text("utf-8"))
        self.assertEqual(
            flat_keys(tomllib.loads(text)),
            {
                "relay.address",
                "relay.ca",
                "relay.cert",
                "relay.key",
                "relay.proxy",
                "relay.proxy_credentials",
                "relay.no_proxy",
                "relay.server_name",
                "relay.heartbeat_interval",
                "relay.heartbeat_timeout",
                "relay.connect_timeout",
                "relay.reconnect_max_delay",
                "relay.congestion_control",
                "target.name",
                "target.address",
                "target.connect_timeout",
                "target.kind",
                "target.view_websocket",
                "access.mode",
                "access.request_timeout",
                "access.session_minutes",
                "access.max_session_minutes",
                "access.grace_minutes",
                "status.listen",
                "status.allowed_hosts",
                "metrics.listen",
                "metrics.allowed_hosts",
                "limits.streams_per_target",
                "limits.streams_per_engineer",
                "limits.streams_per_tunnel",
                "service.drain_timeout",
                "service.half_close_timeout",
                "service.state_dir",
                "checks.interval",
            },
        )

    def test_relay_example_documents_every_setting(self) -> None:
        text = uncomment_settings((EXAMPLES / "relay.toml").read_text("utf-8"))
        self.assertEqual(
            flat_keys(tomllib.loads(text)),
            {
                "gateways.listen",
                "gateways.ca",
                "gateways.cert",
                "gateways.key",
                "gateways.heartbeat_interval",
                "gateways.heartbeat_timeout",
                "gateways.congestion_control",
                "gateways.max_unauthenticated_per_source",
                "gateways.max_streams_per_tunnel",
                "engineers.listen",
                "engineers.tokens",
                "engineers.cert",
                "engineers.key",
                "engineers.login_failures",
                "engineers.login_window",
                "engineers.login_lockout",
                "engineers.auth_timeout",
                "engineers.idle_timeout",
                "engineers.max_connections_per_source",
                "engineers.max_unauthenticated_per_source",
                "engineers.max_unauthenticated",
                "engineers.max_streams_per_connection",
                "engineers.congestion_control",
                "metrics.listen",
                "service.drain_timeout",
                "service.half_close_timeout",
                "service.state_dir",
            },
        )

    def test_example_engineers_file_is_in_the_stored_hash_format(self) -> None:
        path = EXAMPLES / "engineers.toml"
        engineers = read_engineers(path)
        self.assertEqual(sorted(engineers), ["Bob Service", "alice@vendor.example"])
        for digest in engineers.values():
            self.assertRegex(digest, r"^[0-9a-f]{64}$")
        self.assertIn("gateway relay add-engineer NAME -c relay.toml", path.read_text("utf-8"))
        TokenFile(path)  # a strict load, as at relay startup

    def test_add_engineer_appends_to_the_example_engineers_file(self) -> None:
        path = self.directory / "engineers.toml"
        shutil.copy(EXAMPLES / "engineers.toml", path)
        token = add_engineer(path, "carol")
        self.assertEqual(
            sorted(read_engineers(path)), ["Bob Service", "alice@vendor.example", "carol"]
        )
        self.assertIsNotNone(TokenFile(path).authenticate(token))


class RelativePathTests(ConfigTestCase):
    def test_relative_paths_resolve_against_the_config_files_folder(self) -> None:
        (self.directory / "etc" / "certs").mkdir(parents=True)
        for name in ("ca.pem", "gateway.pem", "gateway.key"):
            (self.directory / "etc" / "certs" / name).write_text("dummy\n")
        text = gateway_toml().replace('"ca.pem"', '"certs/ca.pem"')
        text = text.replace('"gateway.pem"', '"certs/gateway.pem"')
        text = text.replace('"gateway.key"', '"certs/gateway.key"')
        path = self.write(text, "etc/gateway.toml")
        old_cwd = os.getcwd()
        os.chdir(self.directory)  # a decoy ca.pem is here: it must not be picked
        self.addCleanup(os.chdir, old_cwd)
        config = load_gateway_config(Path("etc/gateway.toml"))
        self.assertEqual(config.path, path)
        self.assertEqual(config.relay.ca, self.directory / "etc" / "certs" / "ca.pem")
        self.assertEqual(config.relay.cert, self.directory / "etc" / "certs" / "gateway.pem")
        self.assertEqual(config.relay.key, self.directory / "etc" / "certs" / "gateway.key")

    def test_paths_may_lead_out_of_the_config_folder(self) -> None:
        text = re.sub(r'"(ca.pem|gateway.pem|gateway.key)"', r'"../\1"', gateway_toml())
        config = load_gateway_config(self.write(text, "etc/gateway.toml"))
        self.assertEqual(config.relay.ca, self.directory / "ca.pem")
        self.assertEqual(config.relay.key, self.directory / "gateway.key")

    def test_absolute_paths_are_used_as_given(self) -> None:
        elsewhere = temporary_directory(self) / "vendor-ca.pem"
        elsewhere.write_text("dummy\n")
        text = gateway_toml().replace('"ca.pem"', f'"{elsewhere}"')
        config = self.load_gateway(text)
        self.assertEqual(config.relay.ca, elsewhere)

    def test_relay_paths_resolve_against_the_config_files_folder(self) -> None:
        for name in ("ca.pem", "relay.pem", "relay.key"):
            (self.directory / "relay" / name).parent.mkdir(exist_ok=True)
            (self.directory / "relay" / name).write_text("dummy\n")
        config = load_relay_config(self.write(relay_toml(), "relay/relay.toml"))
        self.assertEqual(config.gateways.ca, self.directory / "relay" / "ca.pem")
        self.assertEqual(config.engineers.tokens, self.directory / "relay" / "engineers.toml")

    def test_engineer_tokens_file_need_not_exist_yet(self) -> None:
        config = self.load_relay(relay_toml())
        self.assertFalse(config.engineers.tokens.exists())

    def test_missing_certificate_is_refused_naming_key_and_path(self) -> None:
        (self.directory / "gateway.pem").unlink()
        error = self.gateway_refused(gateway_toml())
        self.assertProblem(error, "relay.cert", str(self.directory / "gateway.pem"))
        self.assertIn("does not exist", error.problem)

    def test_directory_given_as_certificate_is_refused(self) -> None:
        (self.directory / "certs").mkdir()
        error = self.gateway_refused(gateway_toml().replace('"ca.pem"', '"certs"'))
        self.assertProblem(error, "relay.ca", "is a directory")

    def test_missing_relay_key_file_is_refused(self) -> None:
        (self.directory / "relay.key").unlink()
        self.assertProblem(self.relay_refused(relay_toml()), "gateways.key", "does not exist")

    def test_missing_engineer_certificate_is_refused(self) -> None:
        text = relay_toml(engineers_lines='cert = "nope.pem"\nkey = "relay.key"\n')
        self.assertProblem(self.relay_refused(text), "engineers.cert", "nope.pem")


class UnknownKeyTests(ConfigTestCase):
    """A misspelt key must not silently fall back to a default."""

    def test_unknown_top_level_key_is_refused(self) -> None:
        error = self.gateway_refused('colour = "red"\n' + gateway_toml())
        self.assertEqual(str(error), f"{self.directory / 'gateway.toml'}: colour: unknown key")

    def test_unknown_section_is_refused(self) -> None:
        error = self.gateway_refused(gateway_toml() + '\n[statuss]\nlisten = "127.0.0.1:1"\n')
        self.assertProblem(error, "statuss", "unknown key")

    def test_unknown_key_in_relay_section_is_refused(self) -> None:
        error = self.gateway_refused(gateway_toml("heartbeat = 5\n"))
        self.assertProblem(error, "relay.heartbeat", "unknown key")

    def test_unknown_key_in_a_target_is_refused_naming_the_target(self) -> None:
        error = self.gateway_refused(gateway_toml(rest=ONE_TARGET + "port = 80\n"))
        self.assertProblem(error, "target[0].port", "unknown key")

    def test_unknown_key_in_a_later_target_names_its_index(self) -> None:
        second = '\n[[target]]\nname = "hmi"\naddress = "10.0.0.2:80"\ntimeout = 3\n'
        error = self.gateway_refused(gateway_toml(rest=ONE_TARGET + second))
        self.assertProblem(error, "target[1].timeout", "unknown key")

    def test_unknown_key_in_access_section_is_refused(self) -> None:
        error = self.gateway_refused(gateway_toml() + '\n[access]\nmod = "unattended"\n')
        self.assertProblem(error, "access.mod", "unknown key")

    def test_unknown_key_in_service_section_is_refused(self) -> None:
        error = self.gateway_refused(gateway_toml() + "\n[service]\ndrain = 5\n")
        self.assertProblem(error, "service.drain", "unknown key")

    def test_unknown_key_in_status_section_is_refused(self) -> None:
        text = gateway_toml() + '\n[status]\nlisten = "127.0.0.1:8081"\nport = 1\n'
        self.assertProblem(self.gateway_refused(text), "status.port", "unknown key")

    def test_unknown_key_in_relay_config_is_refused(self) -> None:
        error = self.relay_refused(relay_toml(engineers_lines="max_streams = 10\n"))
        self.assertProblem(error, "engineers.max_streams", "unknown key")

    def test_unknown_top_level_key_in_relay_config_is_refused(self) -> None:
        error = self.relay_refused(relay_toml(rest='[relay]\naddress = "x:1"\n'))
        self.assertProblem(error, "relay", "unknown key")


class TypeTests(ConfigTestCase):
    def test_string_where_a_number_is_expected_is_refused(self) -> None:
        error = self.gateway_refused(gateway_toml('heartbeat_interval = "10"\n'))
        self.assertProblem(
            error, "relay.heartbeat_interval", "must be a number of seconds, not a string"
        )

    def test_true_false_where_a_number_is_expected_is_refused(self) -> None:
        error = self.gateway_refused(gateway_toml("connect_timeout = true\n"))
        self.assertProblem(
            error, "relay.connect_timeout", "must be a number of seconds, not true/false"
        )

    def test_number_where_a_string_is_expected_is_refused(self) -> None:
        text = gateway_toml(rest='[[target]]\nname = "web"\naddress = 80\n')
        error = self.gateway_refused(text)
        self.assertProblem(error, "target[0].address", "must be a string, not a number")

    def test_list_where_a_string_is_expected_is_refused(self) -> None:
        error = self.gateway_refused(gateway_toml() + '\n[access]\nmode = ["unattended"]\n')
        self.assertProblem(error, "access.mode", "must be a string, not a list")

    def test_whole_numbers_are_accepted_as_seconds(self) -> None:
        config = self.load_gateway(gateway_toml("heartbeat_interval = 5\n"))
        self.assertEqual(config.relay.heartbeat.interval, 5.0)
        self.assertIsInstance(config.relay.heartbeat.interval, float)

    def test_value_where_a_section_is_expected_is_refused(self) -> None:
        error = self.gateway_refused('status = "127.0.0.1:8081"\n' + gateway_toml())
        self.assertProblem(error, "status", "must be a [status] section, not a string")

    def test_single_target_section_is_refused_asking_for_double_brackets(self) -> None:
        text = gateway_toml(rest='[target]\nname = "web"\naddress = "10.0.0.2:80"\n')
        error = self.gateway_refused(text)
        self.assertProblem(error, "target", "must be written as [[target]] sections")

    def test_relay_config_types_are_checked_too(self) -> None:
        error = self.relay_refused(relay_toml(gateways_lines="heartbeat_timeout = false\n"))
        self.assertProblem(error, "gateways.heartbeat_timeout", "not true/false")


class MissingSettingTests(ConfigTestCase):
    def test_empty_gateway_config_asks_for_the_relay_section(self) -> None:
        self.assertProblem(self.gateway_refused(""), "relay", "section is missing")

    def test_missing_relay_section_is_refused(self) -> None:
        self.assertProblem(self.gateway_refused(ONE_TARGET), "relay", "section is missing")

    def test_missing_required_relay_keys_are_refused(self) -> None:
        for key in ("address", "ca", "cert", "key"):
            text = re.sub(rf"(?m)^{key} = .*$", "", gateway_toml(), count=1)
            self.assertProblem(self.gateway_refused(text), f"relay.{key}", "is required")

    def test_target_without_a_name_is_refused(self) -> None:
        error = self.gateway_refused(gateway_toml(rest='[[target]]\naddress = "10.0.0.2:80"\n'))
        self.assertProblem(error, "target[0].name", "is required")

    def test_target_without_an_address_is_refused(self) -> None:
        error = self.gateway_refused(gateway_toml(rest='[[target]]\nname = "web"\n'))
        self.assertProblem(error, "target[0].address", "is required")

    def test_status_section_without_listen_is_refused(self) -> None:
        error = self.gateway_refused(gateway_toml() + "\n[status]\n")
        self.assertProblem(error, "status.listen", "is required")

    def test_missing_relay_config_sections_are_refused(self) -> None:
        self.assertProblem(self.relay_refused(ENGINEERS_SECTION), "gateways", "section is missing")
        self.assertProblem(self.relay_refused(GATEWAYS_SECTION), "engineers", "section is missing")

    def test_missing_engineer_tokens_setting_is_refused(self) -> None:
        text = GATEWAYS_SECTION + '\n[engineers]\nlisten = "0.0.0.0:9443"\n'
        self.assertProblem(self.relay_refused(text), "engineers.tokens", "is required")

    def test_optional_sections_may_be_left_out(self) -> None:
        config = self.load_gateway(RELAY_SECTION)
        self.assertEqual(config.targets, ())
        self.assertEqual(config.access_mode, AccessMode.ATTENDED)
        self.assertIsNone(config.status_listen)
        self.assertIsNone(config.metrics_listen)
        self.assertEqual(config.drain_timeout, 10.0)
        relay = self.load_relay(relay_toml())
        self.assertIsNone(relay.metrics_listen)
        self.assertEqual(relay.drain_timeout, 10.0)
        self.assertEqual(relay.half_close_timeout, 300.0)

    def test_congestion_control_defaults_to_bbr_and_system_means_the_systems(self) -> None:
        self.assertEqual(self.load_gateway(RELAY_SECTION).relay.congestion_control, "bbr")
        relay = self.load_relay(relay_toml())
        self.assertEqual(relay.gateways.congestion_control, "bbr")
        self.assertEqual(relay.engineers.congestion_control, "bbr")
        own = RELAY_SECTION.replace("[relay]\n", '[relay]\ncongestion_control = "system"\n', 1)
        self.assertIsNone(self.load_gateway(own).relay.congestion_control)
        cubic = RELAY_SECTION.replace("[relay]\n", '[relay]\ncongestion_control = "cubic"\n', 1)
        self.assertEqual(self.load_gateway(cubic).relay.congestion_control, "cubic")

    def test_a_congestion_control_that_is_no_name_is_refused(self) -> None:
        bad = RELAY_SECTION.replace("[relay]\n", '[relay]\ncongestion_control = "bbr; rm"\n', 1)
        error = self.gateway_refused(bad)
        self.assertEqual(error.key, "relay.congestion_control")
        self.assertIn("not a congestion control name", error.problem)

    def test_the_relays_half_close_backstop_is_set_in_service(self) -> None:
        relay = self.load_relay(relay_toml() + "\n[service]\nhalf_close_timeout = 900\n")
        self.assertEqual(relay.half_close_timeout, 900.0)
        refused = self.relay_refused(relay_toml() + "\n[service]\nhalf_close_timeout = 0\n")
        self.assertEqual(refused.key, "service.half_close_timeout")


class FileTests(ConfigTestCase):
    """Every way reading the file can fail is one ConfigError naming just the file."""

    def test_missing_file_is_refused(self) -> None:
        path = self.directory / "missing.toml"
        for load in (load_gateway_config, load_relay_config):
            error = self.refused(load, path)
            self.assertEqual(str(error), f"{path}: file does not exist")
            self.assertEqual(error.key, "")

    def test_directory_instead_of_file_is_refused(self) -> None:
        error = self.refused(load_gateway_config, self.directory)
        self.assertEqual(str(error), f"{self.directory}: is a directory, not a configuration file")

    def test_invalid_toml_is_refused_with_the_parsers_position(self) -> None:
        error = self.gateway_refused('[relay]\naddress = "relay.example.com:443\n')
        self.assertEqual(error.key, "")
        self.assertTrue(error.problem.startswith("not valid TOML: "), error.problem)
        self.assertIn("line 2", error.problem)

    def test_non_utf8_file_is_refused(self) -> None:
        path = self.directory / "gateway.toml"
        path.write_bytes(gateway_toml().replace("relay.example.com", "r\xe9lay").encode("latin-1"))
        error = self.refused(load_gateway_config, path)
        self.assertEqual(str(error), f"{path}: is not UTF-8 text")

    def test_config_path_is_reported_absolute(self) -> None:
        error = self.refused(load_relay_config, Path("no-such-dir-for-config-tests/relay.toml"))
        self.assertTrue(Path(error.file).is_absolute(), error.file)


class AddressSettingTests(ConfigTestCase):
    def address_refused(self, address: str) -> ConfigError:
        return self.gateway_refused(gateway_toml().replace("relay.example.com:443", address))

    def test_address_without_a_port_is_refused(self) -> None:
        self.assertProblem(self.address_refused("relay.example.com"), "relay.address", "host:port")

    def test_port_zero_is_refused_for_an_address_that_is_dialled(self) -> None:
        error = self.address_refused("relay.example.com:0")
        self.assertProblem(error, "relay.address", "port 0 is out of range 1-65535")
        text = gateway_toml(rest='[[target]]\nname = "web"\naddress = "10.0.0.2:0"\n')
        self.assertProblem(self.gateway_refused(text), "target[0].address", "out of range")

    def test_port_zero_is_allowed_for_listen_addresses(self) -> None:
        text = (
            gateway_toml()
            + '\n[status]\nlisten = "127.0.0.1:0"\n\n[metrics]\nlisten = "127.0.0.1:0"\n'
        )
        config = self.load_gateway(text)
        self.assertEqual(config.status_listen, Address("127.0.0.1", 0))
        self.assertEqual(config.metrics_listen, Address("127.0.0.1", 0))
        relay = self.load_relay(relay_toml().replace("0.0.0.0:443", "127.0.0.1:0"))
        self.assertEqual(relay.gateways.listen, Address("127.0.0.1", 0))

    def test_port_above_65535_is_refused(self) -> None:
        error = self.address_refused("relay.example.com:65536")
        self.assertProblem(error, "relay.address", "port 65536 is out of range 1-65535")
        text = gateway_toml() + '\n[metrics]\nlisten = "127.0.0.1:70000"\n'
        self.assertProblem(self.gateway_refused(text), "metrics.listen", "out of range 0-65535")

    def test_ipv6_without_brackets_is_refused(self) -> None:
        error = self.address_refused("2001:db8::10:443")
        self.assertProblem(error, "relay.address", "IPv6 addresses need brackets")

    def test_ipv6_in_brackets_is_accepted(self) -> None:
        config = self.load_gateway(gateway_toml().replace("relay.example.com:443", "[::1]:443"))
        self.assertEqual(config.relay.address, Address("::1", 443))
        relay = self.load_relay(relay_toml().replace("0.0.0.0:443", "[::]:443"))
        self.assertEqual(relay.gateways.listen, Address("::", 443))

    def test_bad_host_name_is_refused(self) -> None:
        for host in ("relay example.com", "relay/x", "-", "relay..example.com"):
            error = self.address_refused(f"{host}:443")
            self.assertProblem(error, "relay.address", "is not a valid host name or IP address")

    def test_bad_listen_address_is_refused_in_relay_config(self) -> None:
        error = self.relay_refused(relay_toml().replace("0.0.0.0:9443", "0.0.0.0"))
        self.assertProblem(error, "engineers.listen", "not host:port")


class ParseAddressTests(SynchronousTestCase):
    def assertBadAddress(self, text: str, problem: str, **options: bool) -> None:
        try:
            address = parse_address(text, **options)
        except ValueError as e:
            self.assertIn(problem, str(e))
        else:
            self.fail(f"{text!r} was accepted as {address}")

    def test_host_name_and_port(self) -> None:
        self.assertEqual(parse_address("relay.example.com:443"), Address("relay.example.com", 443))

    def test_ipv4_address_and_port(self) -> None:
        address = parse_address("192.168.10.2:80")
        self.assertEqual(address, Address("192.168.10.2", 80))
        self.assertTrue(address.is_ip)

    def test_ipv6_address_in_brackets(self) -> None:
        address = parse_address("[2001:db8::10]:8443")
        self.assertEqual(address, Address("2001:db8::10", 8443))
        self.assertTrue(address.is_ip)

    def test_host_names_are_not_ip_addresses(self) -> None:
        self.assertFalse(parse_address("localhost:1").is_ip)

    def test_str_writes_the_address_back_with_brackets_for_ipv6(self) -> None:
        for text in ("relay.example.com:443", "10.0.0.1:80", "[::1]:443", "[fe80::1]:1"):
            self.assertEqual(str(parse_address(text)), text)

    def test_surrounding_spaces_are_ignored(self) -> None:
        self.assertEqual(parse_address("  relay:443 "), Address("relay", 443))

    def test_fully_qualified_name_with_trailing_dot_is_accepted(self) -> None:
        self.assertEqual(parse_address("relay.example.com.:443").host, "relay.example.com.")

    def test_port_range(self) -> None:
        self.assertEqual(parse_address("relay:1").port, 1)
        self.assertEqual(parse_address("relay:65535").port, 65535)
        self.assertEqual(parse_address("relay:0", allow_port_zero=True).port, 0)
        self.assertBadAddress("relay:0", "out of range 1-65535")
        self.assertBadAddress("relay:65536", "out of range 1-65535")
        self.assertBadAddress("relay:65536", "out of range 0-65535", allow_port_zero=True)

    def test_missing_or_non_numeric_port_is_refused(self) -> None:
        self.assertBadAddress("relay", "not host:port")
        self.assertBadAddress("relay:", "is not a number")
        self.assertBadAddress("relay:https", "port 'https' is not a number")
        self.assertBadAddress("relay:-1", "is not a number")
        self.assertBadAddress("relay:4 43", "is not a number")

    def test_missing_host_is_refused(self) -> None:
        self.assertBadAddress(":443", "not host:port")
        self.assertBadAddress("", "not host:port")

    def test_ipv6_without_brackets_is_refused(self) -> None:
        self.assertBadAddress("::1:443", "IPv6 addresses need brackets, like [::1]:443")

    def test_malformed_brackets_are_refused(self) -> None:
        self.assertBadAddress("[::1:443", "not host:port")
        self.assertBadAddress("[::1]", "not host:port")
        self.assertBadAddress("[::1]443", "not host:port")
        self.assertBadAddress("[relay]:443", "'relay' in brackets is not an IPv6 address")
        self.assertBadAddress("[10.0.0.1]:443", "is not an IPv6 address")

    def test_bad_host_names_are_refused(self) -> None:
        for host in ("relay example", "relay/x", "relay..x", ".relay", "r\xe9lay", "a" * 64):
            self.assertBadAddress(f"{host}:443", "is not a valid host name or IP address")

    def test_a_newline_in_the_host_name_is_refused(self) -> None:
        # A regex ``$`` matches before a final newline: "relay\n" must not pass as a host name.
        self.assertBadAddress("relay\n:443", "is not a valid host name or IP address")

    def test_host_name_length_limits(self) -> None:
        label = "a" * 63
        self.assertEqual(parse_address(f"{label}:1").host, label)
        long_name = ".".join([label] * 3 + ["a" * 61])  # 253 characters
        self.assertEqual(parse_address(f"{long_name}:1").host, long_name)
        self.assertBadAddress(f"{long_name}a:1", "is not a valid host name")


class TargetTests(ConfigTestCase):
    def test_targets_keep_their_order_and_settings(self) -> None:
        second = '\n[[target]]\nname = "hmi"\naddress = "10.0.0.3:8080"\nconnect_timeout = 2\n'
        config = self.load_gateway(gateway_toml(rest=ONE_TARGET + second))
        self.assertEqual(
            config.targets,
            (
                Target("web", Address("192.168.10.2", 80), connect_timeout=5.0),
                Target("hmi", Address("10.0.0.3", 8080), connect_timeout=2.0),
            ),
        )
        self.assertEqual(config.target("hmi"), config.targets[1])
        self.assertIsNone(config.target("plc"))

    def test_duplicate_target_names_are_refused(self) -> None:
        again = '\n[[target]]\nname = "web"\naddress = "10.0.0.3:80"\n'
        error = self.gateway_refused(gateway_toml(rest=ONE_TARGET + again))
        self.assertProblem(error, "target[1].name", "target 'web' is listed twice")

    def test_bad_target_names_are_refused(self) -> None:
        for name in ("", "-web", ".web", "web ui", "web/1", "w\xe9b", "a" * 65):
            text = gateway_toml(rest=f'[[target]]\nname = "{name}"\naddress = "10.0.0.2:80"\n')
            error = self.gateway_refused(text)
            self.assertProblem(error, "target[0].name", f"{name!r} is not a target name")

    def test_a_target_name_ending_in_a_newline_is_refused(self) -> None:
        # A regex ``$`` matches before a final newline: "web\n" must not pass as a target name.
        text = gateway_toml(rest='[[target]]\nname = "web\\n"\naddress = "10.0.0.2:80"\n')
        error = self.gateway_refused(text)
        self.assertProblem(error, "target[0].name", "'web\\n' is not a target name")

    def test_a_target_is_tcp_unless_it_says_http(self) -> None:
        http = '\n[[target]]\nname = "hmi"\naddress = "10.0.0.3:80"\nkind = "http"\n'
        config = self.load_gateway(gateway_toml(rest=ONE_TARGET + http))
        web, hmi = config.targets
        self.assertEqual((web.kind, web.view_websocket), (TargetKind.TCP, False))
        self.assertEqual((hmi.kind, hmi.view_websocket), (TargetKind.HTTP, False))

    def test_an_http_target_may_let_view_sessions_open_websockets(self) -> None:
        text = '[[target]]\nname = "hmi"\naddress = "10.0.0.3:80"\nkind = "http"\n'
        config = self.load_gateway(gateway_toml(rest=text + "view_websocket = true\n"))
        self.assertTrue(config.targets[0].view_websocket)

    def test_an_unknown_target_kind_is_refused(self) -> None:
        text = '[[target]]\nname = "hmi"\naddress = "10.0.0.3:80"\nkind = "https"\n'
        error = self.gateway_refused(gateway_toml(rest=text))
        self.assertProblem(error, "target[0].kind", '\'https\' is not one of "tcp", "http"')

    def test_view_websocket_on_a_tcp_target_is_refused(self) -> None:
        for kind in ("", 'kind = "tcp"\n'):
            for value in ("true", "false"):
                text = f'[[target]]\nname = "plc"\naddress = "10.0.0.3:502"\n{kind}'
                error = self.gateway_refused(gateway_toml(rest=f"{text}view_websocket = {value}\n"))
                self.assertProblem(
                    error, "target[0].view_websocket", 'only applies to kind = "http" targets'
                )

    def test_view_websocket_must_be_true_or_false(self) -> None:
        text = '[[target]]\nname = "hmi"\naddress = "10.0.0.3:80"\nkind = "http"\n'
        error = self.gateway_refused(gateway_toml(rest=text + 'view_websocket = "yes"\n'))
        self.assertProblem(error, "target[0].view_websocket", "must be true or false, not")

    def test_good_target_names_are_accepted(self) -> None:
        for name in ("web", "Line2.hmi_1-a", "7", "a" * 64):
            text = gateway_toml(rest=f'[[target]]\nname = "{name}"\naddress = "10.0.0.2:80"\n')
            self.assertEqual(self.load_gateway(text).targets[0].name, name)


class AccessModeTests(ConfigTestCase):
    def mode_text(self, mode: str) -> str:
        return gateway_toml() + f'\n[access]\nmode = "{mode}"\n'

    def test_every_mode_is_accepted(self) -> None:
        for mode in AccessMode:
            self.assertEqual(self.load_gateway(self.mode_text(mode.value)).access_mode, mode)

    def test_access_section_without_mode_means_attended(self) -> None:
        config = self.load_gateway(gateway_toml() + "\n[access]\n")
        self.assertEqual(config.access_mode, AccessMode.ATTENDED)

    def test_unknown_mode_is_refused_listing_the_choices(self) -> None:
        error = self.gateway_refused(self.mode_text("unatended"))
        self.assertProblem(
            error, "access.mode", "'unatended' is not one of attended, unattended, disabled"
        )

    def test_modes_are_case_sensitive(self) -> None:
        error = self.gateway_refused(self.mode_text("Unattended"))
        self.assertProblem(error, "access.mode", "is not one of attended, unattended, disabled")

    def test_empty_mode_is_refused_listing_the_choices(self) -> None:
        # An explicit but empty mode is a mistake like any other, not a request for the default.
        error = self.gateway_refused(self.mode_text(""))
        self.assertProblem(error, "access.mode", "'' is not one of attended, unattended, disabled")


class RangeTests(ConfigTestCase):
    def assertRange(
        self,
        key: str,
        low: float,
        high: float,
        make: Callable[[str], str],
        load: Callable[[Path], object] = load_gateway_config,
    ) -> None:
        """``key`` accepts ``low`` and ``high`` and refuses values just outside them."""
        name = key.rpartition(".")[2]
        for good in (low, high):
            load(self.write(make(f"{name} = {good!r}\n"), "range.toml"))
        for bad in (low - 0.01 if low > 0 else -1.0, high + 1):
            path = self.write(make(f"{name} = {bad!r}\n"), "range.toml")
            self.assertProblem(
                self.refused(load, path),
                key,
                f"must be between {low:g} and {high:g} seconds, not {bad:g}",
            )

    def test_heartbeat_interval_range(self) -> None:
        self.assertRange("relay.heartbeat_interval", 0.5, 300, gateway_toml)

    def test_heartbeat_timeout_range(self) -> None:
        self.assertRange("relay.heartbeat_timeout", 0.5, 300, gateway_toml)

    def test_relay_side_heartbeat_ranges(self) -> None:
        for key in ("gateways.heartbeat_interval", "gateways.heartbeat_timeout"):
            self.assertRange(key, 0.5, 300, relay_toml, load_relay_config)

    def test_connect_timeout_range(self) -> None:
        self.assertRange("relay.connect_timeout", 0.1, 300, gateway_toml)

    def test_reconnect_max_delay_range(self) -> None:
        self.assertRange("relay.reconnect_max_delay", 1, 3600, gateway_toml)

    def test_target_connect_timeout_range(self) -> None:
        self.assertRange(
            "target[0].connect_timeout", 0.1, 120, lambda line: gateway_toml(rest=ONE_TARGET + line)
        )

    def test_drain_timeout_range_allows_zero(self) -> None:
        self.assertRange(
            "service.drain_timeout", 0, 3600, lambda line: gateway_toml() + "\n[service]\n" + line
        )
        self.assertRange(
            "service.drain_timeout",
            0,
            3600,
            lambda line: relay_toml(rest="[service]\n" + line),
            load_relay_config,
        )

    def test_not_a_number_and_infinity_are_refused(self) -> None:
        for value in ("nan", "inf", "-inf"):
            error = self.gateway_refused(gateway_toml(f"heartbeat_timeout = {value}\n"))
            self.assertProblem(error, "relay.heartbeat_timeout", "must be between 0.5 and 300")

    def test_settings_in_range_are_kept(self) -> None:
        config = self.load_gateway(
            gateway_toml(
                "heartbeat_interval = 2.5\nheartbeat_timeout = 4\n"
                "connect_timeout = 20\nreconnect_max_delay = 300\n"
            )
            + "\n[service]\ndrain_timeout = 0\n"
        )
        self.assertEqual(config.relay.heartbeat, Heartbeat(interval=2.5, timeout=4.0))
        self.assertEqual(config.relay.connect_timeout, 20.0)
        self.assertEqual(config.relay.reconnect_cap, 300.0)
        self.assertEqual(config.drain_timeout, 0.0)


class ProxyTests(ConfigTestCase):
    def proxy(self, text: str) -> Address | None:
        return self.load_gateway(gateway_toml(f'proxy = "{text}"\n')).relay.proxy

    def proxy_refused(self, text: str) -> ConfigError:
        return self.gateway_refused(gateway_toml(f'proxy = "{text}"\n'))

    def test_no_proxy_by_default(self) -> None:
        self.assertIsNone(self.load_gateway(gateway_toml()).relay.proxy)

    def test_http_proxy_url_is_accepted(self) -> None:
        expected = Address("proxy.plant.local", 3128)
        self.assertEqual(self.proxy("http://proxy.plant.local:3128"), expected)
        self.assertEqual(self.proxy("http://proxy.plant.local:3128/"), expected)

    def test_proxy_without_scheme_is_accepted(self) -> None:
        self.assertEqual(self.proxy("10.1.1.1:8080"), Address("10.1.1.1", 8080))

    def test_ipv6_proxy_is_accepted_in_brackets(self) -> None:
        self.assertEqual(self.proxy("http://[fd00::3]:3128"), Address("fd00::3", 3128))

    def test_https_proxy_is_refused(self) -> None:
        error = self.proxy_refused("https://proxy.plant.local:3128")
        self.assertProblem(error, "relay.proxy", "only http:// proxies are supported, not https://")

    def test_other_proxy_schemes_are_refused(self) -> None:
        error = self.proxy_refused("socks5://proxy.plant.local:1080")
        self.assertProblem(error, "relay.proxy", "not socks5://")

    def test_proxy_without_port_is_refused(self) -> None:
        self.assertProblem(
            self.proxy_refused("http://proxy.plant.local"), "relay.proxy", "host:port"
        )

    def test_proxy_with_credentials_is_refused(self) -> None:
        self.assertEqual(self.proxy_refused("http://user:pw@proxy:3128").key, "relay.proxy")

    def test_server_name_defaults_to_the_relay_host(self) -> None:
        config = self.load_gateway(gateway_toml())
        self.assertIsNone(config.relay.server_name)
        self.assertEqual(config.relay.expected_name, "relay.example.com")
        named = self.load_gateway(gateway_toml('server_name = "relay.vendor.internal"\n'))
        self.assertEqual(named.relay.expected_name, "relay.vendor.internal")


class RelayConfigTests(ConfigTestCase):
    def test_engineer_listener_uses_the_gateway_certificate_by_default(self) -> None:
        config = self.load_relay(relay_toml())
        self.assertEqual(config.engineers.cert, config.gateways.cert)
        self.assertEqual(config.engineers.key, config.gateways.key)

    def test_engineer_listener_may_have_its_own_certificate(self) -> None:
        for name in ("engineers.pem", "engineers.key"):
            (self.directory / name).write_text("dummy\n")
        text = relay_toml(engineers_lines='cert = "engineers.pem"\nkey = "engineers.key"\n')
        config = self.load_relay(text)
        self.assertEqual(config.engineers.cert, self.directory / "engineers.pem")
        self.assertEqual(config.engineers.key, self.directory / "engineers.key")

    def test_relay_settings_are_read(self) -> None:
        config = self.load_relay(
            relay_toml(
                "heartbeat_interval = 3\nheartbeat_timeout = 7\n",
                rest='[metrics]\nlisten = "127.0.0.1:9109"\n\n[service]\ndrain_timeout = 30\n',
            )
        )
        self.assertEqual(config.gateways.heartbeat, Heartbeat(interval=3.0, timeout=7.0))
        self.assertEqual(config.metrics_listen, Address("127.0.0.1", 9109))
        self.assertEqual(config.drain_timeout, 30.0)
        self.assertEqual(config.path, self.directory / "relay.toml")


class ConfigErrorTests(SynchronousTestCase):
    def test_str_is_file_key_problem(self) -> None:
        error = ConfigError("/etc/gateway/gateway.toml", "relay.address", "is required")
        self.assertEqual(str(error), "/etc/gateway/gateway.toml: relay.address: is required")
        self.assertEqual(
            (error.file, error.key, error.problem),
            ("/etc/gateway/gateway.toml", "relay.address", "is required"),
        )

    def test_str_without_a_key_is_file_problem(self) -> None:
        error = ConfigError(Path("/etc/gateway/gateway.toml"), "", "file does not exist")
        self.assertEqual(str(error), "/etc/gateway/gateway.toml: file does not exist")

    def test_loader_errors_have_exactly_one_line(self) -> None:
        directory = temporary_directory(self)
        path = directory / "gateway.toml"
        path.write_text('[relay]\naddress = "relay:443"\nca = 1\n')
        try:
            load_gateway_config(path)
        except ConfigError as e:
            self.assertEqual(str(e), f"{path}: relay.ca: must be a string, not a number")
        else:
            self.fail("accepted")
