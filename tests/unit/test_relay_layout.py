"""Imports point one way: the relay composes tunnel, TLS and wire, and knows no other program.

The edge daemon, the CLI, the demo and the engineer client sit beside or above the relay; the
relay importing any of them would tie the programs together again.  (tests/unit/test_layering.py
checks the package's layering as a whole; this is the relay's own list, ``gateway.connect``
included.)
"""

from __future__ import annotations

import ast
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import gateway.relay

FORBIDDEN = ("gateway.edge", "gateway.cli", "gateway.demo", "gateway.connect")


def imported_modules(source: Path) -> set[str]:
    """Every module a file imports, as dotted names (``from gateway import edge`` included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text("utf-8"), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


class RelayImportTests(SynchronousTestCase):
    def test_the_relay_imports_no_other_program(self) -> None:
        sources = sorted(Path(gateway.relay.__file__).parent.rglob("*.py"))
        self.assertGreater(len(sources), 5)
        found = {
            f"{source.name}: {module}"
            for source in sources
            for module in imported_modules(source)
            if any(is_within(module, package) for package in FORBIDDEN)
        }
        self.assertEqual(found, set())

    def test_the_check_sees_a_forbidden_import(self) -> None:
        with tempfile.TemporaryDirectory(prefix="test-relay-layout-") as tmp:
            source = Path(tmp) / "sample.py"
            source.write_text("from gateway import edge\nimport gateway.cli.main\n")
            modules = imported_modules(source)
        self.assertTrue(is_within("gateway.edge", "gateway.edge"))
        self.assertIn("gateway.edge", modules)
        self.assertIn("gateway.cli.main", modules)
        self.assertFalse(is_within("gateway.edgeways", "gateway.edge"))
