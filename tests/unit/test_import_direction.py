"""docs/ARCHITECTURE.md: `chain` and `inference` never import each other or `node`; inside `node`,
the daemon's parts never import the API, the CLI, the dev tools or the payer client (only the
composition root builds the API app), the payer client never imports the node's side, and the API
never imports the CLI or the dev tools."""

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


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            names.update(a.name.split(".")[0] for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            names.add(n.module.split(".")[0])
    return names


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


def test_checker_catches_violation(tmp_path):
    # The check itself must be able to fail.
    f = tmp_path / "x.py"
    f.write_text("import node.config\nfrom inference.engine import Engine\n")
    assert imported_top_levels(f) == {"node", "inference"}


# Inside `node`: package (or module) -> the `node` packages it must not import. Checked on every
# import, wherever it sits (lazy imports inside functions too).
NODE_FORBIDDEN = {
    "node.daemon": {"node.api", "node.cli", "node.dev", "node.client"},
    "node.client": {"node.daemon", "node.api", "node.cli"},
    "node.api": {"node.cli", "node.dev"},
}
# the composition root wires the API app from the daemon's parts
NODE_ALLOWED = {"node/daemon/root.py": {"node.api"}}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            names.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            names.add(n.module)
            names.update(f"{n.module}.{a.name}" for a in n.names)  # `from node import api`
    return names


def forbidden_node_imports(path: Path, pkg: str) -> set[str]:
    allowed = NODE_ALLOWED.get(path.relative_to(ROOT).as_posix(), set())
    bad = set()
    for mod in imported_modules(path):
        for banned in NODE_FORBIDDEN[pkg] - allowed:
            if mod == banned or mod.startswith(banned + "."):
                bad.add(banned)
    return bad


@pytest.mark.parametrize("pkg", sorted(NODE_FORBIDDEN))
def test_node_parts_import_in_one_direction(pkg):
    folder = ROOT / pkg.replace(".", "/")
    assert folder.is_dir(), pkg
    offenders = []
    for f in sorted(folder.rglob("*.py")):
        bad = forbidden_node_imports(f, pkg)
        if bad:
            offenders.append(f"{f.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "import direction inside node violated:\n" + "\n".join(offenders)


def test_node_checker_catches_violation(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    part = tmp_path / "node" / "daemon" / "x.py"
    part.parent.mkdir(parents=True)
    part.write_text("from node.api.errors import ApiError\nfrom node import cli\nimport node.wire\n")
    assert forbidden_node_imports(part, "node.daemon") == {"node.api", "node.cli"}
    root = tmp_path / "node" / "daemon" / "root.py"
    root.write_text("from node.api.app import create_http_app\nfrom node.dev import demo\n")
    assert forbidden_node_imports(root, "node.daemon") == {"node.dev"}
