"""Build the course's environments from environment.yml, environment-deploy.yml, environment-swift.yml and environment-eval.yml.

Runs with a bare Python (standard library only), because it is what creates the
environments that hold everything else:

    python3 -m labsupport.core.envs            # create or update all four, register the kernels
    python3 -m labsupport.core.envs --list     # print the parsed specs and stop

With conda on PATH it calls ``conda env create/update -f FILE``; otherwise it builds one
venv per file under ``.venvs/NAME`` from the same file's pip list, so the pins live in one
place. Each environment gets a stamp of its spec: a second run with nothing changed only
compares stamps and takes seconds.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from labsupport.core.checkpoints import write_text_atomic

ROOT = Path(__file__).resolve().parents[2]
ENV_FILES = ("environment.yml", "environment-deploy.yml", "environment-swift.yml", "environment-eval.yml")
ENV_KEYS = ("course", "deploy", "swift", "eval")
VENVS = ROOT / ".venvs"
STAMP = ".labsupport-env.json"


@dataclass
class EnvSpec:
    """What one environment file asks for, in the subset of conda's YAML the course uses."""

    file: Path
    name: str
    python: str = ""
    conda: list[str] = field(default_factory=list)
    pip: list[str] = field(default_factory=list)
    pip_no_deps: list[str] = field(default_factory=list)
    kernel: str = ""
    kernel_display: str = ""

    def digest(self) -> str:
        """Hash of the file's text: the stamp that tells whether a rebuild is needed."""
        return hashlib.sha256(self.file.read_bytes()).hexdigest()[:16]


def _strip_comment(line: str) -> str:
    """Drop a YAML comment that starts with ' #' (pins never contain one)."""
    return re.sub(r"(^|\s)#.*$", "", line).rstrip()


def parse_env_file(path: str | Path) -> EnvSpec:
    """Parse an environment file (name, dependencies, pip list, x- sections) without PyYAML."""
    path = Path(path)
    spec = EnvSpec(file=path, name="")
    section, sub = None, None
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = _strip_comment(raw)
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        text = line.strip()
        if indent == 0:
            sub = None
            key, _, value = text.partition(":")
            section, value = key.strip(), value.strip()
            if section == "name":
                spec.name = value
            elif section == "x-jupyter-kernel":
                spec.kernel = value
            elif section == "x-jupyter-display-name":
                spec.kernel_display = value
            continue
        if not text.startswith("- "):
            raise ValueError(f"{path}:{lineno}: expected a '- item' line, got {raw!r}")
        item = text[2:].strip()
        if section == "dependencies":
            if item == "pip:":
                sub = "pip"
            elif sub == "pip" and indent > 2:
                spec.pip.append(item)
            else:
                sub = None
                if item.startswith("python="):
                    spec.python = item.split("=", 1)[1]
                spec.conda.append(item)
        elif section == "x-pip-no-deps":
            spec.pip_no_deps.append(item)
    if not spec.name:
        raise ValueError(f"{path}: no 'name:' line; every environment file needs one")
    # "none": a tool environment that notebooks call as a command (the evaluation framework), with no kernel of its own
    spec.kernel = "" if spec.kernel == "none" else (spec.kernel or spec.name)
    spec.kernel_display = spec.kernel_display or f"Python ({spec.kernel})"
    return spec


def load_specs(root: Path = ROOT) -> list[EnvSpec]:
    """Parse the course's environment files, course env first."""
    return [parse_env_file(root / f) for f in ENV_FILES if (root / f).exists()]


def venv_python(name: str, root: Path = ROOT) -> Path:
    """Path of the python inside the venv built for environment NAME."""
    return root / ".venvs" / name / "bin" / "python"


def env_python(spec: EnvSpec) -> Path | None:
    """The python of SPEC's built environment (venv first, then conda), or None when it is not built."""
    python = venv_python(spec.name)
    if python.exists():
        return python
    conda = shutil.which("conda") or shutil.which("mamba")
    if conda:
        envs = json.loads(subprocess.run([conda, "env", "list", "--json"], capture_output=True, text=True).stdout or "{}")
        for prefix in envs.get("envs", []):
            if Path(prefix).name == spec.name:
                return Path(prefix) / "bin" / "python"
    return None


# A torch environment holds a CUDA build of torch (several GB even on a CPU machine: PyPI's Linux wheel);
# below this much free space a first build is likely to stop half-way with "No space left on device".
TORCH_ENV_GIB = 9.0


def _free_gib(path: Path) -> float:
    """Free space, in GiB, on the disk that holds PATH (or its nearest existing parent)."""
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free / 2**30


