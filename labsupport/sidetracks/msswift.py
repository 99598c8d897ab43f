"""ms-swift's CLI on the course's InternVL2 models: build a command, run it, read what it wrote.

    cmd = command("sft", model=model_dir, tuner_type="lora", dataset=[train_jsonl], ...)
    print(show(cmd))                           # swift sft \\ --model ... (what a learner types)
    run = run(cmd, ARTIFACTS / "swift" / "sft.log")   # runs it, prints the loss lines, raises on failure
    rows = read_jsonl(Path(out_dir) / "logging.jsonl")

`run` starts ``python -m swift.cli.main`` with this kernel's Python: the entry point behind the
``swift`` console script, so the command works whatever ``PATH`` holds (a Jupyter kernel's PATH
rarely holds its venv's bin/). Everything ms-swift prints goes to a log file; the notebook sees
the lines that matter (loss, the training example, results), never a progress bar.
The rest reads the files ms-swift writes (logging.jsonl, checkpoint-N/, result jsonl files) and the
run notebook 04 left with XTuner, for a side-by-side comparison.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from labsupport.core.checkpoints import write_json_atomic  # noqa: F401  (re-exported for notebooks)
from labsupport.datasets.formats import load_records, to_swift
from labsupport.datasets.learner import read_training_data
from labsupport.evaluate.answers import constant_answer_score, matcher, summarize, with_meta
from labsupport.evaluate.compare import BEFORE_AFTER
from labsupport.evaluate.scoring import score
from labsupport.model.prompts import conversation_template, model_prompt
from labsupport.train.schedule import fit_schedule, steps
from labsupport.train.xtuner import latest_checkpoint
from labsupport.train.xtuner_presets import PresetChoice, preset
from labsupport.train.training_outcome import recorded_train_seconds

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LOSS_LINE = re.compile(r"\{'loss': ")
LOG_STAMP = re.compile(r"^(\d{4}/)?\d\d/\d\d \d\d:\d\d:\d\d - ")  # an mmengine log line
# ms-swift's CLI talks to the ModelScope hub only when asked: --check_model false skips its "is the local
# model the latest?" query, which on a machine without network retries for ~10 s before giving up.
# TRANSFORMERS_VERBOSITY=error keeps transformers' one-time notices (e.g. the v4.47 Cache notice, printed in the
# middle of a streamed reply) out of what ms-swift prints; ms-swift's own log lines are unaffected.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}


class SwiftFailed(RuntimeError):
    """An ms-swift command exited with an error (the message holds the end of its log)."""


@dataclass
class SwiftRun:
    """One finished ms-swift command: what ran, how long it took, where its output is."""

    command: list[str]
    seconds: float
    log: Path
    shown: list[str] = field(default_factory=list)


def command(sub: str, **flags) -> list[str]:
    """`swift SUB --flag value ...` as a list: True/False become true/false, lists become several values, None is left out."""
    out = ["swift", sub]
    for key, value in flags.items():
        if value is None:
            continue
        out.append(f"--{key}")
        values = value if isinstance(value, (list, tuple)) else [value]
        out += [("true" if v else "false") if isinstance(v, bool) else str(v) for v in values]
    return out


def show(cmd: Sequence[str], env: dict | None = None) -> str:
    """CMD as a learner would type it in a shell: environment variables first, one flag per line."""
    prefix = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in (env or {}).items())
    parts, line = [], [shlex.quote(c) for c in cmd[:2]]
    for token in cmd[2:]:
        if token.startswith("--"):
            parts.append(" ".join(line))
            line = [token]
        else:
            line.append(shlex.quote(token))
    parts.append(" ".join(line))
    return (prefix + " " if prefix else "") + " \\\n    ".join(parts)


def python_command(cmd: Sequence[str], python: str | os.PathLike | None = None) -> list[str]:
    """CMD with its leading `swift` replaced by `PYTHON -m swift.cli.main` (the same entry point)."""
    if not cmd or cmd[0] != "swift":
        raise ValueError(f"not a swift command: {cmd!r}; build it with command()")
    return [str(python or sys.executable), "-m", "swift.cli.main", *cmd[1:]]


def clean(line: str) -> str:
    """LINE without ANSI colour codes and without the progress-bar redraws before its last carriage return."""
    return ANSI.sub("", line).rstrip("\n").split("\r")[-1]


SHUTDOWN_GRACE_S = 30  # seconds a swift process may take to exit after its main has returned


def run(cmd: Sequence[str], log_path: str | os.PathLike, env: dict | None = None, threads: int | None = 2,
        show_line: Callable[[str], bool] | None = None, echo: bool = True, python: str | None = None) -> SwiftRun:
    """Run the swift command CMD, its output into LOG_PATH; print the lines SHOW_LINE picks; raise SwiftFailed on failure."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd, result, partial = list(cmd), None, None
    if "--result_path" in cmd:  # swift appends to an existing result file: write a fresh one, swap it in on success
        at = cmd.index("--result_path") + 1
        result = Path(cmd[at])
        partial = result.with_name(result.stem + ".partial" + result.suffix)
        partial.unlink(missing_ok=True)
        cmd[at] = str(partial)
    full_env = {**os.environ, **OFFLINE_ENV, **{k: str(v) for k, v in (env or {}).items()}}
    if threads:
        full_env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    pick = show_line or (lambda s: bool(LOSS_LINE.search(s)))
    shown: list[str] = []
    started = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(python_command(cmd, python), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=full_env, bufsize=1)
        for raw in proc.stdout:
            log.write(raw)
            for piece in ANSI.sub("", raw).replace("\r", "\n").splitlines():
                if piece.strip() and pick(piece):
                    shown.append(piece.strip())
                    if echo:
                        print(piece.strip(), flush=True)
            if "End time of running main" in raw:
                break  # main has returned; a process that then hangs at shutdown must not hold the notebook
        try:
            code = proc.wait(timeout=SHUTDOWN_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()  # seen with `swift infer --stream`: its results were written, then the process spun at exit
            code = proc.wait()
            log.write(f"[labsupport] still running {SHUTDOWN_GRACE_S} s after main ended: stopped\n")
    seconds = time.time() - started
    text = log_path.read_text(encoding="utf-8", errors="replace") if code else ""
    if code and finished_before_exit(text):
        # ms-swift's `main` returned and said so; the process then died while shutting down (a thread still alive at
        # interpreter exit: "terminate called without an active exception"). Its results are written: say so, go on.
        print(f"note: `{' '.join(cmd[:2])}` finished its work, then exited with status {code} while shutting down "
              f"(see the end of {log_path.name}); its results are complete.", flush=True)
        code = 0
    if code:
        tail = "\n".join(clean(l) for l in log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
        raise SwiftFailed(f"`{' '.join(cmd[:2])}` exited with status {code} after {seconds:.0f} s; "
                          f"full log: {log_path}\n--- last lines ---\n{tail}")
    if result is not None:
        os.replace(partial, result)
        cmd[cmd.index("--result_path") + 1] = str(result)
    return SwiftRun(list(cmd), seconds, log_path, shown)


def finished_before_exit(log_text: str) -> bool:
    """Whether a swift log shows `main` ending normally before a crash at shutdown (so its results are complete)."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    ended = next((i for i in range(len(lines) - 1, -1, -1) if "End time of running main" in lines[i]), None)
    return ended is not None and all("terminate called" in line or "Aborted" in line or "[labsupport] still running" in line
                                     for line in lines[ended + 1:])


def loss_row(line: str) -> dict | None:
    """The dict of one `{'loss': ...}` line ms-swift prints while training, or None for any other line."""
    match = re.search(r"\{'loss'.*\}", line)
    if not match:
        return None
    try:
        import ast
        return ast.literal_eval(match.group(0))
    except (ValueError, SyntaxError):
        return None


def write_swift_jsonl(records: str | os.PathLike | list, out_path: str | os.PathLike,
                      image_folder: str | os.PathLike | None = None) -> Path:
    """InternVL records -> ms-swift's {query, response, images} jsonl (course converter), image paths made absolute."""
    if isinstance(records, (str, os.PathLike)):
        image_folder = image_folder or Path(records).parent
        records = load_records(records)
    if image_folder is None:
        raise ValueError("records given as a list: pass image_folder (the folder their image paths are relative to)")
    rows = to_swift(records, keep_extra=False)
    folder = Path(image_folder).resolve()
    for i, row in enumerate(rows):
        row["images"] = [str(folder / p) if not os.path.isabs(p) else p for p in row["images"]]
        missing = [p for p in row["images"] if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"record {i}: image {missing[0]} does not exist; build the course task again "
                                    "(labsupport.datasets.plates.build_course_task) or fix image_folder")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, out)
    return out


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a jsonl file ms-swift wrote (logging.jsonl, infer results); names the file and line when one is bad."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not a JSON line ({exc})") from exc
    return rows


