"""Start from XTuner's own InternVL2 config and edit it line by line, each change with its reason.

    name = official_config_name(model_dir, mode="lora")        # e.g. internvl_v2_internlm2_2b_lora_finetune
    official = copy_official_config(name, ARTIFACTS / "xtuner")  # what `xtuner copy-cfg NAME DIR` writes
    edits = edits_for(settings, official.read_text(), data_root)
    trained = write_edited_config(official, edits, ARTIFACTS / "xtuner" / "trained.py")
    print(config_diff(official, trained))                       # the unified diff a learner reads
    for line, reason in explain_diff(config_diff(official, trained), edits): ...

The official file is never modified: the edited copy is a new file next to it, written atomically.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# XTuner 0.2.0 ships InternVL2 configs for these LLMs (configs/internvl/v2/); the 1B (Qwen2) has none.
_FAMILY = {"InternLM2ForCausalLM": "internlm2", "Phi3ForCausalLM": "phi3"}
_FILE_MODE = {"lora": "lora_finetune", "qlora": "qlora_finetune", "full": "finetune"}


class NoOfficialConfig(ValueError):
    """XTuner 0.2.0 has no InternVL2 config (and no dataset support) for this model's LLM."""


@dataclass
class Edit:
    """Replace the official line OLD (compared without indentation; every occurrence) by NEW lines, for REASON."""

    old: str
    new: list[str]
    reason: str
    count: int = 1  # how many times OLD must occur in the official file
    applied: list[str] = field(default_factory=list)


def llm_architecture(model_path: str | os.PathLike) -> str:
    """The LLM class named in a checkpoint's config.json (llm_config.architectures[0])."""
    cfg = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    return (cfg.get("llm_config", {}).get("architectures") or [""])[0]


def official_config_name(model_path: str | os.PathLike, mode: str = "lora", params: int | None = None) -> str:
    """The name of XTuner's own InternVL2 config for the checkpoint at MODEL_PATH (layout and size) and MODE."""
    arch = llm_architecture(model_path)
    family = _FAMILY.get(arch)
    if family is None:
        raise NoOfficialConfig(
            f"{Path(model_path) / 'config.json'} names the LLM {arch or 'unknown'} (llm_config.architectures); XTuner "
            f"0.2.0 ships InternVL2 configs and dataset support only for {' and '.join(_FAMILY)} (InternVL2-2B/8B/26B "
            "and InternVL2-4B)")
    if mode not in _FILE_MODE:
        raise ValueError(f"mode must be one of {', '.join(_FILE_MODE)}, not {mode!r}")
    if family == "phi3":
        size = "phi3_4b"
    else:  # InternLM2: 2B (and every miniature), 8B (internlm2.5-7b), 26B
        size = "internlm2_2b" if not params or params < 5e9 else ("internlm2_5_8b" if params < 15e9 else "internlm2_26b")
    return f"internvl_v2_{size}_{_FILE_MODE[mode]}"


def official_config_for(model_path: str | os.PathLike, mode: str = "lora", params: int | None = None) -> tuple[str | None, str | None]:
    """(name, None) of XTuner's config for the checkpoint, or (None, why not and what to do) when XTuner 0.2.0 cannot
    train it: the one test of whether the course's XTuner path supports a model (notebook 04 skips training on None)."""
    try:
        return official_config_name(model_path, mode, params), None
    except NoOfficialConfig as exc:
        return None, (f"{exc}. XTuner 0.2.0's InternVL dataset also refuses this LLM (NotImplementedError: a missing "
                      "template branch in xtuner/dataset/internvl_dataset.py), so notebook 04 skips training and 05-07 "
                      "work on the base model. What to do: fine-tune "
                      "InternVL2-2B or -4B with this XTuner, or InternVL2-1B with InternVL's own scripts "
                      "(internvl_chat/shell/internvl2.0/2nd_finetune) or ms-swift (notebook 10 runs it with MODEL_PATH unchanged).")


