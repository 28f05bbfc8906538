# Twisted's trial is only partly annotated; strict mode would flag every assertion.
# mypy: disable-error-code="no-untyped-call"
"""A careless install is one clear line, never a traceback or a hang.

The mistakes plant IT and vendor operators really make with paths and files: a symbolic link
loop, ``~nosuchuser``, a NUL byte, a FIFO where a file should be (which used to hang start-up), a
device or a directory or an empty file as a certificate, a byte-order mark, a key others can
read.  Each goes through ``gateway.cli.main`` as a user would run it, with captured streams,
and must end in exit 2 and one line naming the file and the key.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import main
from gateway.config import (
    ConfigError,
    existing_file,
    load_gateway_config,
    read_regular_file,
    resolve_path,
)
from gateway.tls import TLSFileError, load_ca, load_identity
from tests.helpers.pki import TestPKI, make_pki

NO_USER = "~nosuchuser-for-gateway-tests"


@contextmanager
def no_hang(seconds: int = 5) -> Iterator[None]:
    """Fail instead of hanging for ever (a FIFO opened for reading waits for a writer)."""

    def expired(signum: int, frame: object) -> None:
        raise AssertionError(f"hung for {seconds}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class MistakeTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="test-mistakes-")
        self.addCleanup(tmp.cleanup)
        self.directory = Path(tmp.name)
        self._pki: TestPKI | None = None

    @property
    def pki(self) -> TestPKI:
        if self._pki is None:
            self._pki = make_pki(self.directory / "pki")
        return self._pki

    def gateway_config(self, **paths: str) -> Path:
        files = {
            "ca": str(self.pki.ca_cert),
            "cert": str(self.pki.gateway_cert),
            "key": str(self.pki.gateway_key),
            **paths,
        }
        lines = ["[relay]", 'address = "127.0.0.1:1"']
        lines += [f"{key} = {_toml_string(value)}" for key, value in files.items()]
        path = self.directory / "gateway.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def relay_config(self, **paths: str) -> Path:
        files = {
            "ca": str(self.pki.ca_cert),
            "cert": str(self.pki.relay_cert),
            "key": str(self.pki.relay_key),
            **paths,
        }
        lines = ["[gateways]", 'listen = "127.0.0.1:0"']
        lines += [f"{key} = {_toml_string(value)}" for key, value in files.items()]
        lines += ["[engineers]", 'listen = "127.0.0.1:0"', 'tokens = "engineers.toml"']
        path = self.directory / "relay.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def fails(self, *argv: str) -> str:
        """Run ``gateway ARGV``: exit 2 and exactly one line on stderr, which is returned."""
        out, err = io.StringIO(), io.StringIO()
        with no_hang():
            code = main(list(argv), stdout=out, stderr=err)
        lines = err.getvalue().splitlines()
        self.assertEqual(code, 2, err.getvalue())
        self.assertEqual(len(lines), 1, err.getvalue())
        self.assertNotIn("Traceback", err.getvalue())
        self.assertTrue(lines[0].startswith("gateway: "), lines[0])
        return lines[0]

    def special(self, kind: str) -> Path:
        """A path that is not a regular file with something in it."""
        path = self.directory / kind
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "loop":
            os.symlink(path, path)
        elif kind == "directory":
            path.mkdir()
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "null":
            return Path("/dev/null")
        return path


def _toml_string(value: str) -> str:
    """A TOML basic string; a NUL is written as its escape, as a user might."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\x00", "\\u0000")
    return f'"{escaped}"'


class ConfigFileTests(MistakeTestCase):
    """``-c`` names something that is not a readable configuration file."""

    def test_a_fifo_as_the_config_file_is_refused_without_hanging(self) -> None:
        fifo = self.special("fifo")
        for command in ("run", "relay"):
            line = self.fails(command, "-c", str(fifo))
            self.assertIn(f"{fifo}: is a named pipe (FIFO), not a regular file", line)

    def test_a_symbolic_link_loop_is_named(self) -> None:
        loop = self.special("loop")
        for command in ("run", "relay"):
            self.assertIn(
                f"{loop}: is a loop of symbolic links", self.fails(command, "-c", str(loop))
            )

    def test_an_unknown_user_is_named(self) -> None:
        line = self.fails("run", "-c", f"{NO_USER}/gateway.toml")
        self.assertIn("there is no user 'nosuchuser-for-gateway-tests'", line)

    def test_a_nul_byte_is_named(self) -> None:
        self.assertIn("contains a NUL byte", self.fails("relay", "-c", "relay\x00.toml"))

    def test_a_device_is_not_a_config_file(self) -> None:
        line = self.fails("run", "-c", "/dev/null")
        self.assertIn("/dev/null: is a character device, not a regular file", line)

    def test_a_huge_file_is_not_a_config_file(self) -> None:
        big = self.directory / "big.toml"
        big.write_bytes(b"#" * (2 << 20))
        self.assertIn("is larger than 1024 KiB", self.fails("run", "-c", str(big)))

    def test_a_byte_order_mark_is_accepted(self) -> None:
        path = self.gateway_config()
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        self.assertEqual(load_gateway_config(path).relay.address.port, 1)

    def test_utf16_is_named(self) -> None:
        path = self.gateway_config()
        path.write_bytes(path.read_text().encode("utf-16"))
        error = self.assertRaises(ConfigError, load_gateway_config, path)
        self.assertEqual(str(error), f"{path}: is UTF-16 text: save it as UTF-8")


