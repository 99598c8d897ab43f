"""The shape of labsupport: floors that follow the course map, no import circles, modules a reader can take in.

import-linter's contracts live in pyproject.toml; labsupport/README.md is the map a newcomer reads.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "labsupport"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "remote_code" not in p.parts)
MAX_LINES = 600


def lint_imports() -> subprocess.CompletedProcess:
    """import-linter's own CLI on this checkout, from the environment running the tests."""
    script = Path(sys.executable).with_name("lint-imports")
    if not script.exists():
        pytest.skip("import-linter is not installed in this environment (make env installs it)")
    return subprocess.run([str(script), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_linter_keeps_every_contract():
    run = lint_imports()
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout and re.search(r"Contracts: [1-9]\d* kept", run.stdout), run.stdout[-2000:]


def test_import_linter_notices_a_floor_climbed(tmp_path):
    """The layers contract is live: a core module that imports the serve floor breaks it."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "labsupport", copy / "labsupport", ignore=shutil.ignore_patterns("data", "__pycache__"))
    shutil.copytree(ROOT / "benchmarks", copy / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    bad = copy / "labsupport" / "core" / "paths.py"
    bad.write_text(bad.read_text() + "\nfrom labsupport.serve import deploy  # noqa: E402\n")
    script = Path(sys.executable).with_name("lint-imports")
    if not script.exists():
        pytest.skip("import-linter is not installed in this environment (make env installs it)")
    run = subprocess.run([str(script), "--no-cache"], cwd=copy, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert run.returncode != 0 and "labsupport.core.paths -> labsupport.serve" in run.stdout, run.stdout[-3000:]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_is_short_enough_to_read(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines: split it by what it does (labsupport/README.md)"


def test_readme_maps_every_module():
    readme = (PACKAGE / "README.md").read_text(encoding="utf-8")
    missing = [str(p.relative_to(PACKAGE)) for p in MODULES
               if p.name not in ("__init__.py", "__main__.py") and f"`{p.relative_to(PACKAGE)}`" not in readme]
    assert not missing, f"labsupport/README.md has no line for {missing}"


def function_level_sibling_imports(path: Path) -> list[tuple[int, str]]:
    """(line, source line) of every `from labsupport… import` inside a function of PATH."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found = []
    for fn in ast.walk(ast.parse(text)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("labsupport"):
                    found.append((node.end_lineno, lines[node.end_lineno - 1]))
    return sorted(set(found))


def test_imports_inside_functions_say_why():
    """A sibling import inside a function is for an environment that lacks a package; the line says which."""
    unexplained = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in MODULES
                   for n, line in function_level_sibling_imports(p) if "#" not in line]
    assert not unexplained, "imports inside functions without a reason:\n" + "\n".join(unexplained)
