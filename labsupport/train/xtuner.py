"""Run XTuner from a notebook: launch train.py, watch the loss, resume, convert (configs: xtuner_presets, xtuner_render).

    s = preset("tiny-cpu", model_path=..., data=[DataSpec(train_json, image_dir)])
    cfg = write_config(s, ARTIFACTS / "xtuner" / "tiny.py")     # a real XTuner config (mmengine loads it)
    run = launch(cfg, work_dir)                                  # live loss, raises when training fails
    hf = convert_to_official(cfg, run.checkpoint, out_dir)       # merged HF folder that AutoModel loads

Everything a CPU needs (process group of one, float32, OptimWrapper, >= 1 warmup iteration) is
chosen here or in labsupport.train.xtuner_shims; installed packages are never edited.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from labsupport.core.checkpoints import disk_full, write_json_atomic
from labsupport.train.runs import LOCK, clear_finished, latest_intact_checkpoint, mark_finished, safe_training
from labsupport.core.paths import repo_root
from labsupport.train.xtuner_render import load_config
from labsupport.core.plots import pyplot


# a folder whose sitecustomize.py lets XTuner's `xtuner` entry point skip the import it makes only to find a tool's
# file name (the tool itself still runs unchanged in its own process): put it on PYTHONPATH for the `!xtuner` cells
ENTRY_START = Path(__file__).resolve().with_name("xtuner_start")

_WARNINGS = [
    # (category, message regex): raised inside libraries by code paths the course does not control
    (UserWarning, r".*TypedStorage is deprecated.*"),
    (FutureWarning, r".*`torch_dtype` is deprecated.*"),
    (UserWarning, r".*do_sample.*is set to `False`.*"),
    (FutureWarning, r".*torch.utils._pytree._register_pytree_node.*"),
    (UserWarning, r".*None of the inputs have requires_grad=True.*"),
    (DeprecationWarning, r".*"),
    (FutureWarning, r".*Importing from timm.models.layers is deprecated.*"),  # every published modeling_intern_vit.py
    (FutureWarning, r".*`torch.jit.script` is deprecated.*"),  # torch 2.14, from inside transformers/DeepSpeed imports
]


class _silent_fds:
    """File descriptors 1 and 2 sent to /dev/null while inside (output of child processes and C code)."""

    def __enter__(self):
        sys.stdout.flush(), sys.stderr.flush()
        self.saved = [os.dup(1), os.dup(2)]
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1), os.dup2(null, 2)
        os.close(null)
        return self

    def __exit__(self, *exc):
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        return False


def quiet_warnings() -> None:
    """Hide warnings raised inside transformers/torch/mmengine that a learner cannot act on (printed once: which and why)."""
    import logging
    import warnings

    for category, pattern in _WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    # the tokenizer builder uses Rust threads; the `!xtuner ...` cells fork the kernel afterwards, and tokenizers
    # then warns about the fork in every notebook: say up front that this process needs no tokenizer threads
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # the `!xtuner ...` processes log through their own transformers: the same level there (`xtuner chat` would print
    # generate()'s "The attention mask is not set" notice into its transcript, a line of XTuner's code, not the learner's)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # the published InternVL2 remote code logs through transformers' logger on every load (flash-attn missing, eager
    # attention, no GenerationMixin, deprecated cache attributes): keep transformers' own log to errors
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass  # an environment without transformers has no remote code to quiet
    # ... and a checkpoint's own modules log under "transformers_modules.<folder>", outside transformers' logger tree
    logging.getLogger("transformers_modules").setLevel(logging.ERROR)
    # DeepSpeed (imported by XTuner) logs its accelerator auto-detection, bitsandbytes prints that it has no GPU
    # library: both at import, both irrelevant to a CPU run. Import them once with their output swallowed.
    import contextlib
    import importlib
    import io

    for name in ("deepspeed", "bitsandbytes"):
        # DeepSpeed's op check also runs the compiler, whose "ld: cannot find -laio" goes to the process's own file
        # descriptor 2 (the kernel shows it), not through sys.stderr: silence both levels while importing
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), _silent_fds():
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - optional packages: absent or broken is fine here, XTuner reports it
                continue
        logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    print("note: warnings from inside the libraries that you cannot act on (deprecations, generation defaults) are hidden")


def resume_demo(config: str | os.PathLike, run: "TrainRun", demo_dir: str | os.PathLike,
                threads: int | str | None = "auto") -> tuple["TrainRun", int]:
    """Copy RUN's work dir to DEMO_DIR without its last checkpoint and resume from the one before; (resumed run, start iter)."""
    demo_dir = Path(demo_dir)
    if demo_dir.exists():
        shutil.rmtree(demo_dir)
    shutil.copytree(run.work_dir, demo_dir, ignore=shutil.ignore_patterns(run.checkpoint.name, "last_checkpoint"))
    earlier = latest_checkpoint(demo_dir)
    if earlier is None:
        raise FileNotFoundError(f"{run.work_dir} kept only one checkpoint: raise save_total_limit to 2 to demonstrate resuming")
    start = int(re.findall(r"\d+", earlier.stem)[0])
    (demo_dir / "last_checkpoint").write_text(str(earlier))
    return launch(config, demo_dir, resume=True, live=False, threads=threads), start


