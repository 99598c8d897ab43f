"""How much of a notebook is the tools' own interface and how much is labsupport: the share of labsupport calls.

    python -m labsupport.course.toolshare                     # every committed notebook under notebooks/
    python -m labsupport.course.toolshare notebooks/04_*.ipynb -v

The course teaches XTuner, LMDeploy, transformers, ms-swift, git-lfs and the Hub through their own commands and APIs;
labsupport is plumbing. The rule (DESIGN.md): over the code cells of a committed notebook, count

* a **labsupport** call: its callee's root name was imported from labsupport (``xt.launch(...)``, ``hub.git_push(...)``,
  ``xtuner_tool("train")``), or is a name bound to what such a call returned (``goal.describe()``);
* a **tool** call: the root name was imported from a tool package (TOOLS: ``Config.fromfile``, ``HfApi().create_repo``,
  ``AutoModel.from_pretrained``), or is a name bound to what a tool call returned (``api.upload_folder``);
* a **shell** command: each ``!cmd`` line (``!xtuner train ...``, ``!git lfs track ...``), and each ``subprocess``
  or ``os.system`` call (they run a program); Python inside a ``!`` line's ``{...}`` is counted as well;
* nothing for the rest: builtins (print, len, str, ...), display and Markdown, the standard library, plotting, pandas,
  functions the notebook defines itself (their bodies are counted where they are written), the checkpoint book
  (``checkpoints.Checkpoints(...)``, ``book.*``) and ``%`` magics.

share = labsupport / (labsupport + tool + shell); the aim is at most 0.5 in notebooks 04-10.
"""
from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

# The packages whose own interface the course teaches (what a learner holds at work).
TOOLS = {"xtuner", "lmdeploy", "transformers", "huggingface_hub", "mmengine", "peft", "swift", "torch", "torchvision",
         "modelscope", "safetensors", "openai", "gradio", "evalscope", "deepspeed", "bitsandbytes", "accelerate"}
BOOKKEEPING = {"Checkpoints"}  # labsupport.core.checkpoints' book: the course's grading, not a lesson step
SHELL_CALLS = {("subprocess", "run"), ("subprocess", "check_output"), ("subprocess", "check_call"),
               ("subprocess", "call"), ("subprocess", "Popen"), ("os", "system")}
_SHELL_LINE = re.compile(r"^(\s*)(?:[A-Za-z_][\w, ]*=\s*)?!(.*)$")   # `!cmd` and `out = !cmd`
_MAGIC_LINE = re.compile(r"^(\s*)%")
_BRACES = re.compile(r"\{([^{}]+)\}")
# Methods of plain data (paths, strings, containers): called on a value a library returned, they are not its interface
DATA_METHODS = {m for t in (Path, str, bytes, dict, list, set, tuple, int, float) for m in dir(t) if not m.startswith("_")}


@dataclass
class Call:
    """One counted call: the cell it is in, its kind (labsupport, tool, shell) and its source text."""

    cell: int
    kind: str
    text: str


@dataclass
class ToolShare:
    """The counted calls of one notebook and labsupport's share of them."""

    notebook: str
    calls: list[Call] = field(default_factory=list)

    def count(self, kind: str) -> int:
        """How many calls of KIND (labsupport, tool or shell)."""
        return sum(c.kind == kind for c in self.calls)

    @property
    def share(self) -> float:
        """labsupport calls / all counted calls (0.0 for a notebook with none)."""
        total = len(self.calls)
        return self.count("labsupport") / total if total else 0.0

    def line(self) -> str:
        """One line: the notebook, the counts and the share."""
        return (f"{self.notebook}: labsupport {self.count('labsupport')}, tool {self.count('tool')}, "
                f"shell {self.count('shell')} -> labsupport share {self.share:.0%}")


def _root(node: ast.AST) -> ast.AST:
    """The innermost object of a callee chain: `a.b(c).d` -> Name a; `HfApi().x` -> Name HfApi; `x[0].y` -> Name x."""
    while True:
        if isinstance(node, ast.Attribute):
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Subscript):
            node = node.value
        else:
            return node


def _through_value(node: ast.AST) -> bool:
    """Whether a callee chain passes through an item or a call's result (`task["train"].read_text`,
    `hub.list_files(x).items`): a method of a value that was returned, not of the module or object named."""
    first = True
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        if isinstance(node, ast.Subscript) or (isinstance(node, ast.Call) and not first):
            return True
        first = False
        node = node.value if not isinstance(node, ast.Call) else node.func
    return False


