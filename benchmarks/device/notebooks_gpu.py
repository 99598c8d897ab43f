"""Run the course notebooks on the lent GPU machine as a learner with a GPU would: kernels, then a summary.

    python3 benchmarks/device/notebooks_gpu.py kernels /tmp/kern SITE_XTUNER SITE_LMDEPLOY SITE_NOTEBOOK
        writes the course's two Jupyter kernels under /tmp/kern/kernels/ (set JUPYTER_PATH=/tmp/kern):
        internvl-course -> this Python with the xtuner wheels (transformers 4.48) + papermill/ipykernel,
        internvl-deploy -> this Python with the lmdeploy wheels (the machine's transformers 5.x) + the same.
    python3 benchmarks/device/notebooks_gpu.py summary ARTIFACTS OUT
        copies the executed notebooks and the report card into OUT and writes OUT/notebooks-gpu.json:
        per notebook pass/fail, seconds, checkpoints, and the lines it printed that carry numbers.

The machine has no Jupyter: the kernels are plain kernel.json files (what `python -m ipykernel install`
writes, without the logos), each with its own PYTHONPATH, because the two groups need different transformers.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

KERNELS = {"internvl-course": ("Python (internvl-course)", "xtuner"),
           "internvl-deploy": ("Python (internvl-deploy)", "lmdeploy")}
# printed lines worth keeping in the summary (numbers a reader checks against the prose)
KEY_LINES = re.compile(r"per-GPU values|preset:|training:|Trained \d+ iterations|accuracy|answers in|served answer|"
                       r"GPU command|this notebook:|\[launch\] done|tensors changed|largest difference|model:|ran:|"
                       r"lmdeploy \d|CUDA visible|evaluation device|device:")
MAX_BYTES = 15 * 2**20  # the device tool brings back files up to 16 MiB


def write_kernels(prefix: Path, sites: dict[str, str], repo: Path) -> list[Path]:
    """Write one kernel.json per course kernel under PREFIX/kernels, PYTHONPATH = its wheel group + notebook group + REPO."""
    written = []
    for name, (display, group) in KERNELS.items():
        folder = prefix / "kernels" / name
        folder.mkdir(parents=True, exist_ok=True)
        path = os.pathsep.join([sites[group], sites["notebook"], str(repo)])
        env = {"PYTHONPATH": path,
               # the `xtuner` console script lives in the xtuner group's bin/ (pip --target puts it there)
               "PATH": os.pathsep.join([str(Path(sites[group]) / "bin"), os.environ.get("PATH", "")])}
        spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": display, "language": "python", "env": env,
                "metadata": {"debugger": False}}
        tmp = folder / "kernel.json.tmp"
        tmp.write_text(json.dumps(spec, indent=1), encoding="utf-8")
        os.replace(tmp, folder / "kernel.json")
        written.append(folder / "kernel.json")
    return written


def key_lines(notebook: dict, limit: int = 40) -> list[str]:
    """The stream lines of NOTEBOOK's outputs that KEY_LINES matches (at most LIMIT, each cut to 300 characters)."""
    lines = []
    for cell in notebook.get("cells", []):
        for out in cell.get("outputs", []):
            text = out.get("text") if out.get("output_type") == "stream" else \
                (out.get("data", {}).get("text/markdown") or out.get("data", {}).get("text/plain"))
            if not text:
                continue
            for line in ("".join(text) if isinstance(text, list) else text).splitlines():
                if KEY_LINES.search(line):
                    lines.append(line[:300])
    return lines[:limit]


def shrink(notebook: dict) -> int:
    """Drop image outputs from NOTEBOOK (in place), largest first, until it fits MAX_BYTES; the number dropped."""
    dropped = 0
    while len(json.dumps(notebook)) > MAX_BYTES:
        images = [(len(json.dumps(o)), o) for c in notebook.get("cells", []) for o in c.get("outputs", [])
                  if any(k.startswith("image/") for k in o.get("data", {}))]
        if not images:
            break
        _, biggest = max(images, key=lambda x: x[0])
        biggest["data"] = {"text/plain": "[image removed to fit the 16 MiB the device tool brings back]"}
        dropped += 1
    return dropped


def summary(artifacts: Path, out: Path) -> dict:
    """Copy the executed notebooks and report card from ARTIFACTS into OUT; write and return OUT/notebooks-gpu.json."""
    out.mkdir(parents=True, exist_ok=True)
    report_path = artifacts / "course-report.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {"notebooks": []}
    result = {"passed": report.get("passed"), "notebooks": []}
    for nb in report.get("notebooks", []):
        executed = Path(nb.get("executed") or "")
        row = {k: nb.get(k) for k in ("notebook", "status", "seconds", "error", "failed_cell")}
        row["checkpoints"] = [{k: c.get(k) for k in ("name", "status", "detail", "hint") if c.get(k)}
                              for c in nb.get("checkpoints", [])]
        if executed.is_file():
            data = json.loads(executed.read_text(encoding="utf-8"))
            row["lines"] = key_lines(data)
            row["images_removed"] = shrink(data)
            (out / executed.name).write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
        result["notebooks"].append(row)
    for extra in ("course-report.md",):
        if (artifacts / extra).exists():
            shutil.copy2(artifacts / extra, out / extra)
    (out / "notebooks-gpu.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    return result


def main(argv: list[str]) -> int:
    if argv[:1] == ["kernels"] and len(argv) == 5:
        prefix, xtuner, lmdeploy, notebook = argv[1:]
        repo = Path(__file__).resolve().parents[2]
        for path in write_kernels(Path(prefix), {"xtuner": xtuner, "lmdeploy": lmdeploy, "notebook": notebook}, repo):
            print("kernel:", path)
        return 0
    if argv[:1] == ["summary"] and len(argv) == 3:
        result = summary(Path(argv[1]), Path(argv[2]))
        for nb in result["notebooks"]:
            print(f"{nb['notebook']}: {nb['status']} in {nb['seconds']} s" + (f" — {nb['error']}" if nb.get("error") else ""))
            for c in nb["checkpoints"]:
                print(f"    {c.get('status')}: {c.get('name')}" + (f" ({c['detail']})" if c.get("detail") else ""))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