class CertificatePathTests(MistakeTestCase):
    """A certificate or key setting names something that is not a certificate or key file."""

    def test_unusable_gateway_files_name_the_file_and_the_key(self) -> None:
        cases = [
            ("ca", "null", "is a character device, not a regular file"),
            ("cert", "directory", "is a directory, not a file"),
            ("key", "empty", "is empty"),
            ("ca", "fifo", "is a named pipe (FIFO), not a regular file"),
            ("cert", "loop", "is a loop of symbolic links"),
        ]
        for key, kind, problem in cases:
            path = self.special(kind)
            line = self.fails("run", "-c", str(self.gateway_config(**{key: str(path)})))
            self.assertIn(f"gateway.toml: relay.{key}: ", line)
            self.assertIn(problem, line)
            self.assertNotIn("does not exist", line)
            if path.name != "null":
                path.unlink() if not path.is_dir() or path.is_symlink() else path.rmdir()

    def test_unknown_user_and_nul_byte_in_a_path_name_the_key(self) -> None:
        line = self.fails("run", "-c", str(self.gateway_config(ca=f"{NO_USER}/ca.pem")))
        self.assertIn("relay.ca: ", line)
        self.assertIn("there is no user", line)
        line = self.fails("run", "-c", str(self.gateway_config(key="gate\x00way.key")))
        self.assertIn("relay.key: ", line)
        self.assertIn("contains a NUL byte", line)

    def test_unusable_relay_files_name_the_file_and_the_key(self) -> None:
        fifo = self.special("fifo")
        line = self.fails("relay", "-c", str(self.relay_config(key=str(fifo))))
        self.assertIn("relay.toml: gateways.key: ", line)
        self.assertIn("named pipe", line)
        line = self.fails("relay", "-c", str(self.relay_config(cert="/dev/null")))
        self.assertIn("gateways.cert: '/dev/null' is a character device", line)

    def test_a_missing_file_still_says_it_does_not_exist(self) -> None:
        missing = str(self.directory / "missing.pem")
        line = self.fails("run", "-c", str(self.gateway_config(ca=missing)))
        self.assertIn(f"relay.ca: file '{missing}' does not exist", line)

    def test_tls_loading_refuses_special_files_in_words(self) -> None:
        fifo = self.special("fifo")
        with no_hang():
            error = self.assertRaises(TLSFileError, load_ca, fifo)
        self.assertIn("cannot read CA certificate: the file is a named pipe (FIFO)", str(error))
        error = self.assertRaises(TLSFileError, load_ca, Path("/dev/null"))
        self.assertIn("the file is a character device", str(error))
        empty = self.special("empty")
        error = self.assertRaises(TLSFileError, load_identity, self.pki.gateway_cert, empty)
        self.assertIn(f"{empty}: cannot read private key: the file is empty", str(error))


class ConnectCaTests(MistakeTestCase):
    """``gateway connect --ca`` gets the same words."""

    def connect(self, ca: str) -> str:
        return self.fails(
            "connect",
            "--relay",
            "127.0.0.1:9",
            "--ca",
            ca,
            "--token",
            "rsg_x",
            "--gateway",
            "plant7",
            "--target",
            "web",
        )

    def test_special_files_as_the_ca(self) -> None:
        cases = [
            ("null", "is a character device, not a regular file"),
            ("fifo", "is a named pipe (FIFO), not a regular file"),
            ("directory", "is a directory, not a file"),
            ("empty", "is empty"),
            ("loop", "is a loop of symbolic links"),
        ]
        for kind, problem in cases:
            line = self.connect(str(self.special(kind)))
            self.assertIn("--ca ", line)
            self.assertIn(problem, line)

    def test_unknown_user_and_nul_byte_in_the_ca(self) -> None:
        self.assertIn("there is no user", self.connect(f"{NO_USER}/ca.pem"))
        self.assertIn("contains a NUL byte", self.connect("c\x00a.pem"))
        self.assertIn("missing.pem: file does not exist", self.connect("missing.pem"))


class KeyPermissionTests(MistakeTestCase):
    """``gateway run`` refuses a private key others can read or write, with the fix."""

    def run_gateway(self, config: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "run", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.directory,
        )

    def test_a_world_readable_key_is_refused_with_the_chmod_to_run(self) -> None:
        config = self.gateway_config()
        key = self.pki.gateway_key
        for mode, problem in ((0o644, "readable by others"), (0o620, "writable by its group")):
            os.chmod(key, mode)
            result = self.run_gateway(config)
            lines = result.stderr.splitlines()
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertEqual(len(lines), 1, result.stderr)
            self.assertIn(f"{key}: private key is {problem}", lines[0])
            self.assertIn(f"run: chmod 600 {key}", lines[0])

    def test_the_test_pki_writes_private_keys(self) -> None:
        for key in (self.pki.gateway_key, self.pki.relay_key, self.pki.ca_key):
            self.assertEqual(key.stat().st_mode & 0o077, 0, key)


class PathHelperTests(MistakeTestCase):
    def test_relative_paths_resolve_against_the_base(self) -> None:
        self.assertEqual(
            resolve_path("a/b.pem", self.directory), self.directory.resolve() / "a/b.pem"
        )

    def test_home_is_expanded(self) -> None:
        self.assertEqual(resolve_path("~/x", self.directory), Path.home().resolve() / "x")

    def test_existing_file_resolves(self) -> None:
        self.assertEqual(existing_file(str(self.pki.ca_cert)), self.pki.ca_cert.resolve())

    def test_reading_stops_at_the_limit(self) -> None:
        path = self.directory / "f"
        path.write_bytes(b"x" * 100)
        self.assertEqual(read_regular_file(path, max_bytes=100), b"x" * 100)
