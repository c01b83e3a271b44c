"""Imports flow one way: vae_attention ← search_spaces ← trainables ← study; analysis and benchmarks stand aside.

Read from the source (every ``import`` and ``from … import`` statement, function-local ones included), so a
lazy import that runs upward is caught as well as a module-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vae_attention", "search_spaces", "trainables", "study", "analysis", "benchmarks")
# What each package may import of the others (itself always).
ALLOWED = {
    "vae_attention": set(),
    "search_spaces": {"vae_attention"},
    "trainables": {"vae_attention", "search_spaces"},
    "study": {"vae_attention", "search_spaces", "trainables"},
    "analysis": set(),  # reads MLflow only (tests/analysis checks torch and Ray stay unloaded too)
    "benchmarks": {"vae_attention", "search_spaces", "trainables", "study", "analysis"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_rule_sees_an_upward_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from study.run import main\n    import trainables.common\n")
    assert imported_packages(source) == {"os", "study", "trainables"}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_runs_upward(package):
    offending = []
    for path in sorted((ROOT / package).rglob("*.py")):
        upward = (imported_packages(path) & set(PACKAGES)) - ALLOWED[package] - {package}
        offending += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(upward)]
    assert not offending, "\n".join(offending)
