"""Homework checkpoints: named checks with a hint, shown as pass/fail lines and recorded for the report card.

In a notebook::

    book = Checkpoints("01_architecture", ARTIFACTS)
    book.check("grid of a 1920x1080 photo", my_grid == (4, 2), hint="closest aspect ratio to 16:9 with i*j <= 12")
    book.skip("served by LMDeploy", reason="no CUDA GPU on this machine")
    book.finish()   # prints the summary; raises CheckpointsFailed when any check failed

Every check is written to ARTIFACTS/checkpoints/<notebook>.json at once (atomically), so a
crash in a later cell still leaves the earlier results for the report.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

PASS, FAIL, SKIP = "pass", "fail", "skipped"
MARK = {PASS: "✅ PASS", FAIL: "❌ FAIL", SKIP: "⏭️  SKIP"}


class CheckpointsFailed(AssertionError):
    """Raised by Checkpoints.finish() when at least one checkpoint failed."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    """Write DATA to PATH through a temporary file in the same folder, so readers never see half a file.

    The result gets the permissions an ordinary open() would give (0o666 minus the umask; mkstemp's 0600 is
    for the temporary file only), or MODE. A failed write removes its temporary file and leaves PATH as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, (0o666 & ~_umask()) if mode is None else mode)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, disk_full(path.parent)) from None
        raise
    return path


def disk_full(folder: str | os.PathLike) -> str:
    """What to say when FOLDER's disk is full: the folder, the space left, and how to free some."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = 0
    return (f"no space left on the disk that holds {folder} ({free / 2**20:.0f} MiB free): free some (`df -h {folder}`; "
            "old runs in artifacts/xtuner/work_dirs and artifacts/models can go, e.g. `make clean`), or set ARTIFACTS "
            "to a folder on a larger disk, then run the cell again")


def write_text_atomic(path: str | os.PathLike, text: str, errors: str = "strict", mode: int | None = None) -> Path:
    """Write TEXT as UTF-8 to PATH atomically (see write_bytes_atomic); ERRORS as in str.encode."""
    return write_bytes_atomic(path, text.encode("utf-8", errors=errors), mode=mode)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write DATA as pretty JSON to PATH through a temporary file, so readers never see half a file."""
    # serialised first: an object json cannot encode fails before any file is touched
    write_text_atomic(path, json.dumps(data, indent=1, ensure_ascii=False, default=str))


_REPO = Path(__file__).resolve().parents[2]  # labsupport/core/checkpoints.py -> the repository


def relative_paths(text: str) -> str:
    """TEXT with absolute paths inside the repository made repo-relative and the home folder written ~ (hints travel)."""
    text = str(text)
    for root, short in ((str(_REPO) + os.sep, ""), (str(_REPO), "."), (str(Path.home()) + os.sep, "~" + os.sep)):
        if len(root) > 2:
            text = text.replace(root, short)
    return text


def checkpoints_file(notebook: str, artifacts: str | os.PathLike) -> Path:
    """Where the results of NOTEBOOK's checkpoints are kept."""
    return Path(artifacts) / "checkpoints" / f"{notebook}.json"


class Checkpoints:
    """The checkpoints of one notebook run."""

    def __init__(self, notebook: str, artifacts: str | os.PathLike, quiet: bool = False):
        self.notebook = notebook
        self.path = checkpoints_file(notebook, artifacts)
        self.quiet = quiet
        self.results: list[dict] = []
        self.started = time.time()
        self._save(finished=False)

    def check(self, name: str, passed: bool | Callable[[], bool], hint: str, detail: str = "") -> bool:
        """Record checkpoint NAME; PASSED is a bool or a function returning one (an exception counts as a failure).

        Pass a function (lambda: tuple(ex1_grid) == (4, 2)) when the learner's answer could be of the wrong type:
        then the wrong type is a failed check with its hint, not a TypeError that stops the cell."""
        try:
            passed = bool(passed() if callable(passed) else passed)
        except Exception as exc:  # the learner's answer broke the check (a wrong type, an array): a failed checkpoint
            detail = f"{type(exc).__name__}: {exc} (is the answer of the type the exercise asks for?)"
            passed = False
        status = PASS if passed else FAIL
        return self._record(name, status, hint=hint if status == FAIL else "", detail=detail)

    def skip(self, name: str, reason: str) -> bool:
        """Record checkpoint NAME as skipped (e.g. GPU-only on a CPU machine), with the reason printed."""
        return self._record(name, SKIP, detail=reason)

    def _record(self, name: str, status: str, hint: str = "", detail: str = "") -> bool:
        hint, detail = relative_paths(hint), relative_paths(detail)
        self.results = [r for r in self.results if r["name"] != name]  # re-running a cell replaces its result
        self.results.append({"name": name, "status": status, "hint": hint, "detail": detail})
        self._save(finished=False)
        if not self.quiet:
            line = f"{MARK[status]}  {name}"
            if status == FAIL:
                line += f"\n      hint: {hint}" + (f"\n      ({detail})" if detail else "")
            elif status == SKIP:
                line += f" — {detail}"
            print(line)
        return status == PASS

    @property
    def failed(self) -> list[dict]:
        """The checkpoints that failed."""
        return [r for r in self.results if r["status"] == FAIL]

    def summary(self) -> str:
        """One line per checkpoint and a total, as text."""
        counts = {s: sum(r["status"] == s for r in self.results) for s in (PASS, FAIL, SKIP)}
        lines = [f"{MARK[r['status']]}  {r['name']}" for r in self.results]
        lines.append(f"{self.notebook}: {counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped")
        return "\n".join(lines)

    def finish(self) -> None:
        """Print the summary, save the results, and raise CheckpointsFailed if any checkpoint failed."""
        self._save(finished=True)
        print(self.summary())
        if self.failed:
            names = "; ".join(f"{r['name']} (hint: {r['hint']})" for r in self.failed)
            raise CheckpointsFailed(f"{len(self.failed)} checkpoint(s) failed in {self.notebook}: {names}")

    def _save(self, finished: bool) -> None:
        write_json_atomic(self.path, {
            "notebook": self.notebook,
            "finished": finished,
            "started": self.started,  # the report card takes only the results of the run it started
            "seconds": round(time.time() - self.started, 2),
            "checkpoints": self.results,
        })


def load_results(notebook: str, artifacts: str | os.PathLike) -> dict | None:
    """The saved checkpoint results of NOTEBOOK, or None when it has not run."""
    try:
        return json.loads(checkpoints_file(notebook, artifacts).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