def _run(cmd: list[str], **kw) -> None:
    """Run a command, echoing it, and stop with its exit status when it fails (saying so when the disk is full)."""
    print("  $", " ".join(str(c) for c in cmd), flush=True)
    result = subprocess.run([str(c) for c in cmd], cwd=kw.pop("cwd", ROOT), **kw)
    if result.returncode:
        free, hint = _free_gib(VENVS), ""
        if free < 1.0:
            hint = (f"\n      The disk that holds {_shown(VENVS)} has {free:.1f} GiB free: free some space "
                    f"and run `make env` again (an environment that stopped half-way is rebuilt).")
        sys.exit(f"[env] command failed with exit status {result.returncode}: {' '.join(map(str, cmd))}{hint}")


def share_identical_files(venvs: Path = VENVS) -> None:
    """Hard-link files that two environments hold byte for byte (torch's CUDA libraries, mostly), with util-linux's hardlink."""
    tool = shutil.which("hardlink")
    if not tool:
        print("[env] util-linux `hardlink` not found: each environment keeps its own copy of torch's libraries")
        return
    # Only files of 256 KiB and more (a few hundred, the shared libraries) are compared: seconds instead of
    # the minute a full pass over the environments' ~240,000 files takes, for nearly all of the saving.
    # -t ignores modification times (pip stamps each copy with its own) but still requires the same mode and owner.
    out = subprocess.run([tool, "-t", "-s", "256K", str(venvs.resolve())], capture_output=True, text=True)
    saved = re.search(r"Saved:\s*(.+)", out.stdout)
    if out.returncode:
        print(f"[env] hardlink exited with status {out.returncode}; environments keep their own copies: {out.stderr.strip()}")
    elif saved:
        print(f"[env] identical files shared between environments: {saved.group(1).strip()} saved (util-linux hardlink)")


def _read_stamp(prefix: Path) -> dict:
    """The stamp a finished build left in PREFIX ({} when there is none)."""
    try:
        return json.loads((prefix / STAMP).read_text())
    except (OSError, ValueError):
        return {}


def _write_stamp(prefix: Path, spec: EnvSpec, route: str) -> None:
    """Record that PREFIX now matches SPEC's file, so the next `make env` skips it."""
    data = {"digest": spec.digest(), "route": route, "file": spec.file.name, "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_text_atomic(prefix / STAMP, json.dumps(data, indent=1))


def _pip_install(python: Path, spec: EnvSpec) -> None:
    """Install the pip list (torch first, so packages that build against it find it), then the no-deps stage."""
    first = [p for p in spec.pip if re.match(r"(torch|torchvision)\b", p)]
    rest = [p for p in spec.pip if p not in first]
    pip = [python, "-m", "pip", "install", "--progress-bar", "off"]
    _run([python, "-m", "pip", "install", "-q", "--upgrade", "pip", "setuptools", "wheel"])
    if first:
        _run(pip + first)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, dir=ROOT / ".venvs") as req:
        req.write("\n".join(rest) + "\n")
    try:
        _run(pip + ["-r", req.name])
    finally:
        os.unlink(req.name)
    if spec.pip_no_deps:
        _run(pip + ["--no-deps"] + spec.pip_no_deps)


def build_commands(spec: EnvSpec, route: str = "venv") -> list[str]:
    """The shell commands `make env` runs for SPEC on ROUTE ("venv" or "conda"), for reading and for copying by hand."""
    if route == "conda":
        py = f"conda run -n {spec.name} python"
        cmds = [f"conda env create -f {spec.file.name}    # or: conda env update -f {spec.file.name} --prune"]
    elif route == "venv":
        prefix = f".venvs/{spec.name}"
        py = f"{prefix}/bin/python"
        first = [p for p in spec.pip if re.match(r"(torch|torchvision)\b", p)]
        rest = [p for p in spec.pip if p not in first]
        cmds = [f"python{spec.python} -m venv {prefix}", f"{py} -m pip install -q --upgrade pip setuptools wheel"]
        cmds += [f"{py} -m pip install {' '.join(first)}"] if first else []
        cmds += [f"{py} -m pip install " + " ".join(p if p.startswith("-") else shlex.quote(p) for p in rest)]
    else:
        raise ValueError(f"route must be 'venv' or 'conda', not {route!r}")
    if spec.pip_no_deps:
        cmds.append(f"{py} -m pip install --no-deps {' '.join(spec.pip_no_deps)}")
    if spec.kernel:
        cmds.append(f"{py} -m ipykernel install --prefix <course env> --name {spec.kernel} "
                    f"--display-name {shlex.quote(spec.kernel_display)}")
    return cmds


def _check_python(spec: EnvSpec) -> None:
    want = spec.python
    have = f"{sys.version_info.major}.{sys.version_info.minor}"
    if want and not have.startswith(want):
        sys.exit(
            f"[env] {spec.file.name} asks for Python {want}, but this is Python {have} ({sys.executable}).\n"
            f"      Install Python {want} (or conda) and run again with it, e.g. `python{want} -m labsupport.core.envs`."
        )


