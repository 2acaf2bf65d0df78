"""The layer contract (pyproject's ``[tool.importlinter]``) holds, and it can fail: the same check on a copy
of the package with one upward import added (data → serving) is broken. Also: no function is longer
than 80 lines."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, src: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_layer_contract_holds_and_an_upward_import_breaks_it(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "src" / "raygbm", tmp_path / "src" / "raygbm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    kept = _lint(tmp_path, tmp_path / "src")
    assert kept.returncode == 0, kept.stdout[-2000:]
    schema = tmp_path / "src" / "raygbm" / "data" / "schema.py"
    schema.write_text(schema.read_text() + "\n\ndef _upward():\n    from raygbm.serving import request  # noqa\n")
    broken = _lint(tmp_path, tmp_path / "src")
    assert broken.returncode != 0
    assert "raygbm.data.schema -> raygbm.serving.request" in broken.stdout


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in (ROOT / "src" / "raygbm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long, long


def test_no_import_cycle_between_raygbm_modules():
    import grimp

    graph = grimp.build_graph("raygbm", cache_dir=None)
    cycles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.add(" -> ".join((module, *back)))
    assert not cycles, sorted(cycles)