# --- launching -----------------------------------------------------------------------------------

class TrainingFailed(RuntimeError):
    """XTuner's training process failed or left no checkpoint."""


@dataclass
class TrainRun:
    """What a finished training run left behind."""

    work_dir: Path
    checkpoint: Path
    log: Path
    scalars: list[dict]
    seconds: float
    command: list[str]

    @property
    def last_iter(self) -> int:
        """The last iteration trained: the checkpoint's (iter_N.pth), which can follow the last logged one."""
        m = re.fullmatch(r"iter_(\d+)\.pth", self.checkpoint.name)
        logged = self.scalars[-1]["iter"] if self.scalars else 0
        return max(logged, int(m.group(1))) if m else logged

    @property
    def loop_seconds(self) -> float:
        """Seconds of the training iterations alone (mmengine's per-iteration `time` over each log window), without start-up;
        iterations after the last log window count at that window's rate."""
        total, prev, rate = 0.0, 0, 0.0
        for row in self.scalars:
            rate = row.get("time", 0.0)
            total += rate * (row["iter"] - prev)
            prev = row["iter"]
        return total + rate * max(0, self.last_iter - prev)


def xtuner_tool(name: str) -> Path:
    """Path of an XTuner script: 'train' → xtuner/tools/train.py, 'convert' → the InternVL convert_to_official.py."""
    import importlib.util

    spec = importlib.util.find_spec("xtuner")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("xtuner is not installed in this kernel's environment: use the course env (internvl-course)")
    root = Path(list(spec.submodule_search_locations)[0])
    rel = {"train": "tools/train.py", "convert": "configs/internvl/v1_5/convert_to_official.py"}[name]
    return root / rel


def pick_threads(threads: int | str | None = "auto") -> int | None:
    """CPU threads for training: "auto" = every core unless the load average says they are busy (then 1), None = torch's default."""
    if threads != "auto":
        return int(threads) if threads else None
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    # OpenMP threads that wait for each other on busy cores make every small op 5-10x slower
    return 1 if load > cores - 0.5 else cores


