"""Start from XTuner's own config and change a few lines, each with its reason, then show the diff.

    src = copy_cfg("internlm2_chat_1_8b_qlora_alpaca_e3", ARTIFACTS / "xtuner")   # `xtuner copy-cfg`
    edits = [Edit('max_length = 2048', 'max_length = 512', "short records")]
    cfg = edit_config(src, ARTIFACTS / "xtuner" / "self_e2.py", edits)
    print(explained_diff(src, cfg, edits))                                         # every changed line has a why

The official file stays as XTuner wrote it; the edited copy is a new file, written atomically. An edit whose
`old` text is not found exactly once stops with a message naming the config and the edit, so that a change in
XTuner's file is noticed instead of silently ignored.
"""
from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from labsupport.core.paths import repo_root




@dataclass(frozen=True)
class Edit:
    """Replace OLD (exact text, found once in the config) by NEW, because WHY."""

    old: str
    new: str
    why: str


def xtuner_cli_env() -> dict:
    """Environment in which the `xtuner` command finds this kernel's Python (it runs `python` from PATH)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def xtuner_cli(*args: str, timeout: float = 300, check_output: str | None = None, stdin: str | None = None) -> str:
    """Run `xtuner ARGS...` and return its output; raise when it fails (xtuner exits 0 even then: CHECK_OUTPUT must appear)."""
    exe = Path(sys.executable).parent / "xtuner"
    cmd = [str(exe) if exe.exists() else "xtuner", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=xtuner_cli_env(), timeout=timeout, input=stdin)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 or "Traceback (most recent call last)" in out or (check_output and check_output not in out):
        tail = "\n".join(out.splitlines()[-25:])
        raise RuntimeError(f"`xtuner {' '.join(args)}` failed (exit {proc.returncode}):\n{tail}")
    return out


def copy_cfg(name: str, dest: str | os.PathLike) -> Path:
    """`xtuner copy-cfg NAME DEST`: XTuner's own config, copied unchanged to DEST/NAME_copy.py; return its path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    xtuner_cli("copy-cfg", name, str(dest), check_output="Copy to")
    path = dest / f"{name}_copy.py"
    if not path.exists():
        raise FileNotFoundError(f"xtuner copy-cfg reported success but {path} is missing")
    return path


def apply_edits(text: str, edits: Sequence[Edit], where: str = "config") -> str:
    """TEXT with every edit applied in order; each OLD must occur exactly once (the error names WHERE and the edit)."""
    for k, e in enumerate(edits):
        n = text.count(e.old)
        if n != 1:
            found = "not found" if n == 0 else f"found {n} times"
            raise ValueError(f"{where}: edit {k + 1} ({e.why}) expects {e.old!r} exactly once, {found}. "
                             "Has XTuner's config changed? Update the edit's old text to the line you see there.")
        text = text.replace(e.old, e.new)
    return text


def edit_config(src: str | os.PathLike, dst: str | os.PathLike, edits: Sequence[Edit]) -> Path:
    """Write SRC with EDITS applied to DST (atomically; SRC untouched); return DST."""
    src, dst = Path(src), Path(dst)
    text = apply_edits(src.read_text(encoding="utf-8"), edits, where=str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, dst)
    return dst


def changed_lines(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """The lines unified_diff marks as removed (-) or added (+) between SRC and DST, with their sign."""
    a = Path(src).read_text(encoding="utf-8").splitlines()
    b = Path(dst).read_text(encoding="utf-8").splitlines()
    return [ln for ln in difflib.unified_diff(a, b, lineterm="", n=0)
            if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]


def unexplained(src: str | os.PathLike, dst: str | os.PathLike, edits: Sequence[Edit]) -> list[str]:
    """Changed lines between SRC and DST that no edit's old or new text accounts for (should be empty)."""
    known = {("-", ln.strip()) for e in edits for ln in e.old.splitlines()}
    known |= {("+", ln.strip()) for e in edits for ln in e.new.splitlines()}
    return [ln for ln in changed_lines(src, dst) if (ln[0], ln[1:].strip()) not in known and ln[1:].strip()]


def explained_diff(src: str | os.PathLike, dst: str | os.PathLike, edits: Sequence[Edit]) -> str:
    """The edits as a diff, each block headed by its reason; raises if the files differ in a line no edit explains."""
    stray = unexplained(src, dst, edits)
    if stray:
        raise ValueError(f"{dst} differs from {src} in lines no edit explains: {stray[:5]}")
    blocks = [f"--- {Path(src).name} (XTuner's own)\n+++ {Path(dst).name} (edited)"]
    for k, e in enumerate(edits, 1):
        lines = [f"# [{k}] {e.why}"]
        lines += [ln[0] + " " + ln[1:] for ln in difflib.unified_diff(e.old.splitlines(), e.new.splitlines(), lineterm="", n=0)
                  if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def load(path: str | os.PathLike):
    """Load a config with mmengine's Config, as `xtuner train` does (proves the edited file is a valid config)."""
    from mmengine.config import Config


    if str(repo_root()) not in sys.path:
        sys.path.insert(0, str(repo_root()))
    return Config.fromfile(str(path))

_QUANT = '''        torch_dtype=torch.float16,
        quantization_config=dict(
            type=BitsAndBytesConfig,
            load_in_4bit=True,
            load_in_8bit=False,
            llm_int8_threshold=6.0,
            llm_int8_has_fp16_weight=False,
            bnb_4bit_compute_dtype=torch.float16,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
        ),'''


def xtuner_chat(model_dir: str | os.PathLike, questions: Sequence[str], prompt_template: str = "internlm2_chat",
                extra: Sequence[str] = (), max_new_tokens: int = 48) -> list[str]:
    """Run `xtuner chat MODEL_DIR --prompt-template ...` with QUESTIONS typed on its stdin (RESET between them); return its replies."""
    text = "".join(f"{q}\n\nRESET\n\n" for q in questions) + "EXIT\n\n"
    args = ["chat", str(model_dir), "--prompt-template", prompt_template, "--torch-dtype", "fp32",
            "--max-new-tokens", str(max_new_tokens), "--no-streamer", *extra]
    out = xtuner_cli(*args, stdin=text, check_output="Log: Exit!")
    return parse_chat_transcript(out, len(questions))


# transformers' notice, printed on the input line before the first reply: xtuner chat passes no attention mask
_ATTENTION_NOTICE = re.compile(r"The attention mask is not set and cannot be inferred from input because pad token is "
                               r"same as eos token\..*?reliable results\.\s*", re.S)
_PROMPT_MARK = "double enter to end input (EXIT: exit chat, RESET: reset history) >>> "


def parse_chat_transcript(out: str, n: int) -> list[str]:
    """The N replies in the stdout of a piped `xtuner chat` session (text between one input prompt and the next)."""
    parts = out.split(_PROMPT_MARK)[1:]
    replies = [p.split("Log: History")[0].strip() for p in parts if not p.lstrip().startswith(("Log: History", "Log: Exit"))]
    replies = ["\n".join(ln for ln in _ATTENTION_NOTICE.sub("", r.replace("<|im_end|>", "")).splitlines()
                          if not ln.startswith("Remove the memory of history")).strip() for r in replies]
    if len(replies) < n:
        raise RuntimeError(f"xtuner chat answered {len(replies)} of {n} questions; its output ends with:\n{out[-1500:]}")
    return replies[:n]
