# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""The ``gateway`` command as a package: every command a module, one way to print, fail and exit.

These run `gateway.cli.main` in-process with captured streams (no subprocess, no reactor): a
command module registers its parser and handler; a user's mistake is one line on stderr with its
exit code (2 usage, 1 refused, 3 daemon not running) and never a traceback.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

import gateway.cli
from gateway import __version__
from gateway.cli import COMMAND_MODULES, build, main
from gateway.cli.common import (
    EXIT_NOT_RUNNING,
    EXIT_REFUSED,
    EXIT_USAGE,
    Commands,
    Console,
    DaemonNotRunning,
    Refused,
    UsageError,
)

COMMANDS = ["run", "relay", "connect", "pki", "demo", "demo-processor"]
COMMANDS += ["access", "code", "requests", "approve", "deny", "sessions", "end", "audit"]
COMMANDS += ["check", "snapshot", "enroll", "operator-password"]


class Run:
    """``main(argv)`` with captured output."""

    def __init__(self, *argv: str) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        self.code = main(list(argv), stdout=self.out, stderr=self.err)

    @property
    def stdout(self) -> str:
        return self.out.getvalue()

    @property
    def stderr(self) -> str:
        return self.err.getvalue()


def fake_command(name: str, error: Exception) -> ModuleType:
    """A command module whose handler fails with ``error``."""
    module = ModuleType(f"fake_{name}")

    def handler(args: argparse.Namespace, console: Console) -> int:
        console.print("partial result")
        raise error

    def register(commands: Commands) -> None:
        commands.add(name, handler, help="a command that fails")

    module.register = register  # type: ignore[attr-defined]
    return module


class RegistryTests(SynchronousTestCase):
    def test_every_command_module_registers_its_commands(self) -> None:
        _, commands = build()
        self.assertEqual(list(commands.handlers), COMMANDS)
        self.assertEqual(len(COMMAND_MODULES), 11)
        for module in COMMAND_MODULES:
            self.assertTrue(callable(getattr(module, "register", None)), module)

    def test_parsing_a_command_sets_its_handler(self) -> None:
        top, commands = build()
        argv = {
            "run": "run -c gateway.toml",
            "relay": "relay -c relay.toml",
            "connect": "connect --relay r:1 --ca ca.pem --gateway g --target web",
            "pki": "pki show ca.pem",
            "demo": "demo",
            "demo-processor": "demo-processor",
            "access": "access -c gateway.toml",
            "code": "code -c gateway.toml",
            "requests": "requests -c gateway.toml",
            "approve": "approve r-1 -c gateway.toml",
            "deny": "deny r-1 -c gateway.toml",
            "sessions": "sessions -c gateway.toml",
            "end": "end --all -c gateway.toml",
            "audit": "audit -c gateway.toml",
            "check": "check -c gateway.toml --json",
            "snapshot": "snapshot -c gateway.toml -o s.tar.gz",
            "enroll": "enroll --relay r:1 --ca ca.pem --token t -c gateway.toml",
            "operator-password": "operator-password -c gateway.toml --stdin",
        }
        for name in COMMANDS:
            args = top.parse_args(argv[name].split())
            self.assertIs(args.handler, commands.handlers[name], name)

    def test_a_command_name_registered_twice_is_a_bug(self) -> None:
        commands = Commands(argparse.ArgumentParser().add_subparsers())
        commands.add("run", lambda args, console: 0)
        self.assertRaises(ValueError, commands.add, "run", lambda args, console: 0)

    def test_help_lists_every_command(self) -> None:
        result = Run("--help")
        self.assertEqual(result.code, 0)
        self.assertEqual(result.stderr, "")
        listed = [line.split()[0] for line in result.stdout.splitlines() if line[:4] == " " * 4]
        self.assertEqual([name for name in listed if name in COMMANDS], COMMANDS)

    def test_version_goes_to_stdout(self) -> None:
        result = Run("--version")
        self.assertEqual((result.code, result.stdout), (0, f"gateway {__version__}\n"))