def _env(threads: int | None = None) -> dict:
    """Environment of a child process: labsupport importable, output unbuffered, no tokenizer-thread warnings."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(repo_root())] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    # torch >= 2.6 loads with weights_only=True by default, which refuses mmengine's own checkpoints
    # (they pickle its HistoryBuffer and numpy scalars): a resume fails. These are the run's own files.
    env.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_command(config: str | os.PathLike, work_dir: str | os.PathLike, nproc: int = 1, deepspeed: int = 0,
                  resume_from: str | os.PathLike | None = None) -> list[str]:
    """The command that runs XTuner's train.py with this kernel's Python (torch.distributed.run when NPROC > 1 or DeepSpeed)."""
    cmd = [sys.executable]
    args = [str(xtuner_tool("train")), str(config), "--work-dir", str(work_dir)]
    if nproc > 1 or deepspeed:
        cmd += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}"]
        args += ["--launcher", "pytorch"]
    if deepspeed:
        args += ["--deepspeed", f"deepspeed_zero{deepspeed}"]
    if resume_from:
        args += ["--resume", str(resume_from)]
    return cmd + args


def multi_gpu_command(config: str | os.PathLike, gpus: int = 8, zero: int = 2, work_dir: str = "work_dirs/run") -> str:
    """The shell command a learner with GPUS GPUs runs (XTuner's CLI, which calls torchrun for NPROC_PER_NODE > 1)."""
    ds = f" --deepspeed deepspeed_zero{zero}" if zero else ""
    return f"NPROC_PER_NODE={gpus} xtuner train {config} --work-dir {work_dir}{ds}"


def latest_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint in WORK_DIR (mmengine's last_checkpoint file first; a save cut short is skipped), or None."""
    return latest_intact_checkpoint(work_dir)


def strip_ansi(text: str) -> str:
    """TEXT without terminal colour codes (mmengine colours its log lines; a notebook would show them raw)."""
    return ANSI_ESCAPE.sub("", text)


_ITER = re.compile(r"Iter\(train\)\s*\[\s*(\d+)\s*/\s*(\d+)\]")
_PAIR = re.compile(r"\b(lr|loss|time|data_time|grad_norm|memory|eta):\s*([-+0-9.eE:]+)")


def parse_log_line(line: str) -> dict | None:
    """The scalars of one mmengine training-log line ({'iter', 'max_iters', 'lr', 'loss', ...}), or None."""
    m = _ITER.search(line)
    if not m:
        return None
    row: dict = {"iter": int(m.group(1)), "max_iters": int(m.group(2))}
    for key, val in _PAIR.findall(line[m.end():]):
        if key == "eta":
            row[key] = val
            continue
        try:
            row[key] = float(val)
        except ValueError:
            continue
    return row if "loss" in row else None


class LivePlot:
    """A matplotlib figure of loss and learning rate that updates in place in a notebook."""

    def __init__(self, title: str = "training"):
        plt = pyplot()  # with the CJK font
        from IPython.display import display

        self.fig, (self.ax_loss, self.ax_lr) = plt.subplots(1, 2, figsize=(10, 3.2))
        self.fig.suptitle(title)
        plt.close(self.fig)
        self.handle = display(self.fig, display_id=True)
        self.last = 0.0

    def update(self, scalars: list[dict], force: bool = False) -> None:
        """Redraw with SCALARS (at most once a second unless FORCE)."""
        if not scalars or (not force and time.time() - self.last < 1.0):
            return
        self.last = time.time()
        it = [r["iter"] for r in scalars]
        self.ax_loss.clear(), self.ax_lr.clear()
        self.ax_loss.plot(it, [r["loss"] for r in scalars], ".-")
        self.ax_loss.set(xlabel="iteration", ylabel="loss", title=f"loss {scalars[-1]['loss']:.3f} at iter {it[-1]}")
        self.ax_loss.set_yscale("log")
        if any("lr" in r for r in scalars):
            self.ax_lr.plot(it, [r.get("lr", float("nan")) for r in scalars], ".-", color="tab:orange")
        self.ax_lr.set(xlabel="iteration", ylabel="learning rate", title="learning rate")
        self.fig.tight_layout()
        if self.handle is not None:  # None outside a notebook front end (a script, a plain python prompt)
            self.handle.update(self.fig)


def _tail(path: Path, n: int = 30) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(lines[-n:])


_ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:[\w.]+\.)?\w*(?:Error|Exception)\b:.*)$")


