"""Environment doctor: compare the installed packages with the pins, report Python, GPU and disk.

    python -m labsupport.course.doctor            # every environment, printed as tables
"""
from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
import sys
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from labsupport.core.envs import EnvSpec, env_python, load_specs
from labsupport.core.paths import artifacts_dir

# What of the course needs a CUDA GPU; on a CPU machine these parts are skipped, not failed.
GPU_ONLY = {
    "04 QLoRA fine-tuning": "bitsandbytes 4-bit kernels need CUDA",
    "04 DeepSpeed ZeRO": "DeepSpeed's optimizers and communication need CUDA here",
    "06 LMDeploy pipeline and api_server": "LMDeploy's engines assert a CUDA device",
}

_VERSIONS_SCRIPT = (
    "import importlib.metadata as m, json, sys\n"
    "out = {'python': sys.version.split()[0], 'executable': sys.executable, 'packages': {}}\n"
    "for d in m.distributions():\n"
    "    out['packages'][d.metadata['Name'].lower().replace('_', '-')] = d.version\n"
    "print(json.dumps(out))\n"
)


def installed_versions(python: str | Path | None = None) -> dict:
    """Python version and installed distributions of PYTHON (default: this interpreter)."""
    python = str(python or sys.executable)
    done = subprocess.run([python, "-c", _VERSIONS_SCRIPT], capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"could not list the packages of {python}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


_SIZES_SCRIPT = (
    "import importlib.metadata as m, json\n"
    "sizes = {}\n"
    "for d in m.distributions():\n"
    "    sizes[d.metadata['Name']] = sum((f.size or 0) for f in (d.files or []))\n"
    "print(json.dumps(sizes))\n"
)


def package_sizes(python: str | Path | None = None, top: int = 10) -> dict[str, float]:
    """The TOP largest installed distributions of PYTHON in MB (from their RECORD files), largest first."""
    done = subprocess.run([str(python or sys.executable), "-c", _SIZES_SCRIPT], capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"could not measure the packages of {python}: {done.stderr.strip()[-500:]}")
    sizes = sorted(json.loads(done.stdout).items(), key=lambda kv: -kv[1])
    return {name: round(size / 2**20, 1) for name, size in sizes[:top]}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_pins(spec: EnvSpec, found: dict) -> list[dict]:
    """One row per pip requirement of SPEC: package, wanted, found, ok."""
    rows = []
    packages = {_normalise(k): v for k, v in found["packages"].items()}
    for item in spec.pip + spec.pip_no_deps:
        if item.startswith("-e"):
            req_name, specifier = "labsupport", ""
        else:
            try:
                req = Requirement(item)
            except InvalidRequirement:
                rows.append({"package": item, "wanted": "?", "found": "", "ok": False})
                continue
            req_name, specifier = req.name, str(req.specifier)
        have = packages.get(_normalise(req_name), "")
        ok = bool(have) and (not specifier or Requirement(f"{req_name}{specifier}").specifier.contains(have, prereleases=True))
        rows.append({"package": req_name, "wanted": specifier or "any", "found": have or "missing", "ok": ok})
    if spec.python:
        have = found["python"]
        rows.insert(0, {"package": "python", "wanted": f"{spec.python}.*", "found": have,
                        "ok": have == spec.python or have.startswith(spec.python + ".")})
    return rows


# What the published InternVL2 remote code and tokenizers import beyond transformers and torch.
OFFICIAL_IMPORTS = {
    "timm": "every official modeling_intern_vit.py: from timm.models.layers import DropPath",
    "einops": "the official modeling code: from einops import rearrange",
    "sentencepiece": "tokenization_internlm2.py (InternVL2-2B/8B) and Phi-3's slow tokenizer (InternVL2-4B)",
    "google.protobuf": "converting a sentencepiece tokenizer to a fast one (InternVL2-4B)",
}

_CODE_PATH_SCRIPT = """
import importlib, json, sys, traceback
rows = []
def check(name, fn):
    try:
        detail = fn()
        rows.append({"check": name, "ok": True, "detail": str(detail or "")})
    except BaseException as exc:
        last = traceback.extract_tb(exc.__traceback__)[-1]
        where = last.filename.rsplit("/", 1)[-1] + ":" + str(last.lineno)
        rows.append({"check": name, "ok": False, "detail": f"{type(exc).__name__}: {exc} ({where})"})
for module in json.loads(sys.argv[2]):
    check("import " + module, lambda m=module: getattr(importlib.import_module(m), "__version__", ""))
path = sys.argv[1]
if path:
    from transformers import AutoConfig, AutoTokenizer
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    cfg = {}
    check("config.json + configuration code", lambda: cfg.setdefault("c", AutoConfig.from_pretrained(path, trust_remote_code=True)).__class__.__name__)
    auto_map = json.load(open(path + "/config.json")).get("auto_map", {})
    for ref in sorted(set(auto_map.values())):
        check("remote code " + ref, lambda r=ref: get_class_from_dynamic_module(r, path).__name__)
    check("tokenizer", lambda: type(AutoTokenizer.from_pretrained(path, trust_remote_code=True)).__name__)
print("ROWS" + json.dumps(rows))
"""


def check_model_code(model_dir: str | Path | None, python: str | Path | None = None) -> list[dict]:
    """Load MODEL_DIR's code path in PYTHON's environment (default: this one): the imports official remote code
    needs, config.json with its configuration code, every auto_map class (which imports the modeling files),
    and the tokenizer. One row per check: check, ok, detail (the error and the file:line where it failed)."""
    folder = str(Path(model_dir).resolve()) if model_dir else ""
    done = subprocess.run([str(python or sys.executable), "-c", _CODE_PATH_SCRIPT, folder, json.dumps(list(OFFICIAL_IMPORTS))],
                          capture_output=True, text=True, timeout=600)
    marker = [ln for ln in done.stdout.splitlines() if ln.startswith("ROWS")]
    if not marker:
        return [{"check": "run the checks", "ok": False, "detail": (done.stderr.strip() or done.stdout.strip())[-800:]}]
    rows = json.loads(marker[-1][4:])
    for row in rows:
        module = row["check"].removeprefix("import ")
        if not row["ok"] and module in OFFICIAL_IMPORTS:
            row["detail"] += f" -- needed by {OFFICIAL_IMPORTS[module]}; install the pinned version from environment*.yml"
    return rows


def kernel_python(kernel: str) -> str | None:
    """The python executable behind a registered Jupyter kernel, or None when it is not registered."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        return KernelSpecManager().get_kernel_spec(kernel).argv[0]
    except NoSuchKernel:
        return None


def gpu_report() -> dict:
    """CUDA devices seen by torch in this environment (name and memory), or why there are none."""
    try:
        import torch
    except ImportError as exc:
        return {"cuda": False, "reason": f"torch is not importable: {exc}", "devices": []}
    if not torch.cuda.is_available():
        return {"cuda": False, "reason": "torch sees no CUDA device on this machine", "devices": [],
                "torch": torch.__version__}
    devices = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        devices.append({"index": i, "name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                        "capability": f"{p.major}.{p.minor}"})
    return {"cuda": True, "reason": "", "devices": devices, "torch": torch.__version__,
            "cuda_version": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported()}


def disk_report(folder: str | Path, needed_gb: float) -> dict:
    """Free disk at FOLDER against what the course plans to write there."""
    usage = shutil.disk_usage(folder)
    free = usage.free / 2**30
    return {"folder": str(folder), "free_gb": round(free, 1), "needed_gb": needed_gb, "ok": free >= needed_gb}


def check_environment(spec: EnvSpec, model_dir: str | Path | None = None) -> dict:
    """One environment's doctor entry: its pins against what is installed and, for MODEL_DIR, its code path."""
    # A kernel-less tool environment (the evaluation framework) is found by its prefix and runs no model code.
    python = kernel_python(spec.kernel) if spec.kernel else (str(env_python(spec) or "") or None)
    entry = {"name": spec.name, "file": spec.file.name, "kernel": spec.kernel, "python": python, "rows": []}
    if python is None:
        entry["error"] = (f"kernel {spec.kernel!r} is not registered: run `make env`" if spec.kernel
                          else f"{spec.name} is not built: run `make env`")
    else:
        try:
            entry["rows"] = check_pins(spec, installed_versions(python))
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            entry["error"] = str(exc)
        if model_dir is not None and spec.kernel:
            entry["code_path"] = check_model_code(model_dir, python)
    entry["ok"] = (not entry.get("error") and all(r["ok"] for r in entry["rows"])
                   and all(r["ok"] for r in entry.get("code_path", [])))
    return entry


def diagnose(artifacts: str | Path, needed_gb: float = 2.0, model_dir: str | Path | None = None) -> dict:
    """The whole doctor report: every environment's pins and, for MODEL_DIR, its code path (check_model_code),
    this machine's GPU and disk, GPU-only parts."""
    # Each check is a child interpreter importing torch and the model's code: run them side by side, not in turn.
    with ThreadPoolExecutor(max_workers=4) as pool:
        envs = list(pool.map(lambda spec: check_environment(spec, model_dir), load_specs()))
    gpu = gpu_report()
    return {
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "python": sys.version.split()[0]},
        "environments": envs,
        "gpu": gpu,
        "disk": disk_report(artifacts, needed_gb),
        "gpu_only": [{"part": part, "why": why, "status": "available" if gpu["cuda"] else "skipped"}
                     for part, why in GPU_ONLY.items()],
    }


