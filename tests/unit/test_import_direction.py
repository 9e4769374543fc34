"""docs/ARCHITECTURE.md's import direction, enforced:
- `chain` and `inference` never import each other or `node`;
- inside `node`: the daemon's parts never import the API, the CLI, the dev tools or the payer client
  (only the composition root, `node/daemon/root.py`, builds the API app); the payer client never
  imports the node's side; the API never imports the CLI or the dev tools; the dev tools and the
  shared services never import the CLI; the services never import the dev tools;
- inside the chain sync, the projections and the chain watcher never import each other.
Every import counts, wherever it sits (lazy imports inside functions too)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "chain": {"inference", "node"},
    "inference": {"chain", "node"},
    "node": set(),
}
# Inside `node`: package -> the `node` packages it must not import.
NODE_FORBIDDEN = {
    "node.daemon": {"node.api", "node.cli", "node.dev", "node.client"},
    "node.client": {"node.daemon", "node.api", "node.cli"},
    "node.api": {"node.cli", "node.dev"},
    "node.dev": {"node.cli"},
    "node.services": {"node.cli", "node.dev"},
}
# the composition root wires the API app from the daemon's parts
NODE_ALLOWED = {"node/daemon/root.py": {"node.api"}}
# Single modules: the chain watcher is generic; the node's sync package wires it to the projections,
# so neither imports the other (`chain` never importing `node` covers the watcher's side).
FORBIDDEN_MODULES = {
    "node/daemon/sync/projections.py": {"chain.watcher", "node.daemon.sync", "node.daemon.sync.store"},
    "node/daemon/sync/store.py": {"node.daemon.sync", "node.daemon.sync.projections"},
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


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module `path` (a module of `package`) imports, dotted; `from a import b` counts as `a`
    and `a.b` (`from node import cli`); relative imports are resolved against `package`."""
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


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def forbidden_node_imports(path: Path, pkg: str) -> set[str]:
    rel = path.relative_to(ROOT)
    allowed = NODE_ALLOWED.get(rel.as_posix(), set())
    package = ".".join(rel.parts[:-1])
    return {banned for mod in imported_modules(path, package) for banned in NODE_FORBIDDEN[pkg] - allowed if _under(mod, banned)}


def test_packages_exist():
    for pkg in [*FORBIDDEN, *NODE_FORBIDDEN]:
        assert (ROOT / pkg.replace(".", "/") / "__init__.py").is_file(), pkg


@pytest.mark.parametrize("pkg", sorted(p for p, bad in FORBIDDEN.items() if bad))
def test_no_forbidden_imports(pkg):
    offenders = []
    for f in sorted((ROOT / pkg).rglob("*.py")):
        bad = imported_top_levels(f) & FORBIDDEN[pkg]
        if bad:
            offenders.append(f"{f.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "import direction violated:\n" + "\n".join(offenders)


@pytest.mark.parametrize("pkg", sorted(NODE_FORBIDDEN))
def test_node_parts_import_in_one_direction(pkg):
    offenders = []
    for f in sorted((ROOT / pkg.replace(".", "/")).rglob("*.py")):
        bad = forbidden_node_imports(f, pkg)
        if bad:
            offenders.append(f"{f.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "import direction inside node violated:\n" + "\n".join(offenders)


@pytest.mark.parametrize("module", sorted(FORBIDDEN_MODULES))
def test_module_boundaries(module):
    package = ".".join(Path(module).parts[:-1])
    bad = imported_modules(ROOT / module, package) & FORBIDDEN_MODULES[module]
    assert not bad, f"{module} imports {sorted(bad)}"


# -- the checks themselves must be able to fail ----------------------------------------------------
def test_checker_catches_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import node.config\nfrom inference.engine import Engine\n")
    assert imported_top_levels(f) == {"node", "inference"}


def test_node_checker_catches_violation(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    part = tmp_path / "node" / "daemon" / "x.py"
    part.parent.mkdir(parents=True)
    part.write_text("def f():\n    from node.api.errors import ApiError\nfrom node import cli\nimport node.wire\n")
    assert forbidden_node_imports(part, "node.daemon") == {"node.api", "node.cli"}
    root = tmp_path / "node" / "daemon" / "root.py"
    root.write_text("from node.api.app import create_http_app\nfrom node.dev import demo\n")
    assert forbidden_node_imports(root, "node.daemon") == {"node.dev"}
    svc = tmp_path / "node" / "services" / "x.py"
    svc.parent.mkdir(parents=True)
    svc.write_text("from ..cli.common import connect\n")
    assert forbidden_node_imports(svc, "node.services") == {"node.cli"}
    assert not _under("node.client", "node.cli") and not _under("node.cli_x", "node.cli")


def test_module_checker_catches_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from . import store\nfrom ..payments import gate\nfrom chain.watcher import ChainWatcher\n")
    assert {"node.daemon.sync.store", "node.daemon.payments.gate", "chain.watcher"} <= imported_modules(f, "node.daemon.sync")
