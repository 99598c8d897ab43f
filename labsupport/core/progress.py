"""Progress that reads well wherever it runs: a live bar for a person, one summary line in a saved notebook.

A tqdm bar in a notebook run headless (papermill, `make course`) is saved as it was first drawn, "0%|",
because the widget's later states live only in the browser; a text bar leaves carriage returns and, if the
loop stops early, a bar frozen below 100 %. So `bar()` picks:
- a Jupyter front end is attached (JupyterLab, Notebook): tqdm's notebook widget, live;
- a kernel with no front end (papermill): no bar, one line "DESC: N items in S s" when the loop ends;
- a terminal: tqdm's text bar on stderr.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator


def where() -> str:
    """'frontend' (a kernel with a live Jupyter front end), 'headless' (a kernel without one) or 'terminal'."""
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return "terminal"
    return "frontend" if os.environ.get("JPY_SESSION_NAME") else "headless"


def _summary(items: Iterable, desc: str, unit: str) -> Iterator:
    """Yield from ITEMS, then print how many there were and how long they took."""
    start, n = time.perf_counter(), 0
    for n, item in enumerate(items, 1):
        yield item
    print(f"{desc}: {n} {unit}{'s' if n != 1 else ''} in {time.perf_counter() - start:.1f} s")


def bar(items: Iterable, desc: str, enable: bool = True, total: int | None = None, unit: str = "item") -> Iterable:
    """ITEMS wrapped in the progress display that suits where this runs (see the module's docstring)."""
    if not enable:
        return items
    place = where()
    if place == "headless":
        return _summary(items, desc, unit)
    if place == "frontend":
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(items, desc=desc, total=total, unit=unit, mininterval=0.5)
