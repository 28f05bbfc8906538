# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""Tests for the ``gateway`` command line as a user runs it: a real process, real exit codes.

Every command answers ``--help``; a bad flag or a bad configuration exits 2 with one line naming
the file, the key and the problem, and never a Python traceback. These commands all exit at once,
so each run has a timeout instead of a readiness check.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway import __version__
from gateway.relay.credentials import TOKEN_PREFIX, TokenFile, hash_token, read_engineers
from tests.helpers.pki import TestPKI, make_pki

TIMEOUT = 60


def temporary_directory(case: SynchronousTestCase) -> Path:
    """A fresh directory removed after the test (trial's mktemp would write into the repo)."""
    tmp = tempfile.TemporaryDirectory(prefix="test-cli-")
    case.addCleanup(tmp.cleanup)
    return Path(tmp.name)


class CommandLineTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = temporary_directory(self)

    def gateway(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -m gateway ARGS`` in the temporary directory; it must exit by itself."""
        environment = {
            k: v
            for k, v in os.environ.items()
            if k not in ("GATEWAY_TOKEN", "GATEWAY_EXIT_WITH_PARENT")
        }
        environment.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            cwd=self.directory,
            env=environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    def assertUsageError(self, result: subprocess.CompletedProcess[str], *parts: str) -> str:
        """Exit 2, no traceback, and the last line of stderr mentions every one of ``parts``."""
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertTrue(lines, "nothing on stderr")
        for part in parts:
            self.assertIn(part, lines[-1])
        return lines[-1]

    def assertOneLineError(self, result: subprocess.CompletedProcess[str], *parts: str) -> str:
        """A usage error that is exactly one line starting with ``gateway: ``."""
        line = self.assertUsageError(result, *parts)
        self.assertEqual(result.stderr.strip(), line)
        self.assertTrue(line.startswith("gateway: "), line)
        return line

    def make_pki(self) -> TestPKI:
        return make_pki(self.directory / "pki")

    def write_gateway_config(self, pki: TestPKI, extra: str = "") -> Path:
        path = self.directory / "gateway.toml"
        path.write_text(
            "[relay]\n"
            'address = "127.0.0.1:1"\n'
            'ca = "pki/ca.pem"\n'
            'cert = "pki/gateway.pem"\n'
            'key = "pki/gateway.key"\n'
            f"{extra}\n"
            "[[target]]\n"
            'name = "web"\n'
            'address = "127.0.0.1:8000"\n'
        )
        return path

    def write_relay_config(self, pki: TestPKI) -> Path:
        path = self.directory / "relay.toml"
        path.write_text(
            "[gateways]\n"
            'listen = "127.0.0.1:0"\n'
            'ca = "pki/ca.pem"\n'
            'cert = "pki/relay.pem"\n'
            'key = "pki/relay.key"\n'
            "\n[engineers]\n"
            'listen = "127.0.0.1:0"\n'
            'tokens = "engineers.toml"\n'
        )
        return path


class HelpAndVersionTests(CommandLineTestCase):
    def test_version_prints_the_version(self) -> None:
        result = self.gateway("--version")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), f"gateway {__version__}")

    def test_every_command_answers_help(self) -> None:
        for command in ([], ["run"], ["relay"], ["connect"], ["pki"], ["demo"]):
            result = self.gateway(*command, "--help")
            self.assertEqual(result.returncode, 0, (command, result.stderr))
            self.assertIn("usage: gateway", result.stdout)
            self.assertEqual(result.stderr, "")

    def test_help_describes_the_commands(self) -> None:
        result = self.gateway("--help")
        for command in ("run", "relay", "connect", "pki", "demo"):
            self.assertIn(command, result.stdout)

    def test_bad_flag_exits_2_with_usage(self) -> None:
        result = self.gateway("run", "-c", "gateway.toml", "--frobnicate")
        line = self.assertUsageError(result, "--frobnicate")
        self.assertIn("unrecognized arguments", line)

    def test_unknown_command_exits_2(self) -> None:
        self.assertUsageError(self.gateway("frobnicate"), "frobnicate")

    def test_missing_command_exits_2(self) -> None:
        self.assertUsageError(self.gateway())

    def test_run_without_a_config_exits_2(self) -> None:
        self.assertUsageError(self.gateway("run"), "-c")


class RunConfigTests(CommandLineTestCase):
    def test_missing_config_file_is_one_line_naming_it(self) -> None:
        result = self.gateway("run", "-c", "missing.toml")
        line = self.assertOneLineError(result)
        self.assertEqual(
            line, f"gateway: {self.directory.resolve() / 'missing.toml'}: file does not exist"
        )

    def test_unknown_key_is_one_line_naming_file_and_key(self) -> None:
        path = self.write_gateway_config(self.make_pki(), extra="retries = 3\n")
        line = self.assertOneLineError(self.gateway("run", "-c", str(path)))
        self.assertEqual(line, f"gateway: {path}: relay.retries: unknown key")

    def test_bad_value_is_one_line_naming_file_key_and_problem(self) -> None:
        path = self.write_gateway_config(self.make_pki(), extra='proxy = "https://proxy:3128"\n')
        line = self.assertOneLineError(self.gateway("run", "-c", str(path)))
        self.assertEqual(
            line, f"gateway: {path}: relay.proxy: only http:// proxies are supported, not https://"
        )

    def test_certificate_that_is_not_a_certificate_is_one_line_naming_it(self) -> None:
        pki = self.make_pki()
        path = self.write_gateway_config(pki)
        pki.gateway_cert.write_text("this is not a certificate\n")
        line = self.assertOneLineError(self.gateway("run", "-c", str(path)))
        self.assertIn(str(pki.gateway_cert), line)
        self.assertIn("not a PEM certificate", line)

    def test_key_that_does_not_match_the_certificate_is_one_line(self) -> None:
        pki = self.make_pki()
        path = self.write_gateway_config(pki)
        pki.gateway_key.write_bytes(pki.relay_key.read_bytes())
        line = self.assertOneLineError(self.gateway("run", "-c", str(path)))
        self.assertIn("does not match the certificate", line)

    def test_relay_with_a_missing_config_file_exits_2(self) -> None:
        line = self.assertOneLineError(self.gateway("relay", "-c", "nope.toml"))
        self.assertIn("nope.toml: file does not exist", line)


class AddEngineerTests(CommandLineTestCase):
    def test_add_engineer_prints_the_token_and_stores_its_hash(self) -> None:
        config = self.write_relay_config(self.make_pki())
        result = self.gateway("relay", "add-engineer", "alice", "-c", str(config))
        self.assertEqual(result.returncode, 0, result.stderr)
        token = result.stdout.strip().splitlines()[-1]
        self.assertTrue(token.startswith(TOKEN_PREFIX), result.stdout)
        tokens = self.directory / "engineers.toml"
        self.assertNotIn(token, tokens.read_text())
        self.assertEqual(read_engineers(tokens), {"alice": hash_token(token)})
        self.assertIsNotNone(TokenFile(tokens).authenticate(token))
        self.assertIn("shown once", result.stderr)

    def test_adding_the_same_engineer_again_exits_2(self) -> None:
        config = self.write_relay_config(self.make_pki())
        first = self.gateway("relay", "add-engineer", "alice", "-c", str(config))
        self.assertEqual(first.returncode, 0, first.stderr)
        before = (self.directory / "engineers.toml").read_bytes()
        again = self.gateway("relay", "add-engineer", "alice", "-c", str(config))
        self.assertOneLineError(again, "'alice' already exists")
        self.assertEqual(again.stdout, "")
        self.assertEqual((self.directory / "engineers.toml").read_bytes(), before)

    def test_bad_engineer_name_exits_2(self) -> None:
        config = self.write_relay_config(self.make_pki())
        result = self.gateway("relay", "add-engineer", "al/ice", "-c", str(config))
        self.assertOneLineError(result, "'al/ice'")
        self.assertFalse((self.directory / "engineers.toml").exists())

    def test_unknown_relay_action_exits_2(self) -> None:
        config = self.write_relay_config(self.make_pki())
        result = self.gateway("relay", "frobnicate", "-c", str(config))
        self.assertOneLineError(result, "add-engineer NAME")

    def test_add_engineer_without_a_name_exits_2(self) -> None:
        config = self.write_relay_config(self.make_pki())
        self.assertOneLineError(self.gateway("relay", "add-engineer", "-c", str(config)))


class ConnectTests(CommandLineTestCase):
    def connect_args(self, pki: TestPKI, relay: str = "127.0.0.1:9443") -> list[str]:
        return [
            "connect",
            "--relay",
            relay,
            "--ca",
            str(pki.ca_cert),
            "--gateway",
            "plant7",
            "--target",
            "web",
            "--listen",
            "127.0.0.1:18080",  # never reached: these runs stop before listening
        ]

    def test_connect_without_a_token_exits_2_saying_how_to_give_one(self) -> None:
        result = self.gateway(*self.connect_args(self.make_pki()))
        self.assertOneLineError(result, "token", "--token", "GATEWAY_TOKEN")

    def test_connect_with_a_relay_that_is_not_host_port_exits_2(self) -> None:
        args = self.connect_args(self.make_pki(), relay="nonsense")
        result = self.gateway(*args, "--token", "rsg_x")
        self.assertUsageError(result, "--relay", "not host:port")

    def test_connect_with_a_missing_ca_file_exits_2(self) -> None:
        args = self.connect_args(self.make_pki())
        args[args.index("--ca") + 1] = "missing-ca.pem"
        result = self.gateway(*args, env={"GATEWAY_TOKEN": "rsg_x"})
        self.assertOneLineError(result, "missing-ca.pem", "does not exist")
