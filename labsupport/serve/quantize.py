"""Plumbing for notebook 06b: quantize the course's fine-tune with LMDeploy (AWQ 4-bit weights, KV-cache int8/int4).

The lesson is LMDeploy's own API (`lmdeploy.lite.apis.auto_awq.auto_awq`, `PytorchEngineConfig(model_format="awq",
quant_policy=8)`); this module holds what is not the lesson:

    widths = check_group_size(model_dir, 128)      # raises, naming the widths and the valid choices, before LMDeploy
    loader = course_calib_loader(train_json)        # the signature of LMDeploy's get_calib_loaders, the course's texts
    awq = awq_config(awq_dir)                       # {"bits": 4, "group_size": 128, ...} or None
    w = dequantize_gemm(qweight, qzeros, scales, 4, 128)   # [in, out] floats, LMDeploy's "gemm" packing
    model = load_dequantized(awq_dir)               # the CPU stand-in: AWQ tensors dequantized into a float model
    rows = weight_errors(fp_dir, awq_dir)           # |w - dq| against scale/2 per group, per layer
    folder_bytes(awq_dir), kv_bytes_per_token(config, quant_policy), turbomind_status(model_dir)

Packing (read from lmdeploy/lite/quantization/modules/linear.py, `WeightOnlyQLinear.from_linear` with
awq_layout=True): `qweight` is [in_features, out_features / 8] int32; column c holds the 4-bit values of output
channels 8c..8c+7, nibble i (bits 4i..4i+3) holding channel 8c + [0, 2, 4, 6, 1, 3, 5, 7][i]. `qzeros`
[in/group, out/8] is packed the same way; `scales` is [in/group, out] float16. Weight = (q - zero) * scale, stored
transposed ([in, out]): nn.Linear's weight is its transpose.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence
from labsupport.core.paths import finetuned_dir
from labsupport.evaluate.answers import judge, with_meta
from labsupport.evaluate.measured import format_table, measured_dir
from labsupport.serve import deploy


def turbomind_status(model_dir: str | os.PathLike) -> tuple[bool, str]:
    """Whether LMDeploy's TurboMind engine can serve MODEL_DIR here, and why (detected: GPU, engine library, LLM)."""

    layout = deploy.llm_layout(model_dir)
    if not deploy.lmdeploy_version():
        return False, "lmdeploy is not installed in this environment"
    if layout not in deploy.TURBOMIND_LLMS:
        return False, (f"TurboMind does not implement this checkpoint's LLM {layout} (LMDeploy 0.18 serves InternVL2 "
                       f"with {sorted(deploy.TURBOMIND_LLMS)} there; Phi-3, InternVL2-4B's LLM, only on the PyTorch engine)")
    try:
        import lmdeploy.turbomind._turbomind  # noqa: F401 - the engine library: CUDA 12's cuBLAS and the driver
    except ImportError as exc:
        return False, (f"the TurboMind engine library does not load here ({exc}); it links CUDA 12's libcublas.so.12, "
                       "libcublasLt.so.12 and libcudart.so.12 and the NVIDIA driver's libcuda.so.1")
    if not deploy.cuda_available():
        return False, "no CUDA GPU is visible"
    return True, f"TurboMind's library loads, a CUDA GPU is visible and it implements {layout}"


def awq_blocker(model_dir: str | os.PathLike) -> str:
    """Why LMDeploy's auto_awq cannot build and save MODEL_DIR with this environment's transformers, or "" if nothing known stops it.

    auto_awq builds the model from the checkpoint's own code and ends with save_pretrained. Published InternVL2 code,
    written for transformers 4.37-4.4x, breaks one or the other under transformers 5 (seen with the official-format
    miniatures: InternVL2-4B's modeling_phi3.py reads config.rope_scaling['type'] while building; InternLM2's modeling
    file declares _tied_weights_keys as a list, which transformers 5's save_pretrained reads as a dict)."""
    import inspect
    import sys

    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    version = transformers.__version__
    fix = (f"What to do: run auto_awq where transformers is a 4.x release this code was written for (LMDeploy 0.18 "
           f"accepts 4.56 and later; the course did not test this code there), or read what AWQ costs on InternVL2-2B's "
           f"shape from the GPU rows below.")
    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=True)
    llm_config = getattr(config, "llm_config", config)
    arch = (llm_config.architectures or ["?"])[0]
    chat_class = get_class_from_dynamic_module(config.auto_map["AutoModel"], str(model_dir)) \
        if "AutoModel" in getattr(config, "auto_map", {}) else None
    # the LLM class the chat model's own module builds (its modeling_internlm2.py / modeling_phi3.py, or transformers')
    llm_class = getattr(sys.modules[chat_class.__module__], arch, None) if chat_class else None
    llm_class = llm_class or getattr(transformers, arch, None)
    if llm_class is None:
        return ""   # nothing to check here; auto_awq names an unknown LLM itself
    try:
        with torch.device("meta"):   # the classes and their __init__, no weights
            model = llm_class(llm_config)
    except Exception as exc:  # noqa: BLE001 -- the checkpoint's own code failed: named here, where auto_awq would fail
        return (f"transformers {version} cannot build {arch} from {model_dir}'s own code "
                f"({type(exc).__name__}: {exc}). {fix}")
    if int(version.split(".")[0]) >= 5:
        for module in model.modules():
            keys = vars(type(module)).get("_tied_weights_keys")
            if isinstance(keys, (list, tuple)) and keys:
                where = Path(inspect.getsourcefile(type(module)) or "?").name
                return (f"{type(module).__name__} ({where}) declares _tied_weights_keys as a list, the transformers 4 form; "
                        f"transformers {version}'s save_pretrained, which auto_awq ends with, needs a dict. {fix}")
    return ""