def _shown(path: Path) -> str:
    """PATH relative to the repo when it lies inside it, else absolute."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def build_venv(spec: EnvSpec, course_prefix: Path | None) -> Path:
    """Create or update the venv for SPEC under .venvs/; return its prefix."""
    # .venvs may be a symlink (git worktrees share one): build and register through the real path, so that
    # the venv's scripts and the kernel keep working when the worktree that built it is gone.
    prefix = VENVS.resolve() / spec.name
    python = prefix / "bin" / "python"
    if python.exists() and _read_stamp(prefix).get("digest") == spec.digest():
        print(f"[env] {spec.name}: up to date ({_shown(prefix)})")
    else:
        _check_python(spec)
        start = time.time()
        print(f"[env] {spec.name}: building {_shown(prefix)} from {spec.file.name} "
              f"({len(spec.pip)} pip requirements; the first build downloads several GB)", flush=True)
        free = _free_gib(VENVS)
        if any(re.match(r"torch\b", p) for p in spec.pip) and free < TORCH_ENV_GIB and not python.exists():
            print(f"[env] warning: {free:.1f} GiB free on the disk that holds {_shown(VENVS)}; a torch environment "
                  f"needs about {TORCH_ENV_GIB:.0f} GiB while it installs", flush=True)
        VENVS.mkdir(exist_ok=True)
        if not python.exists():
            _run([sys.executable, "-m", "venv", prefix])
        _pip_install(python, spec)
        _write_stamp(prefix, spec, "venv")
        print(f"[env] {spec.name}: built in {time.time() - start:.0f} s", flush=True)
        share_identical_files()
    register_kernel(python, spec, course_prefix or prefix)
    return prefix


def build_conda(spec: EnvSpec, course_prefix: Path | None) -> Path:
    """Create or update the conda environment for SPEC; return its prefix."""
    conda = shutil.which("conda") or shutil.which("mamba")
    envs = json.loads(subprocess.run([conda, "env", "list", "--json"], capture_output=True, text=True, check=True).stdout)
    prefix = next((Path(p) for p in envs["envs"] if Path(p).name == spec.name), None)
    if prefix and _read_stamp(prefix).get("digest") == spec.digest():
        print(f"[env] {spec.name}: up to date (conda, {prefix})")
    else:
        verb = "update" if prefix else "create"
        _run([conda, "env", verb, "-f", spec.file] + (["--prune"] if prefix else []))
        envs = json.loads(subprocess.run([conda, "env", "list", "--json"], capture_output=True, text=True, check=True).stdout)
        prefix = next(Path(p) for p in envs["envs"] if Path(p).name == spec.name)
        if spec.pip_no_deps:
            _run([prefix / "bin" / "python", "-m", "pip", "install", "--no-deps"] + spec.pip_no_deps)
        _write_stamp(prefix, spec, "conda")
    register_kernel(prefix / "bin" / "python", spec, course_prefix or prefix)
    return prefix


def register_kernel(python: Path, spec: EnvSpec, jupyter_prefix: Path) -> None:
    """Register SPEC's kernel in the Jupyter that lives in the course environment (nothing for a kernel-less tool env)."""
    if not spec.kernel:
        return
    kernel_json = jupyter_prefix / "share" / "jupyter" / "kernels" / spec.kernel / "kernel.json"
    try:
        if json.loads(kernel_json.read_text())["argv"][0] == str(python):
            return
    except (OSError, ValueError, KeyError, IndexError):
        pass
    _run([python, "-m", "ipykernel", "install", "--prefix", jupyter_prefix,
          "--name", spec.kernel, "--display-name", spec.kernel_display], stdout=subprocess.DEVNULL)
    print(f"[env] kernel {spec.kernel!r} -> {python}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the parsed specs and stop")
    parser.add_argument("--only", choices=list(ENV_KEYS), help="build one environment only")
    parser.add_argument("--venv", action="store_true", help="build venvs even when conda is on PATH")
    parser.add_argument("--python", choices=list(ENV_KEYS), help="print the python of a built environment and stop")
    args = parser.parse_args(argv)
    specs = load_specs()
    if args.python:
        spec = next(s for s in specs if s.name.endswith(args.python))
        python = env_python(spec)
        if python is None:
            sys.exit(f"[env] {spec.name} is not built yet: run `make env`")
        print(python)
        return 0
    if args.list:
        for spec in specs:
            print(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in spec.__dict__.items()}, indent=1, ensure_ascii=False))
        return 0
    use_conda = not args.venv and not os.environ.get("LABSUPPORT_VENV") and (shutil.which("conda") or shutil.which("mamba"))
    build = build_conda if use_conda else build_venv
    # Every kernel is registered in the course environment, where JupyterLab and papermill live.
    course_prefix = None if use_conda else VENVS.resolve() / specs[0].name
    for spec in specs:
        if args.only and not spec.name.endswith(args.only):
            continue
        prefix = build(spec, course_prefix)
        course_prefix = course_prefix or prefix
    return 0


if __name__ == "__main__":
    sys.exit(main())