def _bound_names(target: ast.AST) -> list[ast.Name]:
    """The names an assignment to TARGET binds: `a`, `a, (b, *c)`; not the object of `a.x = ...` or `a[0] = ...`."""
    if isinstance(target, ast.Name):
        return [target]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for t in target.elts for n in _bound_names(t)]
    if isinstance(target, ast.Starred):
        return _bound_names(target.value)
    return []


def _is_book(node: ast.AST) -> bool:
    """Whether NODE is (a call of) the checkpoint book's constructor, `checkpoints.Checkpoints(...)`."""
    func = node.func if isinstance(node, ast.Call) else node
    return (isinstance(func, ast.Attribute) and func.attr in BOOKKEEPING) or \
        (isinstance(func, ast.Name) and func.id in BOOKKEEPING)


class _Counter(ast.NodeVisitor):
    """Walks the cells in order, remembering where each name came from (an import, or what a call returned)."""

    def __init__(self) -> None:
        self.origin: dict[str, str] = {}   # name -> "labsupport" | "tool" | "stdlib" | "book" | "local"
        self.imported: set[str] = set()    # names an import bound (modules and imported names)
        self.calls: list[Call] = []
        self.cell = 0
        self.source = ""

    # --- where names come from
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            name = (alias.asname or alias.name).split(".")[0]
            self.origin[name] = self._package(alias.name)
            self.imported.add(name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        pkg = self._package(node.module or "")
        for alias in node.names:
            name = alias.asname or alias.name
            self.imported.add(name)
            self.origin[name] = "book" if pkg == "labsupport" and alias.name in BOOKKEEPING else pkg

    @staticmethod
    def _package(module: str) -> str:
        top = module.split(".")[0]
        return "labsupport" if top == "labsupport" else "tool" if top in TOOLS else "stdlib"

    def _shadowed(self, names: list[str], body: list[ast.AST]) -> None:
        """Visit BODY with NAMES (parameters, comprehension variables) as plain local values, then restore them."""
        saved = {n: self.origin.pop(n) for n in names if n in self.origin}
        for child in body:
            self.visit(child)
        for n in names:
            self.origin.pop(n, None)
        self.origin.update(saved)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.origin[node.name] = "local"
        for d in node.decorator_list + node.args.defaults + node.args.kw_defaults:
            if d is not None:
                self.visit(d)
        self._shadowed([a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)], node.body)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._shadowed([a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)], [node.body])

    def _comprehension(self, node: ast.AST, results: list[ast.AST]) -> None:
        names = [n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)]
        self.visit(node.generators[0].iter)  # evaluated outside the comprehension's scope
        rest = [x for g in node.generators for x in ([g.iter] if g is not node.generators[0] else []) + list(g.ifs)]
        self._shadowed(names, rest + results)

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node, [node.key, node.value])

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.origin[node.name] = "local"
        self.generic_visit(node)

    def _bind(self, targets: list[ast.AST], value: ast.AST) -> None:
        kind = self._kind_of_value(value)
        for target in targets:
            for name in _bound_names(target):
                if isinstance(name, ast.Name):
                    self.imported.discard(name.id)
                    if kind:
                        self.origin[name.id] = kind
                    else:
                        self.origin.pop(name.id, None)

    def _kind_of_value(self, value: ast.AST) -> str | None:
        """What a name bound to VALUE carries: a call's or an alias's origin (`h = hub`), else None (plain data)."""
        if isinstance(value, ast.Call) and _is_book(value):
            return "book"
        if isinstance(value, (ast.Call, ast.Name, ast.Attribute)):
            root = _root(value)
            if isinstance(root, ast.Name):
                kind = self.origin.get(root.id)
                if kind == "tool":
                    return kind  # a tool's object: its methods are the tool's interface too (api.upload_folder)
                if kind in ("labsupport", "book") and not _through_value(value):
                    return kind
        return None

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        self._bind(node.targets, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self._bind([node.target], node.value)

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        for name in ast.walk(node.target):  # the items of what was returned: plain data (paths, rows, names)
            if isinstance(name, ast.Name):
                self.origin.pop(name.id, None)
        for child in node.body + node.orelse:
            self.visit(child)

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self._bind([item.optional_vars], item.context_expr)
        for child in node.body:
            self.visit(child)

    # --- the calls
    def visit_Call(self, node: ast.Call) -> None:
        kind = self._classify(node)
        if kind:
            self.calls.append(Call(self.cell, kind, ast.get_source_segment(self.source, node) or ast.unparse(node)))
        self.generic_visit(node)

    def _classify(self, node: ast.Call) -> str | None:
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                and (func.value.id, func.attr) in SHELL_CALLS and self.origin.get(func.value.id) == "stdlib":
            return "shell"
        root = _root(func)
        if not isinstance(root, ast.Name) or _is_book(func):
            return None
        kind = self.origin.get(root.id)
        if kind in ("tool", "labsupport") and isinstance(func, ast.Attribute) and func.attr in DATA_METHODS \
                and not (isinstance(func.value, ast.Name) and self.origin.get(func.value.id) == kind
                         and _imported_module(func.value.id, self)):
            return None  # a path's .glob, a string's .split, a dict's .items: plain data, whoever returned it
        if kind == "tool":
            return "tool"
        if kind == "labsupport":
            # a labsupport module's function, or a method of an object one returned; a value fetched from inside such
            # an object (task["train"].read_text()) is plain data (a Path, a dict), not labsupport's interface
            return None if _through_value(func) else "labsupport"
        return None  # builtins, the standard library, local functions, the book, plain data


def _imported_module(name: str, counter: "_Counter") -> bool:
    """Whether NAME was bound by an import (a module or an imported name), not by what a call returned."""
    return name in counter.imported


def _cell_python(source: str) -> tuple[str, list[str]]:
    """SOURCE as plain Python (each `!` line replaced by `pass`, `%` magics dropped) and the shell lines it held."""
    lines, shell = [], []
    if source.lstrip().startswith("%%"):
        head = source.lstrip().splitlines()[0]
        return "", [head] if re.match(r"%%(bash|sh|script)\b", head) else []
    for line in source.splitlines():
        m = _SHELL_LINE.match(line)
        if m:
            shell.append(m.group(2))
            expressions = [e.strip() for e in _BRACES.findall(m.group(2))]
            # keep the Python of `{...}` so that its calls count too; `pass` keeps an indented block valid
            lines.append(m.group(1) + ("(" + ", ".join(expressions) + ",)" if expressions else "pass"))
        elif _MAGIC_LINE.match(line):
            lines.append(_MAGIC_LINE.match(line).group(1) + "pass")
        else:
            lines.append(line)
    return "\n".join(lines), shell


def code_cells(path: str | Path) -> list[tuple[int, str]]:
    """(cell index, source) of each code cell of the notebook at PATH."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    return [(i, "".join(c["source"]) if isinstance(c["source"], list) else c["source"])
            for i, c in enumerate(cells) if c["cell_type"] == "code"]


def tool_share(path: str | Path) -> ToolShare:
    """Count the labsupport calls, tool calls and shell commands of the notebook at PATH (rule: this module's docstring)."""
    path = Path(path)
    result = ToolShare(path.stem)
    counter = _Counter()
    for index, source in code_cells(path):
        python, shell = _cell_python(source)
        counter.cell, counter.source = index, python
        try:
            tree = ast.parse(python)
        except SyntaxError as exc:
            raise SyntaxError(f"{path.name} cell {index}: {exc.msg} (line {exc.lineno}); the counter reads the "
                              "committed notebook's code cells as Python with `!`/`%` lines") from None
        counter.visit(tree)
        result.calls.extend(Call(index, "shell", "!" + line.strip()) for line in shell)
    # the calls of a cell come in source order, its shell lines after them: sort by cell only
    result.calls = sorted(counter.calls + [c for c in result.calls if c.kind == "shell"], key=lambda c: c.cell)
    return result


def main(argv: list[str] | None = None) -> int:
    """Print each notebook's counts and share (default: notebooks/*.ipynb); -v lists every counted call."""
    args = argv if argv is not None else sys.argv[1:]
    root = Path(__file__).resolve().parents[2]
    paths = [Path(a) for a in args if not a.startswith("-")] or sorted((root / "notebooks").glob("*.ipynb"))
    for p in paths:
        share = tool_share(p)
        print(share.line())
        if "-v" in args:
            for c in share.calls:
                print(f"   c{c.cell:<3} {c.kind:10s} {c.text.splitlines()[0][:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
