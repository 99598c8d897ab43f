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
# the linears each width feeds, by the LLM's name for them: (attention in + MLP in, attention out, MLP out)
LINEAR_NAMES = {"InternLM2ForCausalLM": ("wqkv, w1, w3", "wo", "w2"),
                "Qwen2ForCausalLM": ("q_proj, k_proj, v_proj, gate_proj, up_proj", "o_proj", "down_proj"),
                "Phi3ForCausalLM": ("qkv_proj, gate_up_proj", "o_proj", "down_proj"),
                "?": ("the attention's and the MLP's first linears", "the attention's output", "the MLP's output")}


# ---- the group size ------------------------------------------------------------------------------------------
def quantized_widths(model_dir: str | os.PathLike) -> dict[str, int]:
    """The input widths of the LLM's linear layers AWQ packs (its groups run along them), read from config.json."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    llm = cfg.get("llm_config", cfg)
    hidden, inter = int(llm["hidden_size"]), int(llm["intermediate_size"])
    heads = int(llm["num_attention_heads"])
    head_dim = int(llm.get("head_dim") or hidden // heads)
    first, out, down = LINEAR_NAMES.get((llm.get("architectures") or ["?"])[0], LINEAR_NAMES["?"])
    return {f"hidden_size (into {first})": hidden, f"heads x head_dim (into {out})": heads * head_dim,
            f"intermediate_size (into {down})": inter}


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
def smoothing_maps(model_dir: str | os.PathLike) -> tuple[dict, dict]:
    """LMDeploy's own AWQ maps for MODEL_DIR's LLM decoder layer: {norm: [linears]} and {linear: [next linears]}.

    auto_awq divides each norm by a per-channel factor s and multiplies the linears that read it by s (NORM_FCS_MAP),
    then divides a linear's output rows by a second factor and multiplies the next linear's inputs by it (FC_FCS_MAP);
    both maps come from lmdeploy/lite/quantization/awq.py, keyed by the decoder layer's class name."""
    from lmdeploy.lite.quantization.awq import FC_FCS_MAP, NORM_FCS_MAP

    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    arch = (cfg.get("llm_config", cfg).get("architectures") or ["?"])[0]
    layer = arch.replace("ForCausalLM", "DecoderLayer")
    if layer not in NORM_FCS_MAP:
        raise ValueError(f"{model_dir}/config.json: LMDeploy's AWQ has no smoothing map for {layer} (LLM {arch}); "
                         f"it knows {sorted(NORM_FCS_MAP)}")
    return NORM_FCS_MAP[layer], FC_FCS_MAP.get(layer, {})


def smoothing_scales(fp_state: dict, awq_state: dict, layer_prefix: str, fc: str,
                     maps: tuple[dict, dict]) -> "tuple[torch.Tensor, slice] | None":
    """(factor, output rows) for FC: the per-input-channel factor AWQ's smoothing multiplied its weight by, read back
    from the norm it divided, and the output rows that factor describes; None when it cannot be read back.

    The norm factor is fp norm / AWQ norm (MAPS: smoothing_maps). A second, linear-to-linear factor lives only in the
    calibration's activations: the next linear's inputs are not checkable once the layer was smoothed, nor the rows
    it divided (all of them, or the last block of a fused QKV or gate_up, as LMDeploy's smooth_fc_fcs does). LMDeploy
    skips that pair when the first linear is narrower than the next one's input (grouped-query attention)."""
    import torch

    norm_fcs, fc_fcs = maps
    ratio = {norm: fp_state[f"{layer_prefix}.{norm}.weight"].float() / awq_state[f"{layer_prefix}.{norm}.weight"].float()
             for norm in norm_fcs}
    smoothed = any(not torch.allclose(r, torch.ones_like(r), rtol=2e-3) for r in ratio.values())
    factor = next((ratio[norm] for norm, fcs in norm_fcs.items() if fc in fcs), torch.ones(1))
    rows = slice(None)
    for first, nexts in (fc_fcs.items() if smoothed else ()):
        width = fp_state[f"{layer_prefix}.{first}.weight"].shape[0]
        inputs = fp_state[f"{layer_prefix}.{nexts[0]}.weight"].shape[1]
        if width < inputs:
            continue   # LMDeploy leaves this pair alone
        if fc in nexts:
            return None
        if fc == first:
            if width > inputs and width % inputs == 0 and width // inputs in (2, 3):
                rows = slice(0, width - inputs)   # only the last block was divided
            else:
                return None
    return factor, rows


def weight_errors(fp_dir: str | os.PathLike, awq_dir: str | os.PathLike, eps: float = 1e-3) -> list[dict]:
    """Per AWQ linear: max |w - dq| against its 4-bit bound (per group: scale / 2, plus EPS * scale and 2^-9 |w| for the
    float16 arithmetic: LMDeploy quantizes in float16, and the smoothing factor read back from a float16 norm is rounded).

    W is the unquantized fine-tune's weight times the smoothing factor AWQ applied (smoothing_scales), over the output
    rows that factor describes ("rows": checked of all); a layer whose factor cannot be read back has checked=False."""
    import torch

    q = awq_config(awq_dir)
    maps = smoothing_maps(fp_dir)
    fp, awq = read_tensors(fp_dir), read_tensors(awq_dir)
    rows = []
    for name in sorted(k for k in awq if k.endswith(".qweight")):
        prefix = name[: -len(".qweight")]
        layer_prefix, _, fc_tail = prefix.partition(".layers.")
        idx, _, fc = fc_tail.partition(".")
        layer_prefix = f"{layer_prefix}.layers.{idx}"
        dq = dequantize_gemm(awq[name], awq[prefix + ".qzeros"], awq[prefix + ".scales"], q["bits"], q["group_size"])
        scales = awq[prefix + ".scales"].float()                            # [in / group, out]
        readback = smoothing_scales(fp, awq, layer_prefix, fc, maps)
        row = {"layer": prefix, "shape": list(dq.shape), "group_size": q["group_size"], "checked": readback is not None}
        if readback is not None:
            s, out = readback
            w = (fp[prefix + ".weight"].float().t() * s.view(-1, 1)).to(torch.float16).float()[:, out]  # [in, out]
            bound = scales.repeat_interleave(q["group_size"], dim=0)[:, out] * (0.5 + eps) + w.abs() * 2 ** -9
            err = (w - dq[:, out]).abs()
            row.update(max_error=float(err.max()), max_bound=float(bound.max()), rows=f"{w.shape[1]} of {dq.shape[1]}",
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