def xtuner_cli() -> list[str]:
    """The `xtuner` command of this kernel's environment, with that environment's bin/ first on PATH.

    XTuner's CLI runs its tools with whatever `python` comes first on PATH (and exits 0 when that fails).
    """
    bindir = Path(sys.executable).parent
    exe = bindir / "xtuner"
    return ["env", f"PATH={bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            str(exe) if exe.exists() else "xtuner"]


def official_config_path(name: str) -> Path:
    """Where XTuner's package keeps the config NAME (what `xtuner copy-cfg` copies)."""
    import importlib.util

    spec = importlib.util.find_spec("xtuner")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("xtuner is not installed in this environment: use the course env (internvl-course)")
    found = sorted(Path(list(spec.submodule_search_locations)[0], "configs").rglob(f"{name}.py"))
    if not found:
        raise FileNotFoundError(f"XTuner has no config {name}: list them with `xtuner list-cfg -p internvl_v2`")
    return found[0]


def copy_official_config(name: str, out_dir: str | os.PathLike) -> Path:
    """Run `xtuner copy-cfg NAME OUT_DIR` and return the copied file (XTuner names it NAME_copy.py)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(xtuner_cli() + ["copy-cfg", name, str(out_dir)], capture_output=True, text=True)
    path = out_dir / f"{name}_copy.py"
    if proc.returncode != 0 or not path.exists():
        raise RuntimeError(f"`xtuner copy-cfg {name} {out_dir}` failed (exit {proc.returncode}):\n"
                           + (proc.stdout + proc.stderr)[-2000:])
    return path


def _value(text: str, name: str) -> str | None:
    """The right-hand side of the first top-level `NAME = ...` line of TEXT (comment stripped), or None."""
    m = re.search(rf"^{re.escape(name)} = (.+?)(\s+#.*)?$", text, flags=re.M)
    return m.group(1).strip() if m else None


def _line(text: str, name: str) -> str | None:
    """The whole first top-level `NAME = ...` line of TEXT, or None."""
    m = re.search(rf"^{re.escape(name)} = .*$", text, flags=re.M)
    return m.group(0) if m else None


def warmup_ratio_for(ratio: float, samples: int | None, batch: int, epochs: float = 1) -> float:
    """RATIO, raised so that warm-up lasts at least 2 iterations of SAMPLES / BATCH x EPOCHS (mmengine refuses 0, and 1 never warms up)."""
    if not samples:
        return ratio
    iters = max(1, -(-int(samples) // int(batch))) * epochs
    return max(ratio, round(2.0 / iters + 1e-4, 4))


def edits_for(s, official: str, data_root: str | os.PathLike, max_dynamic_patch: int | None = None,
              samples: int | None = None) -> list[Edit]:
    """The edits that turn the OFFICIAL config text into the one that trains settings S on the data under DATA_ROOT (SAMPLES of them)."""
    cpu = s.device == "cpu"
    lora = s.mode in ("lora", "qlora")
    edits: list[Edit] = []

    def setting(name: str, value, reason: str) -> None:
        line = _line(official, name)
        if line is None:
            raise ValueError(f"the official config has no `{name} = ...` line: is it an XTuner 0.2.0 InternVL2 config?")
        comment = line.split("#", 1)[1].strip() if "#" in line and name != "data_path" else ""
        new = f"{name} = {value}" + (f"  # {comment}" if comment else "")
        if _value(official, name) != str(value):
            edits.append(Edit(line, [new], reason))

    setting("path", repr(str(s.model_path)), "MODEL_PATH: the checkpoint to fine-tune (a local folder)")
    setting("data_root", repr(str(Path(data_root)) + "/"), "the course task built above: train.json and images/")
    setting("data_path", 'data_root + "train.json"', "the training records in InternVL's json format")
    setting("image_folder", "data_root", "image paths in train.json are relative to the task folder")
    setting("max_length", s.max_length, "a plates sample is ~300 tokens (256 image tokens per tile + the text)")
    m = None if cpu else s.measured  # the docs/gpu row behind a GPU preset's per-GPU values (labsupport.train.gpu_presets)
    cites = lambda key, value: m is not None and m["settings"].get(key) == value  # noqa: E731
    row = measured_row(m) if m else ""
    setting("batch_size", s.batch_size,
            f"measured: the fastest per-GPU batch that fits {m['gpu_memory_gib']} GiB ({row})" if cites("batch_size", s.batch_size)
            else "samples per step and device (the preset's value)")
    setting("accumulative_counts", s.accumulative_counts,
            f"global batch = {s.batch_size} x {s.nproc} GPU(s) x {s.accumulative_counts} = "
            f"{s.batch_size * s.nproc * s.accumulative_counts}, the preset's global batch (and so its lr): the measured "
            f"per-GPU batch fills it with {s.nproc} GPU(s) and less accumulation" if m
            else "gradient accumulation: global batch = batch x devices x this")
    setting("dataloader_num_workers", s.num_workers,
            "worker processes load images; on a 2-core CPU they only compete with training" if cpu
            else f"measured: {s.num_workers} loader processes ({row})" if cites("num_workers", s.num_workers)
            else "the preset's value")
    setting("max_epochs", s.max_epochs, "passes over the data (iterations = samples x epochs / batch)")
    setting("lr", repr(s.lr), "a model that starts from random weights needs a far larger step than a pretrained one's 1e-6"
            if cpu else "the official recipes' 4e-5 (XTuner's file keeps 1e-6)")
    setting("weight_decay", repr(s.weight_decay), "the preset's value")
    setting("warmup_ratio", repr(warmup_ratio_for(s.warmup_ratio, samples, s.batch_size, s.max_epochs)),
            "at least 2 warm-up iterations: fewer and mmengine refuses the schedule or never warms up")
    setting("save_steps", s.save_steps, "a checkpoint every this many iterations (the resume demonstration resumes from the one before the last)")
    setting("save_total_limit", s.save_total_limit, "keep the last two checkpoints, so a run can resume from the one before")
    if lora:
        for key, val, why in (("r", s.lora_r, "LoRA rank (the LORA_R parameter)"),
                              ("lora_alpha", s.lora_alpha, "LoRA alpha, 2 x rank: the scale alpha/r stays XTuner's 2"),
                              ("lora_dropout", s.lora_dropout, "no dropout: the short run needs every update")):
            old = next((ln for ln in official.splitlines() if ln.strip().startswith(f"{key}=")), None)
            if old and old.strip() != f"{key}={val},":
                edits.append(Edit(old.strip(), [f"{key}={val},"], why))
    if cpu:
        shim = "from labsupport.train.xtuner_shims import CPUInternVL, CourseInternVLDataset"
        edits.append(Edit("from xtuner.model import InternVL_V1_5", ["from xtuner.model import InternVL_V1_5", shim],
                          "the two CPU shim classes below live in labsupport/train/xtuner_shims.py"))
        edits.append(Edit("type=InternVL_V1_5,", ["type=CPUInternVL,  # XTuner's InternVL_V1_5, subclassed",
                                                  "dtype='float32',", f"gradient_checkpointing={s.gradient_checkpointing},"],
                          "shim (a config cannot do it): a one-process gloo group (XTuner calls "
                          "torch.distributed.get_rank() in every step), float32 instead of XTuner's bf16, "
                          "gradient checkpointing off (pointless for a tiny model)"))
        edits.append(Edit("from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR",
                          ["from mmengine.optim import CosineAnnealingLR, LinearLR, OptimWrapper"],
                          "mixed precision (AmpOptimWrapper) asserts a CUDA device"))
        edits.append(Edit("type=AmpOptimWrapper,", ["type=OptimWrapper,"], "plain float32 optimiser steps on a CPU"))
        edits.append(Edit('loss_scale="dynamic",', [], "loss scaling belongs to AmpOptimWrapper"))
        edits.append(Edit('dtype="float16",', [], "autocast dtype belongs to AmpOptimWrapper"))
        edits.append(Edit('randomness = dict(seed=None, deterministic=False)',
                          [f'randomness = dict(seed={s.seed}, deterministic=False)'],
                          "a fixed seed: the accuracy checkpoint then checks a reproducible run"))
    edits += _lever_edits(s)
    if not s.group_by_length:
        edits.append(Edit("from xtuner.dataset.samplers import LengthGroupedSampler",
                          ["from mmengine.dataset import DefaultSampler",
                           "from xtuner.dataset.samplers import LengthGroupedSampler"],
                          "mmengine's random-order sampler, used below"))
        edits.append(Edit("type=LengthGroupedSampler,", ["type=DefaultSampler,", "shuffle=True,"],
                          "batches in random order: every plate costs the same 256 image tokens, so grouping by "
                          "length saves no padding here, and it sorts each batch by its answers' lengths, which "
                          "follow the answers themselves (measured with XTuner, 600 iterations: held-out 0.63 with it, "
                          "0.80 without)"))
        edits.append(Edit('length_property="modality_length",', [], "an argument of LengthGroupedSampler only"))
        edits.append(Edit("per_device_batch_size=batch_size * accumulative_counts,", [],
                          "an argument of LengthGroupedSampler only"))
    if max_dynamic_patch is not None:
        if not cpu:
            edits.append(Edit("from xtuner.model import InternVL_V1_5",
                              ["from xtuner.model import InternVL_V1_5",
                               "from labsupport.train.xtuner_shims import CourseInternVLDataset"],
                              "the dataset shim below lives in labsupport/train/xtuner_shims.py"))
        edits.append(Edit("type=InternVL_V1_5_Dataset,",
                          ["type=CourseInternVLDataset,  # XTuner's InternVL_V1_5_Dataset, subclassed",
                           f"max_dynamic_patch={max_dynamic_patch},"],
                          "shim: XTuner 0.2.0 reads the tiles per image only from the model's config.json; "
                          f"{max_dynamic_patch} tile(s) per image here, and notebook 06 tiles the same"
                          + ("" if cpu else " (the official fine-tune recipes' --max_dynamic_patch 6 for InternVL2, "
                             "which the measured GPU presets ran with; config.json says 12)")))
    return edits


def _lever_edits(s) -> list[Edit]:
    """The GPU speed levers of settings S that XTuner's InternVL_V1_5 fixes (LeverInternVL), each with its measured reason."""
    if s.device == "cpu" or (s.gradient_checkpointing and not s.fused_rmsnorm):
        return []
    m = s.measured  # the docs/gpu row behind a GPU preset's per-GPU values (labsupport.train.gpu_presets)
    cites = lambda key, value: m is not None and m["settings"].get(key) == value  # noqa: E731
    row = measured_row(m) if m else ""
    edits: list[Edit] = []
    lines, whys = ["type=LeverInternVL,  # XTuner's InternVL_V1_5, subclassed"], []
    if not s.gradient_checkpointing:
        lines.append("gradient_checkpointing=False,")
        whys.append(f"measured: {m['why']} ({row}); this GPU has {m['gpu_memory_gib']} GiB"
                    if cites("gradient_checkpointing", False) else "gradient checkpointing off (an override)")
    if s.fused_rmsnorm:
        lines.append("fused_rmsnorm=True,")
        whys.append(f"XTuner's Triton RMSNorm kernel in the LLM, which XTuner's SFT model dispatches and InternVL_V1_5 "
                    f"does not; measured: {m['why']} ({row})" if cites("fused_rmsnorm", True)
                    else "XTuner's Triton RMSNorm kernel in the LLM (an override)")
    edits.append(Edit("from xtuner.model import InternVL_V1_5",
                      ["from xtuner.model import InternVL_V1_5", "from labsupport.train.xtuner_shims import LeverInternVL"],
                      "LeverInternVL lives in labsupport/train/xtuner_shims.py: XTuner's InternVL_V1_5 always switches "
                      "gradient checkpointing on and never uses XTuner's RMSNorm kernel; this subclass takes both "
                      "as parameters"))
    edits.append(Edit("type=InternVL_V1_5,", lines, "; ".join(whys)))
    return edits


def lever_edits(s) -> list[tuple[str, list[str], str]]:
    """A measured GPU preset's speed levers (a lever: a setting that changes speed, not what is learned) as
    (official line, new lines, why) for notebook 04's edit list; [] on a CPU or when the preset needs none."""
    return [(e.old, list(e.new), e.reason) for e in _lever_edits(s)]


def measured_row(m: dict) -> str:
    """The measured docs/gpu row M (a gpu_presets entry's "measured") in words: row, file, tok/s, MFU, peak memory."""
    return (f"row {m['row']} of docs/gpu/{m['file']}: {m['tokens_per_s_per_gpu']:,.0f} tok/s/GPU, MFU {m['mfu']:.1%}, "
            f"peak {m['peak_memory_gib']:.1f} GiB on one H200")


def apply_edits(official: str, edits: list[Edit]) -> str:
    """OFFICIAL config text with EDITS applied (indentation kept); raises when an edit's line is missing or repeated."""
    lines = official.splitlines()
    for e in edits:
        hits = [i for i, ln in enumerate(lines) if ln.strip() == e.old.strip()]
        if len(hits) != e.count:
            raise ValueError(f"edit {e.old!r}: expected {e.count} matching line(s) in the official config, found "
                             f"{len(hits)} (XTuner's file changed? compare it with `xtuner copy-cfg`)")
        for i in reversed(hits):
            indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
            lines[i:i + 1] = [indent + n.lstrip() for n in e.new]
        e.applied = list(e.new)
    return "\n".join(lines) + "\n"


def write_edited_config(official: str | os.PathLike, edits: list[Edit], out: str | os.PathLike) -> Path:
    """Write the OFFICIAL config file with EDITS to OUT (atomically; the official file stays untouched)."""
    out = Path(out)
    text = apply_edits(Path(official).read_text(encoding="utf-8"), edits)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out


def config_diff(official: str | os.PathLike, edited: str | os.PathLike) -> str:
    """The unified diff from the OFFICIAL config file to the EDITED one (what a learner reviews)."""
    a = Path(official).read_text(encoding="utf-8").splitlines()
    b = Path(edited).read_text(encoding="utf-8").splitlines()
    return "\n".join(difflib.unified_diff(a, b, Path(official).name, Path(edited).name, n=0, lineterm=""))


def _reason_of(line: str, edits: list[Edit]) -> tuple[int, str | None]:
    """(index of the edit, its reason) that made the diff line LINE ('-old' / '+new'); (-1, None) if none did."""
    body, side = line[1:].strip(), line[0]
    for i, e in enumerate(edits):
        if (side == "-" and e.old.strip() == body) or (side == "+" and body in [n.strip() for n in e.new]):
            return i, e.reason
    return -1, None


def explain_diff(diff: str, edits: list[Edit]) -> list[tuple[str, str | None]]:
    """Each changed line of DIFF ('-old' / '+new') with the reason of the edit that made it (None: unexplained)."""
    return [(ln, _reason_of(ln, edits)[1]) for ln in diff.splitlines()
            if ln[:1] in "+-" and not ln.startswith(("---", "+++"))]


def diff_table(diff: str, edits: list[Edit]) -> str:
    """DIFF with the lines of each hunk grouped by the edit that made them, each group followed by its reason (↳)."""
    out: list[str] = []

    def flush(hunk: list[str]) -> None:
        groups: dict[int, list[str]] = {}
        for ln in hunk:
            groups.setdefault(_reason_of(ln, edits)[0], []).append(ln)
        for idx, lines in groups.items():
            out.extend(sorted(lines, key=lambda ln: ln[0] != "-"))
            out.append(f"      ↳ {edits[idx].reason if idx >= 0 else 'UNEXPLAINED'}")

    hunk: list[str] = []
    for ln in diff.splitlines():
        if ln.startswith(("---", "+++")):
            out.append(ln)
        elif ln.startswith("@@"):
            flush(hunk)
            hunk = []
            out.append(ln)
        elif ln[:1] in "+-":
            hunk.append(ln)
    flush(hunk)
    return "\n".join(out)
