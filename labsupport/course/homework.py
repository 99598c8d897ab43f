"""Learner editions: the committed notebooks hold reference solutions; learners get placeholders.

A solution is a block of lines in a code cell between two marker lines::

    # BEGIN SOLUTION
    grid = (4, 2)
    tokens = 256 * (4 * 2 + 1)
    # END SOLUTION

In the learner edition the block becomes the names it assigns, set to ``None``, under a
"YOUR CODE HERE" comment, so the checkpoint that checks them fails with its hint until the
learner fills them in::

    python -m labsupport.course.homework                 # every notebook -> artifacts/learner/
    python -m labsupport.course.homework notebooks/02_environment.ipynb --out DIR
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
import textwrap
from pathlib import Path

import nbformat

from labsupport.core.paths import artifacts_dir, repo_root
from labsupport.core.checkpoints import write_text_atomic

BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")


class SolutionMarkerError(ValueError):
    """A BEGIN SOLUTION without its END (or the other way round)."""


def assigned_names(code: str) -> list[str]:
    """Names assigned at the top level of CODE, in order of first assignment."""
    names: list[str] = []
    tree = ast.parse(textwrap.dedent(code))
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            targets = [ast.Name(id=node.name)]
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Name) and leaf.id not in names:
                    names.append(leaf.id)
    return names


def strip_solutions(source: str, where: str = "cell") -> tuple[str, int]:
    """Replace every solution block in SOURCE by placeholders; return the new source and the number of blocks."""
    out, block, indent, count = [], None, "", 0
    for lineno, line in enumerate(source.splitlines(), 1):
        begin = BEGIN.match(line)
        if begin:
            if block is not None:
                raise SolutionMarkerError(f"{where}, line {lineno}: BEGIN SOLUTION inside another solution block")
            block, indent = [], begin.group(1)
            continue
        if END.match(line):
            if block is None:
                raise SolutionMarkerError(f"{where}, line {lineno}: END SOLUTION without a BEGIN SOLUTION")
            names = assigned_names("\n".join(block))
            out.append(f"{indent}# YOUR CODE HERE: replace the None below with your answer")
            out.extend(f"{indent}{name} = None" for name in names)
            if not names:
                out.append(f"{indent}pass")
            block, count = None, count + 1
            continue
        (out if block is None else block).append(line)
    if block is not None:
        raise SolutionMarkerError(f"{where}: BEGIN SOLUTION is never closed by an END SOLUTION line")
    return "\n".join(out), count


def learner_edition(notebook: str | Path, out_dir: str | Path) -> Path:
    """Write the learner edition of NOTEBOOK into OUT_DIR (the original is left untouched); return its path."""
    notebook = Path(notebook)
    nb = nbformat.read(notebook, as_version=4)
    blocks = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.source, n = strip_solutions(cell.source, where=f"{notebook.name}, cell {index}")
            blocks += n
    nb.metadata["labsupport"] = {"edition": "learner", "solutions_removed": blocks}
    out = Path(out_dir) / notebook.name
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, nbformat.writes(nb))  # no half notebook, no temp file left on a failure
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write learner editions of the course notebooks.")
    parser.add_argument("notebooks", nargs="*", help="notebooks (default: every notebooks/NN_*.ipynb, NNb_*.ipynb)")
    parser.add_argument("--out", default=None, help="output folder (default: artifacts/learner)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else artifacts_dir() / "learner"
    paths = args.notebooks or sorted(str(p) for p in (repo_root() / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
    for path in paths:
        print(f"{path} -> {learner_edition(path, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
