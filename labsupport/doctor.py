"""Environment doctor: compare the installed packages with the pins, report Python, GPU and disk.

    python -m labsupport.doctor            # every environment, printed as tables
"""
from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from .envs import EnvSpec, load_specs

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


def diagnose(artifacts: str | Path, needed_gb: float = 2.0) -> dict:
    """The whole doctor report: every environment's pins, this machine's GPU and disk, GPU-only parts."""
    envs = []
    for spec in load_specs():
        python = kernel_python(spec.kernel)
        entry = {"name": spec.name, "file": spec.file.name, "kernel": spec.kernel, "python": python, "rows": []}
        if python is None:
            entry["error"] = f"kernel {spec.kernel!r} is not registered: run `make env`"
        else:
            try:
                entry["rows"] = check_pins(spec, installed_versions(python))
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
                entry["error"] = str(exc)
        entry["ok"] = not entry.get("error") and all(r["ok"] for r in entry["rows"])
        envs.append(entry)
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
        lines += [f"## {env['name']} ({env['file']}, kernel `{env['kernel']}`)", ""]
        if env.get("error"):
            lines += [f"**Problem:** {env['error']}", ""]
        lines += ["| package | wanted | found | ok |", "|---|---|---|---|"]
        lines += [f"| {r['package']} | {r['wanted']} | {r['found']} | {'✅' if r['ok'] else '❌'} |" for r in env["rows"]]
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
    from .paths import artifacts_dir

    report = diagnose(artifacts_dir())
    print(render_markdown(report))
    return 0 if all(e["ok"] for e in report["environments"]) else 1


if __name__ == "__main__":
    sys.exit(main())
