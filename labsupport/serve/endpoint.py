"""The OpenAI-compatible endpoint as a process: LMDeploy's api_server command, start, health, stop, messages."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence
from labsupport.serve.deploy import as_image
from labsupport.model.prompts import read_chat_template


# ---- OpenAI-compatible serving -------------------------------------------------------------------
def image_data_url(image, fmt: str = "JPEG") -> str:
    """IMAGE (path or PIL) as a base64 data: URL, the way OpenAI-style clients send a local picture."""
    import base64
    import io

    buf = io.BytesIO()
    as_image(image).save(buf, format=fmt)
    mime = "jpeg" if fmt.upper() == "JPEG" else fmt.lower()
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def openai_messages(question: str, image=None, max_dynamic_patch: int | None = None) -> list[dict]:
    """A one-turn chat-completions `messages` list: the image (as a data URL, with LMDeploy's tiling knob) first, then the question."""
    if image is None:
        return [{"role": "user", "content": question}]
    url = {"url": image_data_url(image)}
    if max_dynamic_patch:
        url["max_dynamic_patch"] = int(max_dynamic_patch)  # LMDeploy's InternVL reads it beside the url
    return [{"role": "user", "content": [{"type": "image_url", "image_url": url}, {"type": "text", "text": question}]}]


def api_server_command(model_dir: str | os.PathLike, port: int, host: str = "127.0.0.1", model_name: str = "",
                       engine: str = "pytorch", cache_max_entry_count: float = 0.4,
                       session_len: int | None = None) -> list[str]:
    """The `lmdeploy serve api_server` command line (this Python's lmdeploy; the chat template named explicitly)."""
    import sys

    if engine == "auto":
        from lmdeploy.archs import autoget_backend

        engine = autoget_backend(str(model_dir), trust_remote_code=True)
    read_chat_template(model_dir)
    cmd = [sys.executable, "-m", "lmdeploy", "serve", "api_server", str(model_dir),
           "--server-name", host, "--server-port", str(port), "--backend", engine, "--tp", "1",
           "--trust-remote-code", "--chat-template", "hf",  # "hf" = the tokenizer's own template, never a guess
           "--cache-max-entry-count", str(cache_max_entry_count), "--log-level", "ERROR"]
    if model_name:
        cmd += ["--model-name", model_name]
    if session_len:
        cmd += ["--session-len", str(session_len)]
    return cmd


def start_server(cmd: Sequence[str], log_path: str | os.PathLike, env: dict | None = None) -> "subprocess.Popen":
    """Start a server command as a child process in its own process group, output to LOG_PATH (ENV: its environment)."""
    import subprocess

    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")
    try:
        return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    finally:
        log.close()  # the child keeps its own handle


def wait_until_healthy(base_url: str, proc, timeout: float = 600, log_path: str | os.PathLike | None = None,
                       path: str = "/health") -> float:
    """Poll BASE_URL+PATH until it answers 200; returns the seconds waited (raises with the log's tail if it dies).
    PROC is the server's Popen, or its process id (a server started in the background by a `!... &` cell)."""
    import urllib.error
    import urllib.request

    start = time.time()
    while time.time() - start < timeout:
        if not _alive(proc):
            log = Path(log_path) if log_path else None
            tail = (log.read_text(errors="replace")[-3000:] if log.exists() else f"(no log: {log} was never written)") if log else ""
            code = proc.returncode if hasattr(proc, "returncode") else "?"
            raise RuntimeError(f"the server exited with code {code} before it became healthy. "
                               f"Last lines of its log ({log_path}):\n{tail}")
        try:
            with urllib.request.urlopen(base_url.rstrip("/") + path, timeout=5) as resp:
                if resp.status == 200:
                    return round(time.time() - start, 1)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{base_url}{path} did not answer within {timeout:.0f} s; see {log_path}")


def _alive(proc) -> bool:
    """Whether PROC (a Popen or a process id) is still running."""
    if hasattr(proc, "poll"):
        return proc.poll() is None
    try:
        os.kill(int(proc), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child (exited, not yet reaped) is not running
        return Path(f"/proc/{int(proc)}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def stop_server(proc, timeout: float = 30) -> int:
    """Stop a server started by start_server: Ctrl-C first (clean shutdown), then terminate, then kill; returns its exit code."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout)
        except Exception:  # subprocess.TimeoutExpired: escalate to the next signal
            continue
    return proc.wait()


def cpu_server_support(model_dir: str | os.PathLike) -> tuple[bool, str]:
    """Whether `transformers serve` (the OpenAI-compatible server transformers ships) can load MODEL_DIR, and why."""
    import transformers
    from transformers.models.auto import modeling_auto

    multimodal = getattr(modeling_auto, "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES", {})  # transformers 5.x
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    arch, model_type = (config.get("architectures") or ["?"])[0], config.get("model_type", "?")
    if model_type in multimodal or hasattr(transformers, arch):
        return True, f"transformers {transformers.__version__} knows {arch} ({model_type})"
    return False, (f"`transformers serve` ({transformers.__version__}) loads a model as transformers.{arch} or through "
                   f"a model type it knows; {arch} (model_type {model_type!r}) is remote code, so it stops with "
                   f"\"AttributeError: module transformers has no attribute {arch}\" (tried here with 5.23). "
                   "No library here offers an OpenAI-compatible server for this model on a CPU.")
