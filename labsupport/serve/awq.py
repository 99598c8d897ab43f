"""AWQ's 4-bit tensors as LMDeploy writes them: the group-size check, the course's calibration loader, unpacking and
dequantizing (the CPU stand-in loads an AWQ folder as float), the per-group error bound, KV-cache bytes per token."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble i of a packed int32 holds output channel 8c + AWQ_ORDER[i]
GROUP_CHOICES = (32, 64, 128)         # group sizes LMDeploy's AWQ kernels tile by (powers of two; 128 is its default)
CALIB_STATS = ("inputs_stats.pth", "outputs_stats.pth")  # what auto_awq leaves in its work dir besides the model
WEIGHT_SUFFIXES = (".safetensors", ".bin")


# ---- the group size ------------------------------------------------------------------------------------------
def quantized_widths(model_dir: str | os.PathLike) -> dict[str, int]:
    """The input widths of the LLM's linear layers AWQ packs (its groups run along them), read from config.json."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    llm = cfg.get("llm_config", cfg)
    hidden, inter = int(llm["hidden_size"]), int(llm["intermediate_size"])
    heads = int(llm["num_attention_heads"])
    head_dim = int(llm.get("head_dim") or hidden // heads)
    return {"hidden_size (into wqkv, w1, w3)": hidden, "heads x head_dim (into wo)": heads * head_dim,
            "intermediate_size (into w2)": inter}


def valid_group_sizes(model_dir: str | os.PathLike, choices: Sequence[int] = GROUP_CHOICES) -> list[int]:
    """The group sizes among CHOICES that divide every width AWQ quantizes in MODEL_DIR."""
    widths = quantized_widths(model_dir).values()
    return [g for g in choices if all(w % g == 0 for w in widths)]


def check_group_size(model_dir: str | os.PathLike, w_group_size: int) -> dict[str, int]:
    """The widths W_GROUP_SIZE must divide; raises ValueError naming them and the valid choices when it does not.

    LMDeploy's own check is a bare `assert org_w_shape[-1] % w_group_size == 0` deep in quant_weights, after the
    model has loaded and calibrated (an AssertionError with no message)."""
    widths = quantized_widths(model_dir)
    bad = {k: w for k, w in widths.items() if w_group_size <= 0 or w % w_group_size}
    if bad or w_group_size not in GROUP_CHOICES:
        valid = valid_group_sizes(model_dir)
        why = (f"it does not divide {', '.join(f'{k} = {w}' for k, w in bad.items())}" if bad else
               f"LMDeploy's AWQ kernels take {list(GROUP_CHOICES)}")
        raise ValueError(f"w_group_size={w_group_size} cannot quantize {model_dir}: {why}. A group of that many input "
                         "channels shares one scale and one zero, so it must divide every input width AWQ packs "
                         f"({', '.join(f'{k} {w}' for k, w in widths.items())}). Valid choices here: {valid or 'none'}; "
                         "set W_GROUP_SIZE to one of them (128 is LMDeploy's default for real sizes).")
    return widths


# ---- calibration data ----------------------------------------------------------------------------------------
def calibration_texts(train_json: str | os.PathLike, tokenizer=None) -> list[str]:
    """The training conversations of TRAIN_JSON as text (through TOKENIZER's chat template when it has one)."""
    path = Path(train_json)
    if not path.is_file():
        raise FileNotFoundError(f"calibration data {path} does not exist: run notebook 04 first (it builds the training "
                                "json), or point CALIB_DATA at an InternVL-format json/jsonl")
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        records = json.loads(path.read_text(encoding="utf-8"))
    texts = []
    for i, rec in enumerate(records):
        turns = rec.get("conversations")
        if not turns:
            raise ValueError(f"{path} record #{i} has no 'conversations': is it an InternVL-format file?")
        messages = [{"role": "user" if t["from"] == "human" else "assistant",
                     "content": t["value"].replace("<image>", "").strip()} for t in turns]
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        else:
            texts.append("\n".join(m["content"] for m in messages))
    return texts


def course_calib_loader(train_json: str | os.PathLike) -> Callable:
    """A drop-in for lmdeploy.lite.utils.get_calib_loaders(name, tokenizer, nsamples, seed, seqlen) that reads the course's
    own training conversations instead of downloading a Hub dataset (the name is ignored): NSAMPLES windows of SEQLEN
    token ids ([1, seqlen] tensors), cut at random places of the joined texts, as LMDeploy cuts wikitext2."""

    def get_calib_loaders(name, tokenizer, nsamples=128, seed=0, seqlen=2048):
        import random

        texts = calibration_texts(train_json, tokenizer)
        ids = tokenizer("\n\n".join(texts), return_tensors="pt", add_special_tokens=False).input_ids
        if ids.shape[1] <= seqlen:
            raise ValueError(f"{train_json} holds {ids.shape[1]} tokens, fewer than one calibration sequence of "
                             f"calib_seqlen={seqlen}: lower CALIB_SEQLEN or calibrate on more data")
        rng = random.Random(seed)
        starts = [rng.randint(0, ids.shape[1] - seqlen) for _ in range(nsamples)]
        get_calib_loaders.last = {"texts": len(texts), "tokens": int(ids.shape[1]), "starts": starts}
        return [ids[:, s:s + seqlen] for s in starts]

    get_calib_loaders.source = str(train_json)
    return get_calib_loaders


def tidy_work_dir(awq_dir: str | os.PathLike, keep_in: str | os.PathLike) -> list[Path]:
    """Move auto_awq's calibration statistics out of the model folder into KEEP_IN (they are not part of the model)."""
    moved = []
    Path(keep_in).mkdir(parents=True, exist_ok=True)
    for name in CALIB_STATS:
        src = Path(awq_dir) / name
        if src.is_file():
            dst = Path(keep_in) / name
            os.replace(src, dst)
            moved.append(dst)
    return moved


# ---- reading an AWQ folder -----------------------------------------------------------------------------------
def awq_config(model_dir: str | os.PathLike) -> dict | None:
    """The AWQ quantization_config of MODEL_DIR (in llm_config for InternVL, or at the top), or None when not AWQ."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text(encoding="utf-8"))
    for where in (cfg.get("llm_config") or {}, cfg):
        q = where.get("quantization_config")
        if isinstance(q, dict) and q.get("quant_method") == "awq":
            return q
    return None


def is_awq(model_dir: str | os.PathLike) -> bool:
    """True when MODEL_DIR is an AWQ checkpoint (what auto_awq writes)."""
    return awq_config(model_dir) is not None


def folder_bytes(model_dir: str | os.PathLike) -> int:
    """Bytes of the weight files (*.safetensors, *.bin) in MODEL_DIR: its size on disk as a model."""
    return sum(p.stat().st_size for p in Path(model_dir).iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def read_tensors(model_dir: str | os.PathLike) -> dict:
    """Every tensor of MODEL_DIR's safetensors files, by name."""
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir} has no *.safetensors file: is it a model folder?")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def unpack_int4(packed: "torch.Tensor") -> "torch.Tensor":
    """[rows, cols] int32 in AWQ's gemm packing -> [rows, 8 * cols] int values 0..15 in output-channel order."""
    import torch

    shifts = torch.arange(0, 32, 4, device=packed.device)
    nibbles = (packed.unsqueeze(-1) >> shifts) & 0xF           # [rows, cols, 8]: nibble i
    out = torch.empty_like(nibbles)
    out[..., AWQ_ORDER] = nibbles                              # channel AWQ_ORDER[i] <- nibble i
    return out.reshape(packed.shape[0], -1)