def root_error(log_text: str) -> str | None:
    """The last exception line of a training log (torch's launcher wrapper skipped), e.g. 'torch.OutOfMemoryError: CUDA out of memory. ...'."""
    found = [m.group(1) for m in map(_ERROR_LINE.match, log_text.splitlines()) if m and "ChildFailedError" not in m.group(1)]
    return found[-1] if found else None


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # mmengine colours its log levels; a saved notebook would show the codes


def _show_line(line: str, state: dict) -> bool:
    """Whether LINE is worth printing in 'progress' mode (iterations, checkpoints, errors and what follows a traceback)."""
    if "Traceback" in line or state.get("error"):
        state["error"] = True
        return True
    keys = ("Iter(train)", "Error", "Saving checkpoint", "Auto resumed", "resumed from", "Load checkpoint",
            "Num train samples", "Start to load")
    return any(k in line for k in keys)


def _die_with_parent() -> None:
    """In the trainer, before it starts (Linux): receive SIGTERM when the launcher dies, even by SIGKILL (the OOM killer)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: the launcher's finally (interrupts, exceptions) still stops the group
    if os.getppid() == 1:  # the launcher already died between fork and prctl
        os.kill(os.getpid(), signal.SIGTERM)


def start_trainer(cmd: list[str], env: dict, cwd: str | os.PathLike) -> subprocess.Popen:
    """Start CMD in its own process group that dies with this process (stdout piped, stderr merged, text lines)."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env,
                            cwd=str(cwd), start_new_session=True, preexec_fn=_die_with_parent)


