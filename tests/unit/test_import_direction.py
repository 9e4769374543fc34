"""docs/ARCHITECTURE.md: `chain` and `inference` never import each other or `node`."""

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