def last_checkpoint(output_dir: str | os.PathLike) -> Path:
    """The checkpoint-N folder with the largest N under OUTPUT_DIR (what `swift sft` saved last)."""
    found = sorted(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    if not found:
        raise FileNotFoundError(f"{output_dir} holds no checkpoint-N folder: `swift sft` did not save one "
                                "(did it fail? read its log)")
    return found[-1]


def model_parameter_info(output_dir: str | os.PathLike) -> dict:
    """Trainable and total parameters as `swift sft` reported them in logging.jsonl (millions, as printed)."""
    for row in read_jsonl(Path(output_dir) / "logging.jsonl"):
        info = row.get("model_parameter_info")
        if info:
            m = re.search(r"([\d.]+)M Params \(([\d.]+)M Trainable", info)
            if m:
                return {"total_m": float(m.group(1)), "trainable_m": float(m.group(2)), "text": info}
    raise ValueError(f"{output_dir}/logging.jsonl has no model_parameter_info row: did `swift sft` finish?")


def adapter_parameters(checkpoint: str | os.PathLike) -> int:
    """Number of parameters saved in an adapter checkpoint (adapter_model.safetensors): what LoRA trained."""
    from safetensors import safe_open

    path = Path(checkpoint) / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: CHECKPOINT must be a checkpoint-N folder of a LoRA run")
    total = 0
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            total += _numel(f.get_slice(key).get_shape())
    return total


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def logged_example(log_path: str | os.PathLike) -> str:
    """The first training sample as `swift sft` logged it ([INPUT] ... up to [LABELS_IDS]), image tokens folded."""
    text = Path(log_path).read_text(encoding="utf-8", errors="replace")
    m = re.search(r"\[INPUT\] (.*?)\n[^\n]*\[LABELS_IDS\]", text, re.S)
    if not m:
        raise ValueError(f"{log_path} has no [INPUT] example: it is not the log of a `swift sft` run")
    return fold_image_tokens(m.group(1))


def fold_image_tokens(text: str) -> str:
    """TEXT with each run of <IMG_CONTEXT> (or ms-swift's '[id * N]') shown as <IMG_CONTEXT>*N."""
    text = re.sub(r"(?:<IMG_CONTEXT>)+", lambda m: f"<IMG_CONTEXT>*{m.group(0).count('<IMG_CONTEXT>')}", text)
    return re.sub(r"<img>\[\d+ \* (\d+)\]</img>", r"<img><IMG_CONTEXT>*\1</img>", text)


def xtuner_example(train_log: str | os.PathLike) -> str:
    """The first training sample XTuner's DatasetInfoHook logged ('train example:' in notebook 04's train.log)."""
    lines = Path(train_log).read_text(encoding="utf-8", errors="replace").splitlines()
    for i, line in enumerate(lines):
        if line.rstrip().endswith("train example:"):
            first = re.sub(r"^.*? - mmengine - INFO - ", "", lines[i + 1])
            body = [first]
            for nxt in lines[i + 2:]:
                if LOG_STAMP.match(nxt):
                    break
                body.append(nxt)
            return fold_image_tokens("\n".join(body))
    raise ValueError(f"{train_log} has no 'train example:' line (XTuner's DatasetInfoHook logs one before training)")


def chat_system_message(model_dir: str | os.PathLike) -> str:
    """The system message the checkpoint's own chat() uses (its conversation.py template named in config.json)."""

    return conversation_template(model_dir).system_message


# ms-swift on the embedded model's plates, 450 steps (XTuner's 3 epochs), one seed: 0.975 held-out with 2 % warm-up,
# 0.833 with 3 % (docs/cpu/tiny-steps.json): too near the 0.9 goal to rest on, so ms-swift keeps 600 steps (0.967).
SWIFT_TINY_STEPS = 600


def swift_schedule(choice: PresetChoice, n_train: int, own_data: bool) -> tuple[dict, list[str]]:
    """Notebook 04's schedule for CHOICE's checkpoint and N_TRAIN records, as swift sft's flag values, with the rules that set it."""
    s, rules = fit_schedule(preset(choice.name), n_train, choice.miniature, own_data, embedded=choice.embedded)
    max_steps = steps(s, n_train)
    if choice.embedded == "tiny" and not own_data and max_steps < SWIFT_TINY_STEPS:
        rules.append(f"ms-swift: {SWIFT_TINY_STEPS} steps instead of XTuner's {max_steps}: on the embedded model at "
                     f"{max_steps} steps its held-out accuracy swung from 0.975 to 0.833 with the warm-up "
                     f"(2 % or 3 %), too near the goal (measured, one seed each)")
        max_steps = SWIFT_TINY_STEPS
    plan = {"max_steps": max_steps, "per_device_train_batch_size": s.batch_size,
            # one swift process: a multi-GPU preset's global batch is kept by accumulating its GPUs' share
            "gradient_accumulation_steps": s.accumulative_counts * s.nproc, "learning_rate": s.lr,
            "lora_rank": s.lora_r, "lora_alpha": s.lora_alpha, "weight_decay": s.weight_decay,
            "warmup_ratio": s.warmup_ratio, "freeze_vit": s.freeze_vit, "max_num": choice.tiles}
    return plan, [f"preset {choice.name}: {choice.reason}"] + rules


def swift_template(model_dir: str | os.PathLike) -> str:
    """ms-swift's template name for an InternVL2 checkpoint: internvl2 (InternLM2 or Qwen2 LLM), internvl2_phi3 (Phi-3 LLM)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    arch = (cfg.get("llm_config", {}).get("architectures") or [""])[0]
    if arch.startswith("Phi3"):
        return "internvl2_phi3"
    if arch.startswith(("InternLM2", "Qwen2")):  # ms-swift's model list: InternVL2-1B (Qwen2), -2B and -8B -> internvl2
        return "internvl2"
    raise ValueError(f"{model_dir}: LLM {arch or '?'} is not InternLM2, Qwen2 or Phi-3; pick ms-swift's --template yourself "
                     "(`swift sft --help`, or ms-swift's list of supported models)")


def responses(result_jsonl: str | os.PathLike) -> list[str]:
    """The generated replies in a `swift infer --result_path` file, in order."""
    return [row["response"] for row in read_jsonl(result_jsonl)]


def score_replies(heldout: Sequence[dict], replies: Sequence[str], scorer: str) -> dict:
    """REPLIES to the HELDOUT records scored with SCORER (labsupport.evaluate.answers): scoring.score's result (rows,
    per kind) plus the headline "metric" and "score" (accuracy; the mean chrF / 100 for open answers) and the "lazy"
    score of the most frequent answer of each kind."""
    records = with_meta(heldout)
    result = score(records, replies, matcher(scorer))
    return {**result, **summarize(result["rows"], scorer), "lazy": constant_answer_score(records, scorer)}


def other_data(artifacts: str | os.PathLike, sha256: str | None) -> str | None:
    """Why notebook 04's run in ARTIFACTS is not on the data this run uses (SHA256 of the learner's DATA, None for the
    plates task), or None when it is the same data (04's record, labsupport.datasets.learner, names what it trained on)."""
    record = read_training_data(artifacts)
    trained = record.get("sha256") if record else None
    if trained == sha256:
        return None
    if sha256 is None:
        return (f"notebook 04 last trained on {record.get('name') or record.get('source')} (DATA), not on the plates "
                f"task: run notebook 04 with DATA empty for the XTuner side")
    had = f"on {record.get('name') or record.get('source')}" if record and trained else "on the plates task (or has not run)"
    return f"notebook 04 last trained {had}, not on this DATA: run notebook 04 with the same DATA for the XTuner side"


def xtuner_side(artifacts: str | os.PathLike, work_dir: str = "xtuner/work_dirs/04_finetune",
                data_sha256: str | None = None) -> dict:
    """What notebook 04's XTuner run left: accuracy after, training seconds, trainable parameters, prompt; 'missing' says
    why not (also when 04 trained on other data than DATA_SHA256, the learner's file; None: the plates task)."""

    artifacts = Path(artifacts)
    wd = artifacts / work_dir
    out: dict = {"work_dir": str(wd)}
    if not wd.is_dir():
        out["missing"] = f"{wd} does not exist: run notebook 04 first for the XTuner side"
        return out
    elsewhere = other_data(artifacts, data_sha256)
    if elsewhere:
        out["missing"] = elsewhere
        return out
    seconds, out["seconds_from"] = recorded_train_seconds(artifacts)   # the xtuner train process's wall seconds
    if seconds is not None:
        out["seconds"] = seconds
    iterations = checkpoint_iterations(wd)
    if iterations:
        out["iterations"] = iterations

    ckpt = latest_checkpoint(wd)
    if ckpt is not None and ckpt.is_file():
        state = xtuner_trained_tensors(ckpt)
        out["trainable"] = sum(v.numel() for v in state.values())
        out["mode"] = "lora" if any("lora_" in k for k in state) else "full"
    if (wd / "train.log").exists():
        try:
            out["prompt"] = xtuner_example(wd / "train.log")
        except ValueError as exc:
            out["prompt_missing"] = str(exc)
    ba = artifacts / BEFORE_AFTER
    if ba.exists():
        data = json.loads(ba.read_text(encoding="utf-8"))
        out["accuracy"] = data["after"]["accuracy"]
    else:
        book = artifacts / "checkpoints" / "04_finetune_xtuner.json"
        detail = book.read_text(encoding="utf-8") if book.exists() else ""
        m = re.search(r"after (\d\.\d+)", detail)
        if m:
            out["accuracy"] = float(m.group(1))
    return out


def checkpoint_iterations(work_dir: Path) -> int | None:
    """The iterations of the newest checkpoint in WORK_DIR (iter_N.pth), or None."""
    ckpt = latest_checkpoint(work_dir)
    m = re.fullmatch(r"iter_(\d+)\.pth", ckpt.name) if ckpt is not None else None
    return int(m.group(1)) if m else None


def chat_prompt(model_dir: str | os.PathLike, question: str, num_patches: int = 1) -> str:
    """The prompt the checkpoint's own chat() builds for QUESTION about one image, image tokens folded."""

    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    size = cfg.get("force_image_size") or cfg["vision_config"]["image_size"]
    tokens = int((size // cfg["vision_config"]["patch_size"]) ** 2 * cfg.get("downsample_ratio", 0.5) ** 2) * num_patches
    prompt = model_prompt(model_dir, "<image>\n" + question, image=False)
    return prompt.replace("<image>", f"<img><IMG_CONTEXT>*{tokens}</img>", 1)


def layout_differences(trained: str, asked: str, query: str, response: str | None = None, bos: str = "<s>") -> list[str]:
    """Where the TRAINED sample's prompt (up to RESPONSE) differs from the ASKED prompt, with QUERY as a placeholder.

    A leading BOS token in TRAINED is ignored: the tokenizer adds it to chat()'s prompt too, after this text."""
    import difflib

    if response is not None and response in trained:
        trained = trained[:trained.rindex(response)]
    trained = trained.removeprefix(bos) if bos and not asked.startswith(bos) else trained
    a, b = trained.replace(query, "{query}"), asked.replace(query, "{query}")
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            out.append(f"{tag}: trained {a[max(0, i1 - 12):i2 + 12]!r} vs chat() {b[max(0, j1 - 12):j2 + 12]!r}")
    return out


def training_prompts(sft_log: str | os.PathLike, train_rows: Sequence[dict], model_dir: str | os.PathLike,
                     xt_side: dict) -> tuple[dict, dict]:
    """The prompt each tool trains or asks with, side by side ({tool: text}: `swift sft`'s logged [INPUT], the model's
    chat() for the same row, notebook 04's XTuner sample), and where each training layout differs from chat()'s."""
    logged = logged_example(sft_log)
    sample = matching_row(logged, train_rows)   # the training row swift sft logged
    prompts = {"ms-swift (swift sft)": logged, "the model's chat()": chat_prompt(model_dir, sample["query"])}
    prompts["XTuner (notebook 04)"] = (xt_side.get("prompt")
                                       or f"(not available: {xt_side.get('missing') or xt_side.get('prompt_missing')})")
    diffs = {}
    for name, text in (("ms-swift", logged), ("XTuner", xt_side.get("prompt"))):
        if text:
            row = matching_row(text, train_rows)
            diffs[name] = layout_differences(text, chat_prompt(model_dir, row["query"]), row["query"], row["response"])
    return prompts, diffs


def adapter_shapes(checkpoint: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in an adapter checkpoint (adapter_model.safetensors)."""
    from safetensors import safe_open

    path = Path(checkpoint) / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: CHECKPOINT must be a checkpoint-N folder of a LoRA run")
    with safe_open(str(path), "pt") as f:
        return {k: tuple(int(s) for s in f.get_slice(k).get_shape()) for k in f.keys()}


def adapter_reference(base: str | os.PathLike, checkpoint: str | os.PathLike):
    """BASE with the LoRA adapter of CHECKPOINT applied by peft, NOT merged (W x + s·B A x at run time): (model, tokenizer)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(base), trust_remote_code=True, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(base), trust_remote_code=True)
    wrapped = PeftModel.from_pretrained(model, str(checkpoint)).eval()
    return wrapped.get_base_model(), tokenizer  # the model itself, with the LoRA layers in place


def side_by_side(xtuner: dict, ms_swift: dict, metric: str = "accuracy") -> str:
    """A Markdown table comparing notebook 04's XTuner run (from xtuner_side) with this ms-swift run (METRIC: the
    scorer's headline, accuracy or chrF)."""
    def cell(d: dict, key: str, fmt: str = "{}") -> str:
        value = d.get(key)
        return fmt.format(value) if value is not None else "—"

    missing = xtuner.get("missing")
    rows = [(f"held-out {metric} (course evaluator)", cell(xtuner, "accuracy", "{:.3f}"), cell(ms_swift, "accuracy", "{:.3f}")),
            ("training seconds", cell(xtuner, "seconds", "{:.0f}"), cell(ms_swift, "seconds", "{:.0f}")),
            ("iterations (steps)", cell(xtuner, "iterations"), cell(ms_swift, "steps")),
            ("seconds per step", cell({"v": xtuner["seconds"] / xtuner["iterations"]} if xtuner.get("seconds") and xtuner.get("iterations") else {}, "v", "{:.2f}"),
             cell({"v": ms_swift["seconds"] / ms_swift["steps"]} if ms_swift.get("seconds") and ms_swift.get("steps") else {}, "v", "{:.2f}")),
            ("trainable parameters", cell(xtuner, "trainable", "{:,}"), cell(ms_swift, "trainable", "{:,}")),
            ("mode", cell(xtuner, "mode"), cell(ms_swift, "mode"))]
    lines = ["| | XTuner (notebook 04) | ms-swift (this notebook) |", "|---|---|---|"]
    lines += [f"| {name} | {x} | {s} |" for name, x, s in rows]
    if missing:
        lines += ["", f"XTuner side not available: {missing}."]
    return "\n".join(lines)


class _Stub:
    """Stands in for a class the unpickler cannot import (mmengine's bookkeeping objects in an XTuner checkpoint)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _StubType(type):
    """A stub class whose attributes are stubs too: torch.save (pickle protocol 2) stores a method such as
    mmengine's HistoryBuffer.min as getattr(HistoryBuffer, "min")."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StubType(name, (_Stub,), {})


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _StubType(name, (_Stub,), {})


_lenient_pickle = types.SimpleNamespace(Unpickler=_LenientUnpickler, load=pickle.load, __name__="lenient_pickle")


def xtuner_trained_tensors(path: str | os.PathLike) -> dict:
    """The tensors an XTuner iter_N.pth holds (only what was trained), readable without mmengine installed."""
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_lenient_pickle)
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def matching_row(logged: str, rows: Sequence[dict]) -> dict:
    """The row of ROWS (swift jsonl) whose query and response both appear in the LOGGED example (longest query first)."""
    for row in sorted(rows, key=lambda r: -len(r["query"])):
        if row["query"] in logged and row["response"] in logged[logged.index(row["query"]):]:
            return row
    raise ValueError("no row's query and response appear in the logged example: was the log written for this dataset?")
