"""Run the course headless with papermill and write the report card.

    python -m labsupport.course run                 # every notebook, in order, default parameters
    python -m labsupport.course run --only 01 02    # some of them
    python -m labsupport.course report              # print the report card from artifacts/

Executed copies go to ARTIFACTS/executed/, the machine-readable report to
ARTIFACTS/course-report.json and the readable one to ARTIFACTS/course-report.md and .html.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labsupport.core.checkpoints import (FAIL, PASS, SKIP, checkpoints_file, load_results, write_json_atomic,
                                         write_text_atomic)
from labsupport.core.credentials import TOKEN_PATTERN, credentials_in, is_token, redact, secret_name
from labsupport.core.paths import artifacts_dir, repo_root

# Jupyter's own matplotlib backend: a figure a cell shows becomes a PNG in the executed notebook. The
# runner's environment may say Agg (headless scripts and tests), which a kernel would inherit and then
# leave only "<Figure size ...>" text where the plot belongs.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
# Arguments for every kernel the runner starts: ipykernel 7 warns on each start that its local TCP sockets are not
# encrypted (a kernel on 127.0.0.1 that the runner owns), a line per notebook a learner can do nothing about.
# Only the kernel application's own log is raised to ERROR; warnings raised by a notebook's code still show.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]
# Environment for the kernels of a headless run. A progress bar drawn by a library in a headless kernel is saved as
# it was first drawn ("Loading weights: 0%|"): transformers and huggingface_hub skip their bars under this switch
# (labsupport's own loops print one summary line instead, see labsupport.core.progress). JupyterLab keeps its bars.
HEADLESS_ENV = {"MPLBACKEND": INLINE_BACKEND, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@dataclass
class NotebookResult:
    """How one notebook run went."""

    notebook: str
    title: str
    kernel: str
    status: str = "not run"
    seconds: float = 0.0
    error: str = ""
    failed_cell: int | None = None
    executed: str = ""
    checkpoints: list[dict] = field(default_factory=list)


def course_notebooks(folder: Path | None = None) -> list[Path]:
    """The course notebooks (NN_name.ipynb, and NNb_name.ipynb for a split chapter such as 03b), in order."""
    return sorted((folder or repo_root() / "notebooks").glob("[0-9][0-9]*_*.ipynb"))


def notebook_title(path: Path) -> str:
    """The first markdown heading of a notebook."""
    import nbformat

    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


def notebook_kernel(path: Path) -> str:
    """The kernel a notebook asks for in its metadata."""
    return json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("kernelspec", {}).get("name", "")


def known_kernels() -> set[str]:
    """Names of the Jupyter kernels this Jupyter can start."""
    from jupyter_client.kernelspec import KernelSpecManager

    return set(KernelSpecManager().find_kernel_specs())


def source_cell_index(executed: Path, index: int) -> int:
    """The index in the committed notebook of cell INDEX of its executed copy (papermill inserts a parameters cell)."""
    import nbformat

    cells = nbformat.read(executed, as_version=4).cells
    injected = sum("injected-parameters" in c.metadata.get("tags", []) for c in cells[:index])
    return index - injected


def is_secret(name: str, value: object) -> bool:
    """Whether a -p NAME VALUE is a secret as a whole: a name that says so (HF_TOKEN, API_KEY), or a token-shaped value."""
    return secret_name(name) or is_token(value) or bool(TOKEN_PATTERN.search(str(value)))


def hidden_values(parameters: dict) -> list[str]:
    """The credentials inside injected parameter values (a URL's password: https://oauth2:<token>@host), to be masked
    in everything written about the run."""
    return sorted({c for value in parameters.values() for c in credentials_in(value)}, key=len, reverse=True)


def split_parameters(path: Path, parameters: dict) -> tuple[dict, dict, list[str]]:
    """(what papermill may inject into PATH, secrets for the kernel's environment, names PATH does not take).

    papermill writes every parameter into the executed notebook and its metadata, so a secret never goes that way:
    it reaches the kernel as an environment variable (where labsupport.core.credentials.find_token reads HF_TOKEN)."""
    import papermill as pm

    declared = set(pm.inspect_notebook(str(path)))
    inject, secrets, unknown = {}, {}, []
    for name, value in parameters.items():
        if is_secret(name, value):
            secrets[name] = str(value)
        elif name in declared:
            inject[name] = value
        else:
            unknown.append(name)
    return inject, secrets, unknown


def redact_file(path: Path, secrets: list[str]) -> bool:
    """Mask SECRETS and Hugging Face-shaped tokens in the text file PATH (atomically); True when something was masked."""
    if not path.exists():
        return False
    text = path.read_text(encoding="utf-8")
    clean = redact(text, secrets)
    if clean == text:
        return False
    write_text_atomic(path, clean)
    return True


def run_notebook(path: Path, artifacts: Path, parameters: dict | None = None, out_dir: Path | None = None,
                 progress: bool = False) -> NotebookResult:
    """Execute one notebook with papermill; never raises for a failing notebook, the result says what failed.

    Only the parameters the notebook declares are injected; secrets (HF_TOKEN, ...) go to the kernel's
    environment instead, and the executed copy is scrubbed of them afterwards. PROGRESS shows papermill's
    per-cell bar on the terminal (off by default: a failing cell leaves it frozen mid-way).
    """
    import papermill as pm

    path = Path(path)
    result = NotebookResult(path.stem, notebook_title(path), notebook_kernel(path))
    out = (out_dir or artifacts / "executed") / path.name
    out.parent.mkdir(parents=True, exist_ok=True)
    result.executed = str(out)
    if result.kernel not in known_kernels():
        result.status = FAIL
        result.error = (f"kernel {result.kernel!r} is not registered with this Jupyter "
                        f"(known: {', '.join(sorted(known_kernels()))}); run `make env` first")
        return result
    params, secrets, unknown = split_parameters(path, {"ARTIFACTS": str(artifacts), **(parameters or {})})
    if unknown:
        print(f"  {path.name} takes no parameter {', '.join(unknown)}: not passed to it", flush=True)
    for name in secrets:
        print(f"  {name} reaches {path.name} as an environment variable, not as a parameter "
              "(papermill would write it into the executed notebook)", flush=True)
    hidden = [*secrets.values(), *hidden_values(params)]  # masked in the executed copy, its metadata and the log
    start = time.time()
    saved_env = {key: os.environ.get(key) for key in [*HEADLESS_ENV, *secrets]}
    os.environ.update(HEADLESS_ENV)  # the kernel inherits it: figures land in the executed copy, no frozen bars
    os.environ.update(secrets)
    # papermill saves the copy after every cell, injected parameters included: a private folder holds it until the
    # credentials in it are masked, so a kill mid-run leaves none in ARTIFACTS
    checkpoints_file(path.stem, artifacts).unlink(missing_ok=True)  # an earlier run's results are not this run's
    private = Path(tempfile.mkdtemp(prefix="labsupport-run-"))
    running = private / path.name
    try:
        pm.execute_notebook(str(path), str(running), parameters=params, cwd=str(path.parent),
                            progress_bar=progress, request_save_on_cell_execute=True,
                            extra_arguments=KERNEL_ARGUMENTS)
        result.status = PASS
    except pm.PapermillExecutionError as exc:
        result.status = FAIL
        result.failed_cell = source_cell_index(running, exc.cell_index)
        first_line = next((line for line in exc.source.splitlines() if line.strip()), "")
        result.error = (f"cell {result.failed_cell} (`{first_line[:60]}`): {exc.ename}: {exc.evalue}")
    except Exception as exc:  # kernel died, timeout, bad notebook: still a failed notebook, with the reason
        result.status = FAIL
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if running.exists():
            text = running.read_text(encoding="utf-8")
            clean = redact(text, hidden)
            write_text_atomic(out, clean)
            if clean != text:
                print(f"  credentials were masked in {out}", flush=True)
        else:
            out.unlink(missing_ok=True)  # an earlier run's copy would pass for this one's
        shutil.rmtree(private, ignore_errors=True)
        result.error = redact(result.error, hidden)
    result.seconds = round(time.time() - start, 1)
    saved = load_results(path.stem, artifacts)
    this_run = saved and saved.get("started", 0) >= start - 1  # a notebook that failed before Checkpoints() has none
    result.checkpoints = saved["checkpoints"] if this_run else []
    return result


def write_reports(results: list[NotebookResult], artifacts: Path) -> dict:
    """Write course-report.json, .md and .html under ARTIFACTS; return the report as a dict."""
    report = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "passed": all(r.status == PASS for r in results),
        "seconds": round(sum(r.seconds for r in results), 1),
        "notebooks": [asdict(r) for r in results],
    }
    write_json_atomic(artifacts / "course-report.json", report)
    for name, text in (("course-report.md", render_markdown(report)), ("course-report.html", render_html(report))):
        write_text_atomic(artifacts / name, text)
    return report


ICON = {PASS: "✅", FAIL: "❌", SKIP: "⏭️", "not run": "·"}


def render_markdown(report: dict) -> str:
    """The report card as Markdown."""
    lines = ["# Course report", "", f"Generated {report['generated']} — "
             f"{'all notebooks passed' if report['passed'] else 'SOME NOTEBOOKS FAILED'} "
             f"({report['seconds']:.0f} s in all)", "",
             "| notebook | status | seconds | checkpoints |", "|---|---|---:|---|"]
    for nb in report["notebooks"]:
        counts = {s: sum(c["status"] == s for c in nb["checkpoints"]) for s in (PASS, FAIL, SKIP)}
        lines.append(f"| {nb['notebook']} — {nb['title']} | {ICON[nb['status']]} {nb['status']} | {nb['seconds']:.1f} | "
                     f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped |")
    for nb in report["notebooks"]:
        lines += ["", f"## {nb['notebook']}", ""]
        if nb["error"]:
            lines += [f"**Failed:** {nb['error']}", ""]
        for c in nb["checkpoints"]:
            extra = f" — hint: {c['hint']}" if c["status"] == FAIL else (f" — {c['detail']}" if c["detail"] else "")
            lines.append(f"- {ICON[c['status']]} {c['name']}{extra}")
        if not nb["checkpoints"]:
            lines.append("- (no checkpoints recorded)")
    return "\n".join(lines) + "\n"


def render_html(report: dict) -> str:
    """The report card as a small standalone HTML page."""
    rows = []
    for nb in report["notebooks"]:
        checks = "".join(
            f"<li>{ICON[c['status']]} {html.escape(c['name'])}"
            + (f" <em>hint: {html.escape(c['hint'])}</em>" if c["status"] == FAIL else "")
            + (f" <small>{html.escape(c['detail'])}</small>" if c["detail"] and c["status"] != FAIL else "")
            + "</li>" for c in nb["checkpoints"])
        error = f"<p class=err>{html.escape(nb['error'])}</p>" if nb["error"] else ""
        rows.append(f"<tr class={nb['status'].replace(' ', '-')}><td>{html.escape(nb['notebook'])}<br>"
                    f"<small>{html.escape(nb['title'])}</small></td><td>{ICON[nb['status']]} {nb['status']}</td>"
                    f"<td>{nb['seconds']:.1f}</td><td>{error}<ul>{checks}</ul></td></tr>")
    verdict = "all notebooks passed" if report["passed"] else "some notebooks failed"
    return ("<!doctype html><meta charset=utf-8><title>Course report</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.4em;vertical-align:top}tr.fail{background:#fee}"
            "tr.pass{background:#efe}.err{color:#a00}</style>"
            f"<h1>Course report</h1><p>Generated {report['generated']}: {verdict} ({report['seconds']:.0f} s).</p>"
            "<table><tr><th>notebook</th><th>status</th><th>s</th><th>checkpoints</th></tr>"
            + "".join(rows) + "</table>")


def run_course(only: list[str] | None = None, artifacts: str | None = None, parameters: dict | None = None,
               progress: bool = False) -> int:
    """Run the notebooks in order, print progress, write the reports; return 0 when all passed."""
    artifacts_path = artifacts_dir(artifacts)
    # a number names one notebook: "06" is 06_deploy_lmdeploy, not also 06b-06d (ask for those by their own numbers)
    notebooks = [p for p in course_notebooks() if not only or p.name.split('_')[0] in only or p.stem in only]
    if not notebooks:
        print(f"no notebook matches {only}", file=sys.stderr)
        return 2
    results = []
    for i, path in enumerate(notebooks, 1):
        print(f"[{i}/{len(notebooks)}] {path.name} (kernel {notebook_kernel(path)}) ...", flush=True)
        result = run_notebook(path, artifacts_path, parameters, progress=progress)
        results.append(result)
        mark = ICON[result.status]
        print(f"[{i}/{len(notebooks)}] {mark} {path.name}: {result.status} in {result.seconds:.1f} s"
              + (f" — {result.error}" if result.error else ""), flush=True)
    report = write_reports(results, artifacts_path)
    print(render_markdown(report))
    print(f"reports: {artifacts_path / 'course-report.json'}, {artifacts_path / 'course-report.md'}, "
          f"{artifacts_path / 'course-report.html'}")
    failed = [r for r in results if r.status != PASS]
    for r in failed:
        print(f"FAILED: notebooks/{r.notebook}.ipynb — {r.error} (executed copy: {r.executed})", file=sys.stderr)
    return 1 if failed else 0


def print_report(artifacts: str | None = None) -> int:
    """Print the last report card found under ARTIFACTS."""
    path = artifacts_dir(artifacts) / "course-report.json"
    if not path.exists():
        print(f"no report at {path}: run `make course` first", file=sys.stderr)
        return 1
    report = json.loads(path.read_text(encoding="utf-8"))
    print(render_markdown(report))
    return 0 if report["passed"] else 1


def parse_value(text: str):
    """A command-line parameter value as Python: numbers, booleans and lists parsed, anything else a string."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


PATH_PARAMETER = re.compile(r"(_PATH|_DIR|_FOLDER)$|^(DATA|HELDOUT)$")   # the learner's files: DATA, HELDOUT, IMAGE_FOLDER
RELATIVE_BY_DESIGN = {"WORK_DIR"}  # notebook 05's: relative to ARTIFACTS (and ARTIFACTS itself: to the repo root)


def cli_parameter(name: str, text: str):
    """A `-p NAME VALUE` as the notebook gets it: a literal, with a relative path made absolute from where the command ran
    (the notebooks run in notebooks/, where `artifacts/official/InternVL2-2B` would name nothing)."""
    value = parse_value(text)
    if (isinstance(value, str) and value and PATH_PARAMETER.search(name) and name not in RELATIVE_BY_DESIGN
            and not os.path.isabs(value)
            and ("/" in value or os.sep in value or os.path.exists(value))):
        return str(Path(value).resolve())
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the course notebooks headless and report.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the notebooks with papermill")
    run.add_argument("--only", nargs="*", help="notebook numbers or names, e.g. 01 02 06b (06 is 06_deploy_lmdeploy only)")
    run.add_argument("--artifacts", default=None, help="artifacts folder (default: artifacts/)")
    run.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                     help="override a parameter in the notebooks that declare it, e.g. -p MODEL_PATH /models/InternVL2-2B; "
                          "a secret (HF_TOKEN ...) goes to the kernels' environment, never into a notebook")
    run.add_argument("--progress", action="store_true", help="show papermill's per-cell progress bar")
    rep = sub.add_parser("report", help="print the report card")
    rep.add_argument("--artifacts", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    if args.command == "run":
        return run_course(args.only, args.artifacts, {k: cli_parameter(k, v) for k, v in args.parameter}, args.progress)
    return print_report(args.artifacts)


if __name__ == "__main__":
    sys.exit(main())