class FailureTests(SynchronousTestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-cli-package-")
        self.addCleanup(tmp.cleanup)
        self.directory = Path(tmp.name)

    def assertOneLine(self, result: Run, code: int, line: str) -> None:
        self.assertEqual(result.code, code, result.stderr)
        self.assertEqual(result.stderr, line + "\n")
        self.assertNotIn("Traceback", result.stderr)

    def test_a_bad_flag_exits_2_naming_it(self) -> None:
        result = Run("run", "-c", "gateway.toml", "--frobnicate")
        self.assertEqual(result.code, EXIT_USAGE)
        self.assertEqual(result.stdout, "")
        self.assertIn("--frobnicate", result.stderr.splitlines()[-1])
        self.assertNotIn("Traceback", result.stderr)

    def test_a_usage_error_is_one_line_and_exit_2(self) -> None:
        ca = self.directory / "ca.pem"
        ca.write_text("unused\n")
        result = Run(*f"connect --relay relay:9443 --ca {ca} --gateway g --target w".split())
        self.assertOneLine(
            result,
            EXIT_USAGE,
            "gateway: connect: an engineer token is needed: --token or GATEWAY_TOKEN",
        )

    def test_a_config_error_is_one_line_naming_the_file_and_exit_2(self) -> None:
        missing = self.directory / "missing.toml"
        result = Run("run", "-c", str(missing))
        self.assertOneLine(result, EXIT_USAGE, f"gateway: {missing}: file does not exist")

    def test_a_config_with_a_bad_key_is_one_line_naming_the_key(self) -> None:
        config = self.directory / "relay.toml"
        config.write_text("[gateways]\nlisten = 5\n")
        result = Run("relay", "-c", str(config))
        self.assertEqual(result.code, EXIT_USAGE, result.stderr)
        [line] = result.stderr.splitlines()
        self.assertTrue(line.startswith(f"gateway: {config}: gateways."), line)

    def test_pki_mistakes_name_the_pki_command(self) -> None:
        result = Run("pki", "issue-gateway", "--ca-dir", str(self.directory), "--id", "gw")
        self.assertOneLine(
            result, EXIT_USAGE, f"gateway pki: {self.directory / 'ca.pem'}: no such file"
        )

    def test_each_kind_of_failure_has_its_exit_code(self) -> None:
        for error, code in [
            (UsageError("bad --minutes: 0"), EXIT_USAGE),
            (Refused("no request 'r-7' is pending"), EXIT_REFUSED),
            (DaemonNotRunning("the gateway is not running (state/control.sock)"), 3),
        ]:
            self.patch(gateway.cli, "COMMAND_MODULES", (fake_command("ask", error),))
            result = Run("ask")
            self.assertOneLine(result, code, f"gateway: {error}")
            self.assertEqual(result.stdout, "partial result\n")
        self.assertEqual(EXIT_NOT_RUNNING, 3)

    def test_a_bug_is_not_hidden_as_a_user_mistake(self) -> None:
        self.patch(gateway.cli, "COMMAND_MODULES", (fake_command("ask", KeyError("oops")),))
        self.assertRaises(KeyError, Run, "ask")

    def test_an_error_names_its_program(self) -> None:
        self.assertEqual(UsageError("x", prog="gateway pki").line, "gateway pki: x")
        self.assertEqual(Refused("y").line, "gateway: y")


class CheapImportTests(SynchronousTestCase):
    def test_help_and_a_bad_config_never_start_the_reactor(self) -> None:
        """``gateway --help`` and config mistakes must not pay for (or install) a reactor."""
        script = (
            "import sys, io\n"
            "import gateway.cli\n"
            "assert 'twisted.internet.reactor' not in sys.modules, 'import'\n"
            "out = io.StringIO()\n"
            "assert gateway.cli.main(['--help'], stdout=out) == 0\n"
            "assert gateway.cli.main(['run', '-c', 'missing.toml'], stderr=out) == 2\n"
            "assert 'twisted.internet.reactor' not in sys.modules, 'main'\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, result.stderr)