def flips(asked: Sequence[dict], before: Sequence[str], after: Sequence[str], scorer: str = "exact") -> list[dict]:
    """The held-out questions whose verdict under SCORER (evaluate.answers) changed between BEFORE and AFTER."""

    out = []
    for rec, b, a in zip(with_meta(asked), before, after):
        ok_b, ok_a = judge(scorer, b, rec["meta"])[0], judge(scorer, a, rec["meta"])[0]
        if ok_b != ok_a:
            out.append({"id": rec.get("id"), "kind": rec["meta"]["kind"], "reference": rec["meta"]["answer"],
                        "before": b, "after": a, "change": "right -> wrong" if ok_b else "wrong -> right"})
    return out


def per_kind(asked: Sequence[dict], answers: Sequence[str], scorer: str = "exact") -> dict[str, float]:
    """{question kind: share right} of ANSWERS to ASKED under SCORER (the plates' kinds, or "all"), plus "all"."""

    ok: dict[str, list[bool]] = {}
    for rec, a in zip(with_meta(asked), answers):
        ok.setdefault(rec["meta"]["kind"], []).append(judge(scorer, a, rec["meta"])[0])
    out = {k: sum(v) / len(v) for k, v in sorted(ok.items())}
    out["all"] = sum(sum(v) for v in ok.values()) / max(sum(len(v) for v in ok.values()), 1)
    return out


# ---- where things go, what was measured ---------------------------------------------------------------------------
AWQ_RESULTS_JSON = "results/awq.json"   # notebook 06b: accuracy before/after, sizes, settings (07's AWQ card reads it)


def awq_model_dir(artifacts: str | os.PathLike, model_path: str | os.PathLike = "tiny") -> Path:
    """Where notebook 06b writes the AWQ model of notebook 05's fine-tune: ARTIFACTS/models/<model name>-finetuned-awq."""

    ft = finetuned_dir(artifacts, model_path)
    return ft.with_name(ft.name + "-awq")


def measured_rows(folder: str | os.PathLike | None = None) -> list[dict]:
    """The rows of every bench-quant-*.json in FOLDER (default docs/gpu), each with the file and the machine it came from."""

    folder = Path(folder) if folder else measured_dir()
    rows = []
    for path in sorted(folder.glob("bench-quant-*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for r in data.get("rows", []):
            rows.append({**r, "file": path.name, "machine": path.stem.rsplit("-", 1)[-1], "gpu": data.get("gpu"),
                         "bandwidth_bytes_per_s": (data.get("bandwidth") or {}).get("bandwidth_bytes_per_s"),
                         "cache_max_entry_count": data.get("cache_max_entry_count"),
                         "awq_build_s": data.get("awq_build_s")})
    return rows


def measured_table(rows: Sequence[dict]) -> str:
    """ROWS (measured_rows) as a text table: size on disk, GPU memory, batch-1 decode, 64-request throughput."""

    cols = [("row", "row"), ("machine", "machine"), ("disk_gib", "disk GiB"), ("gpu_used_gib", "GPU GiB used"),
            ("kv_bytes_per_token", "KV bytes/token"), ("ttft_ms", "TTFT ms"), ("decode_tokens_per_s", "decode tok/s"),
            ("x_bf16_decode", "x bf16 decode"), ("throughput_tokens_per_s", "64 requests tok/s"), ("x_bf16_batch", "x bf16 batch"),
            ("note", "note")]
    out = []
    for r in rows:
        base = next((b for b in rows if b["file"] == r["file"] and b["row"] == "bf16" and not b.get("error")), None)
        row = dict(r, disk_gib=r.get("disk_bytes", 0) / 2**30 if r.get("disk_bytes") else None,
                   ttft_ms=1000 * r["ttft_s"] if r.get("ttft_s") else None,
                   note=(r.get("error") or "").splitlines()[0][:50] if r.get("error") else "")
        if base and r.get("decode_tokens_per_s") and base.get("decode_tokens_per_s"):
            row["x_bf16_decode"] = r["decode_tokens_per_s"] / base["decode_tokens_per_s"]
            row["x_bf16_batch"] = r["throughput_tokens_per_s"] / base["throughput_tokens_per_s"]
        out.append(row)
    return format_table(out, cols, digits=2)


def decode_step_budget(decode_tokens_per_s: float, weight_bytes: float, bandwidth_bytes_per_s: float) -> dict:
    """One batch-1 decode step split into reading the LLM's weights (bytes / bandwidth) and the rest (host work, kernels)."""
    step = 1.0 / decode_tokens_per_s
    read = weight_bytes / bandwidth_bytes_per_s
    return {"step_ms": 1000 * step, "read_ms": 1000 * read, "other_ms": 1000 * (step - read),
            "read_share": read / step}


def gpu_memory_used(device: int = 0) -> int:
    """Bytes in use on GPU DEVICE, every process counted (total - free, as nvidia-smi reports it)."""
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return int(total - free)


if __name__ == "__main__":  # python -m labsupport.serve.quantize: the measured GPU rows kept in docs/gpu
    _rows = measured_rows()
    print(measured_table(_rows) if _rows else "no docs/gpu/bench-quant-*.json yet: bash benchmarks/device/run_gpu.sh quant2b")