def stop_trainer(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop PROC and every process of its group (torchrun's workers, data loaders): SIGTERM, then SIGKILL after GRACE s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break  # the whole group is gone
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; its workers may linger a moment
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # nothing left of the group: the normal case
        break


@safe_training  # checks the data with XTuner's own code first; a fresh run keeps the last good one until it succeeds
def launch(config: str | os.PathLike, work_dir: str | os.PathLike, resume: bool = False, nproc: int = 1,
           deepspeed: int = 0, live: bool = True, show: str = "progress", timeout: float | None = None,
           threads: int | str | None = "auto") -> TrainRun:
    """Run XTuner's train.py on CONFIG into WORK_DIR, stream its log, plot the loss, and raise TrainingFailed unless it
    ends with its final checkpoint; then write the completion marker (runs.FINISHED). The trainer dies with the kernel."""
    config, work_dir = Path(config), Path(work_dir)
    if not config.exists():
        raise FileNotFoundError(f"config {config} does not exist: write it first with write_config()")
    work_dir.mkdir(parents=True, exist_ok=True)
    resume_from = None
    if resume:
        resume_from = latest_checkpoint(work_dir)
        if resume_from is None:
            raise FileNotFoundError(f"resume=True, but {work_dir} holds no checkpoint (iter_*.pth): train once first, or set resume=False")
        print(f"[launch] resuming from {resume_from}")
        clear_finished(work_dir)  # unfinished again until this resume writes its final checkpoint
    cmd = train_command(config, work_dir, nproc=nproc, deepspeed=deepspeed, resume_from=resume_from)
    log_path, scalars_path = work_dir / "train.log", work_dir / "scalars.json"
    scalars: list[dict] = []
    if resume and scalars_path.exists():
        start = int(re.findall(r"\d+", resume_from.stem)[0])
        scalars = [r for r in json.loads(scalars_path.read_text()) if r["iter"] <= start]
    plot = LivePlot(f"XTuner: {config.name}") if live else None
    threads = pick_threads(threads) if nproc == 1 and not deepspeed else None
    print("[launch] $ " + (f"OMP_NUM_THREADS={threads} " if threads else "") + " ".join(cmd), flush=True)
    started, state = time.time(), {}
    with open(log_path, "a" if resume else "w", encoding="utf-8") as log:
        proc = start_trainer(cmd, _env(threads), work_dir)
        write_json_atomic(work_dir / LOCK, {"pid": proc.pid, "launcher": os.getpid(), "command": cmd})
        try:
            for line in proc.stdout:
                line = strip_ansi(line)
                log.write(line)
                log.flush()
                row = parse_log_line(line)
                if row:
                    row["seconds"] = round(time.time() - started, 2)
                    scalars.append(row)
                    write_json_atomic(scalars_path, scalars)
                    if plot:
                        plot.update(scalars)
                if show == "all" or (show == "progress" and _show_line(line, state)):
                    print(line.rstrip(), flush=True)
                if timeout and time.time() - started > timeout:
                    stop_trainer(proc)
                    raise TrainingFailed(f"training ran past timeout={timeout}s and was stopped; log: {log_path}")
            proc.wait()
        finally:
            stop_trainer(proc)  # an interrupt or an error here must not leave the trainer writing this work dir
            (work_dir / LOCK).unlink(missing_ok=True)
    seconds = time.time() - started
    if plot:
        plot.update(scalars, force=True)
    if proc.returncode != 0:
        log_text = log_path.read_text(encoding="utf-8", errors="replace")
        cause = root_error(log_text)
        full = f"\n{disk_full(work_dir)}" if "No space left on device" in log_text else ""
        raise TrainingFailed(f"XTuner's train.py exited with status {proc.returncode}"
                             + (f": {cause}" if cause else "") + full + f"\nLast lines of {log_path}:\n{_tail(log_path)}")
    ckpt = latest_checkpoint(work_dir)
    if ckpt is None:
        raise TrainingFailed(f"train.py exited 0 but left no checkpoint in {work_dir}. Last lines of {log_path}:\n"
                             f"{_tail(log_path)}")
    planned = max((r.get("max_iters", 0) for r in scalars), default=0)
    reached = int(m.group(1)) if (m := re.fullmatch(r"iter_(\d+)\.pth", ckpt.name)) else planned
    if reached < planned:
        raise TrainingFailed(f"train.py exited 0 but its last checkpoint {ckpt.name} is iteration {reached} of {planned}: "
                             f"the run did not finish. Last lines of {log_path}:\n{_tail(log_path)}")
    mark_finished(work_dir, ckpt, iterations=reached, seconds=round(seconds, 1))  # last: the run now counts as finished
    print(f"[launch] done in {seconds:.0f} s; checkpoint {ckpt}")
    return TrainRun(work_dir, ckpt, log_path, scalars, seconds, cmd)


# --- conversion ----------------------------------------------------------------------------------

def convert_to_official(config: str | os.PathLike, checkpoint: str | os.PathLike, save_dir: str | os.PathLike,
                        model_path: str | os.PathLike | None = None) -> Path:
    """Merge a trained checkpoint (LoRA merged in) into a Hugging Face folder with XTuner's convert_to_official.py; return SAVE_DIR."""
    config, checkpoint, save_dir = Path(config), Path(checkpoint), Path(save_dir)
    for p, what in ((config, "config"), (checkpoint, "checkpoint")):
        if not p.exists():
            raise FileNotFoundError(f"{what} {p} does not exist")
    tmp = save_dir.with_name(save_dir.name + ".converting")
    pid_file = tmp.with_name(tmp.name + ".pid")
    other = _live_pid(pid_file)
    if other:
        raise RuntimeError(f"another conversion (pid {other}) is writing {tmp}: wait for it, or stop it with "
                           f"`kill {other}`, then run this cell again")
    if tmp.exists():
        print(f"[convert] removing {tmp}, left by a conversion that was killed (the converted folder {save_dir} "
              "was never replaced by it)")
        shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, str(xtuner_tool("convert")), str(config), str(checkpoint), str(tmp)]
    write_json_atomic(pid_file, {"pid": os.getpid()})
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    finally:
        pid_file.unlink(missing_ok=True)
    out = (proc.stdout + proc.stderr).splitlines()
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)  # half a folder helps nobody; the output below says why
        full = f"\n{disk_full(save_dir.parent)}" if "No space left on device" in proc.stdout + proc.stderr else ""
        raise RuntimeError(f"convert_to_official.py failed (exit {proc.returncode}){full}:\n" + "\n".join(out[-30:]))
    weights = list(tmp.glob("*.safetensors")) + list(tmp.glob("*.bin"))
    if not (tmp / "config.json").exists() or not weights:
        raise RuntimeError(f"convert_to_official.py exited 0 but {tmp} lacks config.json or weights:\n" + "\n".join(out[-30:]))
    if model_path is None:
        model_path = load_config(config).model.model_path
    copied = [f.name for f in Path(model_path).glob("*.py") if not (tmp / f.name).exists()]
    for name in copied:
        shutil.copy2(Path(model_path) / name, tmp / name)
    if save_dir.exists():
        shutil.rmtree(save_dir)
    os.replace(tmp, save_dir)
    if copied:
        print(f"[convert] copied the modeling code the script left out: {', '.join(sorted(copied))}")
    return save_dir