def dequantize_gemm(qweight, qzeros, scales, bits: int = 4, group_size: int = 128) -> "torch.Tensor":
    """The float weight [in_features, out_features] of one AWQ "gemm" linear: (q - zero) * scale per group of input channels."""
    import torch

    if bits != 4:
        raise ValueError(f"bits={bits}: LMDeploy's AWQ layout packs 4-bit weights only")
    q = unpack_int4(qweight).float()                           # [in, out]
    z = unpack_int4(qzeros).float()                            # [in / group, out]
    in_features = q.shape[0]
    if in_features % group_size or z.shape[0] != in_features // group_size:
        raise ValueError(f"qweight has {in_features} input rows and qzeros {z.shape[0]} groups: that is not "
                         f"group_size={group_size} (read it from config.json's quantization_config)")
    s = scales.float()
    w = (q.view(-1, group_size, q.shape[1]) - z[:, None, :]) * s[:, None, :]
    return w.reshape(in_features, -1).to(torch.float32)


def dequantized_state(model_dir: str | os.PathLike, dtype=None) -> dict:
    """MODEL_DIR's tensors with every AWQ linear (prefix.qweight/.qzeros/.scales) replaced by its float prefix.weight."""
    import torch

    dtype = dtype or torch.float32
    q = awq_config(model_dir)
    if q is None:
        raise ValueError(f"{model_dir}/config.json has no AWQ quantization_config: not an auto_awq folder")
    if q.get("version", "gemm") != "gemm" or not q.get("zero_point", True):
        raise ValueError(f"{model_dir}: only AWQ version 'gemm' with zero points is read here (LMDeploy's auto_awq "
                         f"default), not {q}")
    state = read_tensors(model_dir)
    out = {}
    for name, tensor in state.items():
        if name.endswith(".qweight"):
            prefix = name[: -len(".qweight")]
            w = dequantize_gemm(tensor, state[prefix + ".qzeros"], state[prefix + ".scales"], q["bits"], q["group_size"])
            out[prefix + ".weight"] = w.t().contiguous().to(dtype)
        elif not name.endswith((".qzeros", ".scales")):
            out[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return out


def load_dequantized(model_dir: str | os.PathLike, dtype=None):
    """The InternVL model of an AWQ folder with its 4-bit linears dequantized to DTYPE (float32 default): what the CPU
    stand-in runs. The folder's own remote code builds the model; the weights are loaded strictly (no key left out)."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModel

    dtype = dtype or torch.float32
    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=True)
    for part in (config, getattr(config, "llm_config", None)):
        if part is not None and hasattr(part, "quantization_config"):
            delattr(part, "quantization_config")  # the float model this builds is not quantized any more
    kwargs = {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": dtype}
    model = AutoModel.from_config(config, trust_remote_code=True, **kwargs)
    state = dequantized_state(model_dir, dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq")]
    if missing or unexpected:
        raise RuntimeError(f"{model_dir}: the dequantized tensors do not fit the model its config builds (missing "
                           f"{missing[:4]}, unexpected {unexpected[:4]}); was it written by lmdeploy's auto_awq?")
    return model.to(dtype).eval()


# ---- the dequantization check ----------------------------------------------------------------------------------
def smoothing_scales(fp_state: dict, awq_state: dict, layer_prefix: str, fc: str) -> "torch.Tensor | None":
    """The per-input-channel factor AWQ's smoothing multiplied FC's weight by, read back from the norm it divided, or None.

    LMDeploy (lmdeploy/lite/quantization/awq.py, NORM_FCS_MAP) divides InternLM2's attention_norm by s and multiplies
    wqkv's input channels by s (ffn_norm with w1 and w3 likewise). Then (FC_FCS_MAP) it divides w3's output rows by a
    second factor and multiplies w2's input channels by it: the saved folder cannot give that one back exactly, so w2
    and w3 are checked only when nothing was smoothed (calib_samples=0). wo is left alone (factor 1)."""
    import torch

    if fc == "attention.wo":
        return torch.ones(1)
    ffn = fp_state[f"{layer_prefix}.ffn_norm.weight"].float() / awq_state[f"{layer_prefix}.ffn_norm.weight"].float()
    smoothed = not torch.allclose(ffn, torch.ones_like(ffn), rtol=2e-3)
    if fc == "attention.wqkv":
        key = f"{layer_prefix}.attention_norm.weight"
        return fp_state[key].float() / awq_state[key].float()
    if fc == "feed_forward.w1" or (fc in ("feed_forward.w3", "feed_forward.w2") and not smoothed):
        return ffn if fc != "feed_forward.w2" else torch.ones(1)
    return None


def weight_errors(fp_dir: str | os.PathLike, awq_dir: str | os.PathLike, eps: float = 1e-3) -> list[dict]:
    """Per AWQ linear: max |w - dq| against its 4-bit bound (per group: scale / 2, plus EPS * scale and 2^-9 |w| for the
    float16 arithmetic: LMDeploy quantizes in float16, and the smoothing factor read back from a float16 norm is rounded).

    W is the unquantized fine-tune's weight times the smoothing factor AWQ applied (smoothing_scales); a layer whose
    factor cannot be read back is reported with checked=False."""
    import torch

    q = awq_config(awq_dir)
    fp, awq = read_tensors(fp_dir), read_tensors(awq_dir)
    rows = []
    for name in sorted(k for k in awq if k.endswith(".qweight")):
        prefix = name[: -len(".qweight")]
        layer_prefix, _, fc_tail = prefix.partition(".layers.")
        idx, _, fc = fc_tail.partition(".")
        layer_prefix = f"{layer_prefix}.layers.{idx}"
        dq = dequantize_gemm(awq[name], awq[prefix + ".qzeros"], awq[prefix + ".scales"], q["bits"], q["group_size"])
        scales = awq[prefix + ".scales"].float()                            # [in / group, out]
        s = smoothing_scales(fp, awq, layer_prefix, fc)
        row = {"layer": prefix, "shape": list(dq.shape), "group_size": q["group_size"], "checked": s is not None}
        if s is not None:
            w = (fp[prefix + ".weight"].float().t() * s.view(-1, 1)).to(torch.float16).float()  # [in, out], as quantized
            bound = scales.repeat_interleave(q["group_size"], dim=0) * (0.5 + eps) + w.abs() * 2 ** -9
            err = (w - dq).abs()
            row.update(max_error=float(err.max()), max_bound=float(bound.max()),
                       worst_ratio=float((err / bound).max()), within=bool((err <= bound).all()))
        rows.append(row)
    return rows


# ---- memory, engines ---------------------------------------------------------------------------------------------
KV_BYTES = {0: 2.0, 8: 1.0, 4: 0.5}  # bytes per cached K or V value: bf16/fp16, int8, int4 (quant_policy)


def kv_bytes_per_token(model_dir: str | os.PathLike, quant_policy: int = 0) -> float:
    """Bytes the KV cache holds per token for MODEL_DIR's LLM at QUANT_POLICY (0: 16-bit, 8: int8, 4: int4), scales left out:
    2 (K and V) x layers x KV heads x head_dim x bytes per value."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    llm = cfg.get("llm_config", cfg)
    heads = int(llm["num_attention_heads"])
    kv_heads = int(llm.get("num_key_value_heads") or heads)
    head_dim = int(llm.get("head_dim") or int(llm["hidden_size"]) // heads)
    if quant_policy not in KV_BYTES:
        raise ValueError(f"quant_policy={quant_policy}: LMDeploy's KV-cache settings are 0 (off), 8 (int8) and 4 (int4)")
    return 2 * int(llm["num_hidden_layers"]) * kv_heads * head_dim * KV_BYTES[quant_policy]
