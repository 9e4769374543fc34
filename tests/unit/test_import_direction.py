"""docs/ARCHITECTURE.md: `chain` and `inference` never import each other or `node`; the chain sync
projections and the chain watcher never import each other; inside `node`, the dev tools and the
shared services never import the CLI, and the services never import the dev tools."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "chain": {"inference", "node"},
    "inference": {"chain", "node"},
    "node": set(),
}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            names.update(a.name.split(".")[0] for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            names.add(n.module.split(".")[0])
    return names


# Inside `node`: package -> packages it must not import (the CLI sits on top of both).
FORBIDDEN_INSIDE_NODE = {
    "node.dev": {"node.cli"},
    "node.services": {"node.cli", "node.dev"},
}


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_packages_exist():
    for pkg in FORBIDDEN:
        assert (ROOT / pkg / "__init__.py").is_file(), pkg


@pytest.mark.parametrize("pkg", sorted(p for p, bad in FORBIDDEN.items() if bad))
def test_no_forbidden_imports(pkg):
    offenders = []
    for f in sorted((ROOT / pkg).rglob("*.py")):
        bad = imported_top_levels(f) & FORBIDDEN[pkg]
        if bad:
            offenders.append(f"{f.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "import direction violated:\n" + "\n".join(offenders)


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN_INSIDE_NODE))
def test_no_forbidden_imports_inside_node(pkg):
    folder = ROOT / pkg.replace(".", "/")
    assert (folder / "__init__.py").is_file(), pkg
    offenders = []
    for f in sorted(folder.rglob("*.py")):
        package = ".".join(f.relative_to(ROOT).parts[:-1])
        bad = sorted(m for m in imported_modules(f, package) for p in FORBIDDEN_INSIDE_NODE[pkg] if _under(m, p))
        if bad:
            offenders.append(f"{f.relative_to(ROOT)} imports {bad}")
    assert not offenders, "import direction violated:\n" + "\n".join(offenders)


def test_inside_node_checker_catches_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from node.cli.common import connect\nfrom node import dev\n")
    found = imported_modules(f, "node.services")
    assert any(_under(m, "node.cli") for m in found) and any(_under(m, "node.dev") for m in found)
    assert not _under("node.client", "node.cli") and not _under("node.cli_x", "node.cli")


def test_checker_catches_violation(tmp_path):
    # The check itself must be able to fail.
    f = tmp_path / "x.py"
    f.write_text("import node.config\nfrom inference.engine import Engine\n")
    assert imported_top_levels(f) == {"node", "inference"}


# -- module boundaries inside the packages ---------------------------------------------------------
# The chain watcher is generic; the node's sync package wires it to the projections, so neither
# imports the other (`chain` never importing `node` covers the watcher's side).
FORBIDDEN_MODULES = {
    "node/daemon/sync/projections.py": {"chain.watcher", "node.daemon.sync", "node.daemon.sync.store"},
    "node/daemon/sync/store.py": {"node.daemon.sync", "node.daemon.sync.projections"},
}


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module `path` (a module of `package`) imports, dotted; `from a import b` counts as `a` and `a.b`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            names.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (n.level - 1)] if n.level else []
            module = ".".join([*base, *(n.module.split(".") if n.module else [])])
            names.add(module)
            names.update(f"{module}.{a.name}" for a in n.names)
    return names


@pytest.mark.parametrize("module", sorted(FORBIDDEN_MODULES))
def test_module_boundaries(module):
    package = ".".join(Path(module).parts[:-1])
    bad = imported_modules(ROOT / module, package) & FORBIDDEN_MODULES[module]
    assert not bad, f"{module} imports {sorted(bad)}"


def test_module_checker_catches_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from . import store\nfrom ..payments import gate\nfrom chain.watcher import ChainWatcher\n")
    assert {"node.daemon.sync.store", "node.daemon.payments.gate", "chain.watcher"} <= imported_modules(
        f, "node.daemon.sync")