def _live_pid(pid_file: Path) -> int | None:
    """The pid in PID_FILE when that process (not this one) is alive, else None."""
    try:
        pid = int(json.loads(pid_file.read_text(encoding="utf-8"))["pid"])
        if pid == os.getpid():
            return None
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plot_scalars(scalars: list[dict], title: str = "training"):
    """Loss and learning rate against iteration from a run's scalars (a finished run's TrainRun.scalars or scalars.json)."""
    plt = pyplot()  # with the CJK font

    if not scalars:
        raise ValueError("no scalars to plot: did the run log any iteration? (log_interval too large?)")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    it = [r["iter"] for r in scalars]
    a.plot(it, [r["loss"] for r in scalars], ".-")
    a.set(xlabel="iteration", ylabel="loss", yscale="log", title="loss")
    b.plot(it, [r.get("lr", float("nan")) for r in scalars], ".-", color="tab:orange")
    b.set(xlabel="iteration", ylabel="learning rate", title="learning rate")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# --- after `!xtuner train` ---------------------------------------------------------------------------

def mmengine_scalars(work_dir: str | os.PathLike) -> list[dict]:
    """The rows of mmengine's own scalars.json in WORK_DIR's newest run folder (<timestamp>/vis_data/), training rows only."""
    files = sorted(Path(work_dir).glob("*/vis_data/scalars.json"))
    if not files:
        return []
    rows = [json.loads(line) for line in files[-1].read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if "loss" in r and "iter" in r]


def finished_run(work_dir: str | os.PathLike, started: float | None = None, seconds: float | None = None) -> TrainRun:
    """Check what `xtuner train` left in WORK_DIR the way an engineer would (it exits 0 even when training failed):
    a checkpoint written after STARTED (time.time()), mmengine's scalars.json read; raise TrainingFailed otherwise."""
    work_dir = Path(work_dir)
    logs = sorted(work_dir.glob("*/*.log"))
    log = logs[-1] if logs else work_dir / "train.log"
    tail = _tail(log) if log.exists() else f"(no log in {work_dir}: did `xtuner train` start at all? look at the cell's output)"
    ckpt = latest_checkpoint(work_dir)
    if ckpt is None:
        cause = root_error(log.read_text(encoding="utf-8", errors="replace")) if log.exists() else None
        raise TrainingFailed(f"`xtuner train` left no checkpoint in {work_dir}" + (f": {cause}" if cause else "")
                             + f"\nLast lines of {log}:\n{tail}")
    if started is not None and ckpt.stat().st_mtime < started:
        raise TrainingFailed(f"the newest checkpoint {ckpt} is older than this run: `xtuner train` wrote none this time. "
                             f"Last lines of {log}:\n{tail}")
    scalars = mmengine_scalars(work_dir)
    if not scalars:
        raise TrainingFailed(f"{work_dir} holds {ckpt.name} but mmengine logged no training iteration "
                             "(vis_data/scalars.json): raise log_processor's window or check the log: " + str(log))
    took = seconds if seconds is not None else (time.time() - started if started is not None else float("nan"))
    return TrainRun(work_dir, ckpt, log, scalars, took, [])