def render_markdown(report: dict) -> str:
    """The doctor report as Markdown tables."""
    lines = ["# Environment doctor", "", f"Machine: {report['machine']['platform']} ({report['machine']['processor']})", ""]
    for env in report["environments"]:
        kernel = f"kernel `{env['kernel']}`" if env["kernel"] else "no kernel: a command-line tool"
        lines += [f"## {env['name']} ({env['file']}, {kernel})", ""]
        if env.get("error"):
            lines += [f"**Problem:** {env['error']}", ""]
        lines += ["| package | wanted | found | ok |", "|---|---|---|---|"]
        lines += [f"| {r['package']} | {r['wanted']} | {r['found']} | {'✅' if r['ok'] else '❌'} |" for r in env["rows"]]
        lines.append("")
        if env.get("code_path"):
            lines += ["| loading the model's code path | ok | detail |", "|---|---|---|"]
            lines += [f"| {r['check']} | {'✅' if r['ok'] else '❌'} | {r['detail']} |" for r in env["code_path"]]
            lines.append("")
    gpu = report["gpu"]
    lines += ["## GPU", ""]
    if gpu["cuda"]:
        lines += [f"- GPU {d['index']}: {d['name']}, {d['memory_gb']} GB, compute capability {d['capability']}" for d in gpu["devices"]]
    else:
        lines += [f"- No CUDA GPU: {gpu['reason']}. The course runs on the CPU; these parts are skipped, not failed:"]
        lines += [f"  - {p['part']} ({p['why']})" for p in report["gpu_only"]]
    disk = report["disk"]
    lines += ["", "## Disk", "", f"- {disk['free_gb']} GB free at {disk['folder']} (the course needs about {disk['needed_gb']} GB)"]
    return "\n".join(lines) + "\n"


def main() -> int:

    report = diagnose(artifacts_dir())
    print(render_markdown(report))
    return 0 if all(e["ok"] for e in report["environments"]) else 1


if __name__ == "__main__":
    sys.exit(main())
