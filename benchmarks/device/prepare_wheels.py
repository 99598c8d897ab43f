"""Prepare the wheels that travel to the lent GPU machine (no network there; Python 3.12, torch 2.11).

    python3 benchmarks/device/prepare_wheels.py            # writes .whl/lmdeploy/, .whl/xtuner/ and .whl/notebook/
    python3 benchmarks/device/prepare_wheels.py notebook   # one group

Three groups, installed there into separate --target folders because LMDeploy and XTuner need different
transformers: LMDeploy uses the machine's transformers 5.x; XTuner needs transformers 4.48.

* lmdeploy: the official 0.18.0 wheel minus its 350 MB TurboMind library (the PyTorch engine is
  pure Python), plus the small packages the machine lacks, and what `api_server` needs.
* notebook: papermill, ipykernel and what they import, so notebooks 04-06 themselves run there (each
  kernel's PYTHONPATH puts it after the lmdeploy or the xtuner group).
* xtuner: xtuner 0.2.0 and the transformers 4.48 stack, deepspeed 0.16.2 (a wheel built here with
  DS_BUILD_OPS=0, it is an sdist on PyPI), and bitsandbytes 0.50.2 (the first with a CUDA 13
  library) trimmed to its CPU and cuda130 libraries.
On the machine, see benchmarks/device/README.md for the install line.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".whl"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_24_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64",
             "manylinux_2_35_x86_64"]

LMDEPLOY = ["lmdeploy==0.18.0", "mmengine-lite==0.10.7", "pybase64", "pyzmq", "xgrammar==0.2.8", "apache-tvm-ffi==0.1.11",
            "shortuuid", "addict", "yapf", "termcolor", "platformdirs", "pydantic==2.12.5", "pydantic-core==2.41.5",
            "annotated-types", "typing-inspection", "partial-json-parser", "fire",
            # api_server
            "openai==2.45.0", "jiter", "distro", "sniffio", "fastapi==0.120.0", "starlette==0.48.0", "annotated-doc", "uvicorn"]
XTUNER = ["xtuner==0.2.0", "transformers==4.48.0", "tokenizers==0.21.4", "huggingface-hub==0.36.2", "mmengine==0.10.6",
          "addict", "yapf", "platformdirs", "termcolor", "datasets==5.0.1", "dill", "multiprocess", "loguru",
          "openpyxl", "et-xmlfile", "hjson", "py-cpuinfo", "pydantic==2.12.5", "pydantic-core==2.41.5",
          "annotated-types", "typing-inspection", "peft==0.14.0", "bitsandbytes==0.50.2", "xxhash"]
# papermill and an IPython kernel, to run notebooks 04-06 themselves there (`run_gpu.sh notebook06` and `notebooks2b`):
# the course env's versions; what the machine's image already has (pyyaml, requests, tqdm, click, aiohttp, pygments,
# psutil, packaging, python-dateutil, attrs, typing-extensions) is left out. debugpy (4 MB) is left out too:
# ipykernel imports it only for its debugger, inside a try.
NOTEBOOK = ["papermill==2.7.0", "nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0", "jupyter-client==8.10.0",
            "jupyter-core==5.9.1", "traitlets==5.16.1", "tornado==6.6.1", "comm==0.2.3", "ipython==9.18.1",
            "ipython-pygments-lexers", "jedi==0.20.1", "parso==0.8.7", "prompt-toolkit==3.0.53", "wcwidth==0.9.4",
            "pexpect==4.9.0", "ptyprocess==0.7.0", "stack-data==0.6.3", "executing==2.3.0", "asttokens==3.0.2",
            "pure-eval==0.2.4", "decorator", "matplotlib-inline==0.2.2", "nest-asyncio2==1.7.4", "fastjsonschema==2.22.3",
            "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1", "referencing==0.37.0", "rpds-py==2026.9.1",
            "entrypoints==0.4.2", "tenacity==9.2.1", "platformdirs==4.14.9", "pyzmq==27.3.0"]
GROUPS = {"lmdeploy": LMDEPLOY, "xtuner": XTUNER, "notebook": NOTEBOOK}
SDISTS = {"xtuner": ["deepspeed==0.16.2", "transformers-stream-generator==0.0.5"]}


def download(names: list[str], dest: Path) -> None:
    """Download cp312 manylinux wheels for NAMES, without dependencies."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + names, check=True)


def build_sdists(names: list[str], dest: Path) -> None:
    """Build pure-Python wheels of sdist-only packages (deepspeed without its CUDA ops)."""
    env = dict(os.environ, DS_BUILD_OPS="0")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest)] + names, check=True, env=env)
    for whl in dest.glob("deepspeed-*.whl"):  # built here as cp311-specific only by name: it is pure Python
        if "py3-none-any" not in whl.name:
            whl.rename(whl.with_name(re.sub(r"-cp\d+-cp\d+-linux_x86_64", "-py3-none-any", whl.name)))


def drop_from_wheel(whl: Path, keep) -> None:
    """Rewrite WHL without the members KEEP rejects, fixing its RECORD."""
    tmp = Path(tempfile.mkdtemp())
    out = tmp / whl.name
    with zipfile.ZipFile(whl) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        names = [n for n in src.namelist() if keep(n)]
        record_name = next(n for n in names if n.endswith(".dist-info/RECORD"))
        lines = []
        for name in names:
            if name == record_name:
                continue
            data = src.read(name)
            dst.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{name},sha256={digest},{len(data)}")
        lines.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(lines) + "\n")
    shutil.move(out, whl)
    shutil.rmtree(tmp)


def main(argv: list[str] | None = None) -> int:
    groups = (argv if argv is not None else sys.argv[1:]) or list(GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        print(f"unknown group(s) {unknown}; choose from {list(GROUPS)}", file=sys.stderr)
        return 2
    for group in groups:
        dest = OUT / group
        dest.mkdir(parents=True, exist_ok=True)
        download(GROUPS[group], dest)
        if group in SDISTS:
            build_sdists(SDISTS[group], dest)
    for whl in (OUT / "lmdeploy").glob("lmdeploy-*.whl"):
        drop_from_wheel(whl, lambda n: not (n.endswith(".so") or n.endswith(".a")) or "turbomind" not in n)
    for whl in (OUT / "xtuner").glob("bitsandbytes-*.whl"):
        drop_from_wheel(whl, lambda n: not n.endswith(".so") or "cpu" in n or "cuda130" in n)
    total = 0
    for group in GROUPS:
        size = sum(f.stat().st_size for f in (OUT / group).glob("*.whl"))
        total += size
        print(f"{group}: {len(list((OUT / group).glob('*.whl')))} wheels, {size / 2**20:.1f} MiB")
    tree = working_tree_bytes()
    print(f"wheels {total / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = {(total + tree) / 2**20:.1f} MiB "
          "carried with all of .whl (the device tool carries at most 64 MiB)")
    return 0 if total + tree < 64 * 2**20 else 1


def working_tree_bytes() -> int:
    """Bytes of what the device tool sends besides `carry`: tracked files and untracked ones git does not ignore."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True,
                         check=True).stdout.decode()
    return sum((ROOT / name).stat().st_size for name in out.split("\0") if name and (ROOT / name).is_file())


if __name__ == "__main__":
    sys.exit(main())
