"""Imports point one way: the layering of the package, checked on every run.

Each rule is what keeps a part of the product replaceable: the tunnel knows Twisted, h2 and the wire
contract only (so it can be reused and tuned alone); the relay and the edge daemon never import
each other (they meet only in ``gateway.wire``); configuration and the wire contract have no
Twisted (the CLI and tools read them without a reactor); only the CLI touches the global reactor.
Every import in a module counts, also those inside functions and ``TYPE_CHECKING`` blocks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, name: str) -> Iterator[str]:
    """Every module ``path`` imports, absolute, including ``from X import Y`` submodules."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target
            for alias in node.names:
                yield f"{target}.{alias.name}"


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        edges[name] = set(imports_of(path, name))
    return edges


def inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


class LayeringTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.graph = graph()
        self.known = set(self.graph)

    def ours(self, module: str) -> set[str]:
        """The modules of this package that ``module`` imports."""
        return {m for m in self.graph[module] if m in self.known}

    def violations(
        self, source: str, allowed: tuple[str, ...] = (), banned: tuple[str, ...] = ()
    ) -> list[str]:
        """Imports from modules in ``source`` outside ``allowed`` (ours only) or in ``banned``."""
        found: list[str] = []
        for module in sorted(self.graph):
            if not inside(module, source):
                continue
            for imported in sorted(self.graph[module]):
                if banned and any(inside(imported, b) for b in banned):
                    found.append(f"{module} imports {imported}")
                if (
                    allowed
                    and imported in self.known
                    and not any(inside(imported, a) for a in allowed)
                ):
                    found.append(f"{module} imports {imported}")
        return found

    def test_the_tunnel_knows_only_twisted_h2_and_the_wire(self) -> None:
        # gateway.logsafe: what of a peer's bytes a log line may show (imports nothing of ours).
        allowed = ("gateway.tunnel", "gateway.wire", "gateway.logsafe")
        self.assertEqual(self.violations("gateway.tunnel", allowed=allowed), [])
        self.assertEqual(self.ours("gateway.logsafe"), set())
        third_party = {
            m.split(".")[0]
            for module in self.graph
            if inside(module, "gateway.tunnel")
            for m in self.graph[module]
            if not m.startswith("gateway")
        }
        stdlib_or_allowed = {
            "__future__", "collections", "typing", "enum", "types", "itertools", "struct",
            "attrs", "h2", "hyperframe", "hpack", "twisted", "zope", "time", "os", "math",
            "dataclasses", "functools", "weakref", "abc", "socket", "random",
        }  # fmt: skip
        self.assertEqual(sorted(third_party - stdlib_or_allowed), [])

    def test_relay_and_edge_never_import_each_other(self) -> None:
        self.assertEqual(self.violations("gateway.relay", banned=("gateway.edge",)), [])
        self.assertEqual(self.violations("gateway.edge", banned=("gateway.relay",)), [])

    def test_engineer_client_imports_neither_relay_nor_edge(self) -> None:
        self.assertEqual(
            self.violations("gateway.connect", banned=("gateway.relay", "gateway.edge")), []
        )

    def test_plain_data_modules_have_no_twisted(self) -> None:
        for module in ("gateway.config", "gateway.wire", "gateway.identity", "gateway._files"):
            self.assertEqual(self.violations(module, banned=("twisted",)), [], module)

    def test_programs_are_not_imported_by_their_parts(self) -> None:
        parts = ("gateway.tunnel", "gateway.net", "gateway.tls", "gateway.edge", "gateway.relay")
        for part in parts:
            self.assertEqual(
                self.violations(part, banned=("gateway.cli", "gateway.demo")), [], part
            )
        for part in ("gateway.net", "gateway.tls", "gateway.web"):
            self.assertEqual(self.violations(part, banned=("gateway.relay",)), [], part)

    def test_only_the_cli_imports_the_global_reactor(self) -> None:
        found = [
            module
            for module in self.graph
            if "twisted.internet.reactor" in self.graph[module]
            and not inside(module, "gateway.cli")
        ]
        self.assertEqual(found, [])

    def test_no_import_cycles(self) -> None:
        edges = {m: {i for i in self.ours(m) if i != m} for m in self.graph}
        # A package's __init__ re-exporting its own modules is not a cycle of design.
        for module, imported in edges.items():
            edges[module] = {i for i in imported if not inside(module, i)}
        cycles: list[list[str]] = []
        state: dict[str, int] = {}

        def visit(node: str, trail: list[str]) -> None:
            state[node] = 1
            for nxt in sorted(edges.get(node, ())):
                if state.get(nxt) == 1:
                    cycles.append([*trail[trail.index(nxt) :], nxt])
                elif nxt not in state:
                    visit(nxt, [*trail, nxt])
            state[node] = 2

        for module in sorted(edges):
            if module not in state:
                visit(module, [module])
        self.assertEqual([" -> ".join(c) for c in cycles], [])

    def test_the_walker_sees_imports(self) -> None:
        """The rules above would pass vacuously if the walker found nothing."""
        self.assertIn("gateway.wire", self.ours("gateway.relay.engineers"))
        cli = set().union(*(self.graph[m] for m in self.graph if inside(m, "gateway.cli")))
        self.assertIn("twisted.internet.reactor", cli)
