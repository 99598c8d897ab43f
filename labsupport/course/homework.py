"""Learner editions: the committed notebooks hold reference solutions; learners get placeholders.

A solution is a block of lines in a code cell between two marker lines::

    # BEGIN SOLUTION
    grid = (4, 2)
    tokens = 256 * (4 * 2 + 1)
    # END SOLUTION

In the learner edition the block becomes what it assigns (a name, or an attribute such as ``cfg.lr``, so the
object stays), set to ``None``, under a "YOUR CODE HERE" comment; its IPython magic lines stay, outputs go, so the checkpoint that checks them fails with its hint until the
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

BEGIN = re.compile(r"^(\s*)#+\s*BEGIN[ _-]?SOLUTION\s*#*\s*$", re.IGNORECASE)  # "# begin solution" too
END = re.compile(r"^\s*#+\s*END[ _-]?SOLUTION\s*#*\s*$", re.IGNORECASE)
LOOKS_LIKE_MARKER = re.compile(r"^\s*#.*\b(BEGIN|END|START|STOP)\b.*\bSOLUTIONS?\b", re.IGNORECASE)
MAGIC = re.compile(r"^\s*[%!]")  # an IPython line magic or shell escape: not Python, kept as it is
MAGIC_ASSIGN = re.compile(r"^(\s*)([\w.\[\]'\", ]+?)\s*=\s*[%!]")  # files = !ls  /  t = %timeit -o f()


class SolutionMarkerError(ValueError):
    """A BEGIN SOLUTION without its END (or the other way round), or a marker spelled in a way the tool does not know."""


def _wrapped_statement(line: str) -> str | None:
    """The Python statement a line magic wraps (`%time grid = f()` -> `grid = f()`) when it assigns, else None."""
    m = re.match(r"^(\s*)%\w+(?:\s+-\S+)*\s+(.+)$", line)
    if not m:
        return None
    try:
        node = ast.parse(m.group(2)).body
    except SyntaxError:
        return None
    return m.group(1) + m.group(2) if node and isinstance(node[0], (ast.Assign, ast.AnnAssign)) else None


def _kept_magic(line: str) -> bool:
    """Whether LINE is a magic or shell escape kept in the learner edition (a command, not an answer)."""
    return bool(MAGIC.match(line)) and not MAGIC_ASSIGN.match(line) and _wrapped_statement(line) is None


def _python_only(code: str) -> str:
    """CODE with IPython's magic lines made parseable: `x = !cmd` becomes `x = None`, `%time x = f()` its statement,
    any other magic `pass`."""
    lines = []
    for line in code.splitlines():
        m = MAGIC_ASSIGN.match(line)
        if m:
            lines.append(f"{m.group(1)}{m.group(2)} = None")
        elif _wrapped_statement(line):
            lines.append(_wrapped_statement(line))
        elif MAGIC.match(line):
            lines.append(line[: len(line) - len(line.lstrip())] + "pass")
        else:
            lines.append(line)
    return "\n".join(lines)


def _leaves(target: ast.AST) -> list[str]:
    """The placeholders' left sides for one assignment target: a name, or the attribute/item itself (cfg.lr, d['k'])."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return [leaf for elt in target.elts for leaf in _leaves(elt)]
    if isinstance(target, ast.Starred):
        return _leaves(target.value)
    return [ast.unparse(target)]


def assigned_names(code: str) -> list[str]:
    """What CODE assigns at the top level, in order: names, and attributes or items as written (`cfg.lr`, not `cfg`);
    an augmented assignment (x += 1) changes an existing object and is left out. IPython magics are allowed."""
    names: list[str] = []
    tree = ast.parse(textwrap.dedent(_python_only(code)))
    for node in tree.body:
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            targets = [ast.Name(id=node.name)]
        for target in targets:
            for leaf in _leaves(target):
                if leaf not in names:
                    names.append(leaf)
    return names


def strip_solutions(source: str, where: str = "cell") -> tuple[str, int]:
    """Replace every solution block in SOURCE by placeholders; return the new source and the number of blocks.

    Markers are matched case-insensitively (# BEGIN SOLUTION, # begin solution, ## Begin_Solution ##); a comment that
    looks like a marker but is none (# START SOLUTION) is refused, so no answer leaks. Magic lines in a block stay."""
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
            try:
                names = assigned_names("\n".join(block))
            except SyntaxError as exc:
                raise SolutionMarkerError(f"{where}, line {lineno - len(block) + (exc.lineno or 1) - 1}: the solution "
                                          f"is not valid Python ({exc.msg}): fix it before making an edition") from None
            out.append(f"{indent}# YOUR CODE HERE: replace the None below with your answer")
            out.extend(line for line in block if _kept_magic(line))
            out.extend(f"{indent}{name} = None" for name in names)
            if not names:
                out.append(f"{indent}pass")
            block, count = None, count + 1
            continue
        if LOOKS_LIKE_MARKER.match(line):
            raise SolutionMarkerError(f"{where}, line {lineno}: {line.strip()!r} looks like a solution marker but is not "
                                      "one: write '# BEGIN SOLUTION' and '# END SOLUTION' (any case)")
        (out if block is None else block).append(line)
    if block is not None:
        raise SolutionMarkerError(f"{where}: BEGIN SOLUTION is never closed by an END SOLUTION line")
    return "\n".join(out), count


def learner_edition(notebook: str | Path, out_dir: str | Path) -> Path:
    """Write the learner edition of NOTEBOOK into OUT_DIR (the original is left untouched); return its path."""
    notebook = Path(notebook)
    out = Path(out_dir) / notebook.name
    reference = (repo_root() / "notebooks").resolve()
    if out.resolve().parent == reference or out.resolve() == notebook.resolve():
        raise ValueError(f"refusing to write the learner edition into {out.parent}: it would replace the reference "
                         f"notebook {notebook.name} and its solutions; pass --out another folder (default artifacts/learner)")
    nb = nbformat.read(notebook, as_version=4)
    blocks = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.source, n = strip_solutions(cell.source, where=f"{notebook.name}, cell {index}")
            blocks += n
            cell.outputs, cell.execution_count = [], None  # an executed reference would show the solutions' results
            cell.metadata.pop("execution", None)
            cell.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    nb.metadata["labsupport"] = {"edition": "learner", "solutions_removed": blocks}
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
