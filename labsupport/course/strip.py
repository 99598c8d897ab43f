"""Remove outputs and execution counts from notebooks before they are committed (standard library only).

    python3 -m labsupport.course.strip notebooks/*.ipynb
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from labsupport.core.checkpoints import write_text_atomic


def strip_notebook(path: str | Path) -> bool:
    """Clear outputs, execution counts and run metadata of PATH in place; return True when it changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.get("metadata", {}).pop(key, None)
    for key in ("papermill", "widgets"):
        nb.get("metadata", {}).pop(key, None)
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new == text:
        return False
    write_text_atomic(path, new)
    return True


def main(argv: list[str] | None = None) -> int:
    for name in argv if argv is not None else sys.argv[1:]:
        print(f"{'stripped' if strip_notebook(name) else 'clean   '} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
