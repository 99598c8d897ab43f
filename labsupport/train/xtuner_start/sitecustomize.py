"""`xtuner MODE ...` without the imports its entry point makes only to find a tool's file name.

XTuner's entry point (`xtuner/entry_point.py`) finds the script of a mode with `from xtuner.tools import chat;
return chat.__file__`, then starts that file in a new `python` process. The import executes the whole tool module
(torch, transformers, peft, DeepSpeed, datasets: 3-6 s of CPU) in a process that reads nothing but `__file__`; the new
process imports it all again to do the work. Python runs this file at start-up when its folder is on PYTHONPATH (the
`site` module's `sitecustomize` hook). In the `xtuner` entry process only, it gives the tool modules their file name
without running their code; any other attribute runs the real module first, so nothing can come out differently. The
same holds for mmengine's package __init__ (which imports torch): the entry process reads only two of its light
submodules, so the __init__ waits until something else is read. The process that does the work
(`python .../tools/chat.py ...`) is untouched: same command, same output, a few seconds less.

Standard library only: it runs in every Python process started with this folder on PYTHONPATH.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

TOOL_PACKAGE = "xtuner.tools."
# The entry process needs two light mmengine modules (`mmengine.utils.digit_version`, `mmengine.logging.print_log`),
# but mmengine's own __init__ imports its registry, and with it torch (1-2 s). The package gets its __path__ at once,
# so those submodules import for real and print as always; its __init__ runs only if anything else of it is read.
DEFERRED_PACKAGE = "mmengine"


class _FileOnlyModule(types.ModuleType):
    """A tool module that runs its code the first time anything but its spec attributes is read."""

    def __getattr__(self, name: str):
        spec = self.__dict__["__spec__"]
        self.__class__ = types.ModuleType           # from now on an ordinary module
        spec.loader.real.exec_module(self)           # what a plain import would have done
        return getattr(self, name)


class _FileOnlyLoader(importlib.abc.Loader):
    """Wraps the real loader: the module gets `__file__`, `__spec__`, `__name__`, and code only on demand."""

    def __init__(self, real: importlib.abc.Loader):
        self.real = real

    def create_module(self, spec):
        return None                                  # the default module; importlib sets __file__ from the spec

    def exec_module(self, module: types.ModuleType) -> None:
        module.__class__ = _FileOnlyModule


class _ToolFinder(importlib.abc.MetaPathFinder):
    """Finds `xtuner.tools.*` scripts (not packages) and the `mmengine` package as usual and hands them the file-only loader."""

    def find_spec(self, name, path, target=None):
        if not (name.startswith(TOOL_PACKAGE) or name == DEFERRED_PACKAGE):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        if spec.submodule_search_locations is not None and name != DEFERRED_PACKAGE:
            return None
        spec.loader = _FileOnlyLoader(spec.loader)
        return spec


def _is_xtuner_entry() -> bool:
    """Whether this process is XTuner's `xtuner` console script (not the tool process it starts)."""
    argv0 = sys.argv[0] if getattr(sys, "argv", None) else ""
    return os.path.basename(argv0) in ("xtuner", "xtuner.exe") and os.environ.get("XTUNER_FULL_IMPORTS") != "1"


def _run_shadowed_sitecustomize() -> None:
    """Run the `sitecustomize` this file hides (Debian's Python keeps one in its standard library), as Python would have."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        folder = os.path.abspath(entry or os.curdir)
        candidate = os.path.join(folder, "sitecustomize.py")
        if folder != here and os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", candidate)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            return


if _is_xtuner_entry():
    sys.meta_path.insert(0, _ToolFinder())
_run_shadowed_sitecustomize()
