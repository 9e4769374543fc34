"""Every module of the project imports on its own, first, in a clean interpreter state: an import
cycle that only bites when a module is imported before the ones that usually load it (as a CLI
command, a script or a test imports it) fails here instead of in production. One subprocess; the
project's modules are forgotten between imports (third-party ones stay loaded, so it is quick)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("chain", "inference", "node")

_SCRIPT = r"""
import importlib, pkgutil, sys, traceback
packages = sys.argv[1:]
names = []
for pkg in packages:
    mod = importlib.import_module(pkg)
    names.append(pkg)
    names += [m.name for m in pkgutil.walk_packages(mod.__path__, pkg + ".")]
failed = []
for name in names:
    for loaded in [k for k in sys.modules if k.split(".")[0] in packages]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=1).strip().splitlines()[-1])
print(len(names))
for f in failed:
    print("FAILED " + f)
"""


def test_every_module_imports_alone():
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *PACKAGES], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    ).stdout.splitlines()
    assert int(out[0]) > 100  # the walk found the project's modules
    assert [line for line in out[1:] if line.startswith("FAILED")] == []
