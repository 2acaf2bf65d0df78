"""Every third-party package raygbm's code imports is declared in pyproject.toml, and every module of
src/raygbm imports in a fresh interpreter.

The imports are read from the source (module level and inside functions, where most heavy imports sit), so
an import that only runs on some path counts too; each top-level name maps to its distribution through
``importlib.metadata.packages_distributions()``."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "raygbm"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_canonical(re.match(r"[A-Za-z0-9._-]+", d).group()) for d in project["dependencies"]}


def _modules() -> list[str]:
    return sorted(".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
                  for p in SRC.rglob("*.py"))


def _imported_top_levels(root: Path = SRC) -> dict[str, set[str]]:
    """Top-level names of absolute imports → the files importing them."""
    found: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.name)
    return found


def _undeclared(found: dict[str, set[str]]) -> list[str]:
    declared = _declared()
    dists = packages_distributions()
    problems = []
    for top, files in sorted(found.items()):
        if top in sys.stdlib_module_names or top in ("raygbm", "__future__"):
            continue
        owners = {_canonical(d) for d in dists.get(top, [])}
        if not owners:
            problems.append(f"{top} (imported by {', '.join(sorted(files))}) is not installed")
        elif not owners & declared:
            problems.append(f"{top} (distribution {', '.join(sorted(owners))}; imported by {', '.join(sorted(files))})"
                            " is not declared in pyproject.toml")
    return problems


def test_every_imported_third_party_package_is_declared():
    found = _imported_top_levels()
    assert {"ray", "lightgbm", "mlflow", "yaml", "sklearn"} <= set(found)
    problems = _undeclared(found)
    assert not problems, "\n".join(problems)


def test_the_check_finds_an_import_pulled_in_only_by_another_package(tmp_path):
    """grpc is installed (Ray needs it) but not declared: an import of it inside a function is caught."""
    (tmp_path / "m.py").write_text("import os\n\ndef f():\n    from grpc import aio\n    import lightgbm\n")
    (problem,) = _undeclared(_imported_top_levels(tmp_path))
    assert problem.startswith("grpc (distribution grpcio; imported by m.py) is not declared")


def test_every_module_imports_in_a_fresh_interpreter():
    script = ("import importlib, sys\n"
              "failed = []\n"
              "for m in sys.argv[1:]:\n"
              "    try:\n"
              "        importlib.import_module(m)\n"
              "    except Exception as exc:\n"
              "        failed.append(f'{m}: {exc!r}')\n"
              "print('\\n'.join(failed))\n"
              "sys.exit(1 if failed else 0)\n")
    modules = _modules()
    assert "raygbm.registry.mlflow_model" in modules and "raygbm.cli" in modules
    r = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
