"""Analytic parameter counts of InternVL2 models (ViT / projector / LLM) from their config.json alone.

    from labsupport.model import params
    params.count_parameters(params.family()["InternVL2-2B"])  # {'vit': ..., 'projector': ..., 'llm': ..., 'total': ...}
    params.count_parameters("artifacts/models/tiny/config.json")

Run ``python -m labsupport.model.params`` for a table of InternVL2-1B/2B/4B/8B against their published sizes.
Every weight matrix and bias is counted from the architecture, no weights are loaded:
  ViT       class token + patch conv + position table, then per layer qkv, proj, fc1, fc2, two norms, two
            layer-scale vectors (and q/k norms when qk_normalization is on);
  projector mlp1 = LayerNorm(4C) -> Linear(4C, D) -> GELU -> Linear(D, D), C = ViT width, 4 = 1/downsample_ratio^2;
  LLM       token embedding, per layer attention (grouped-query: k/v have num_key_value_heads heads) + gated MLP
            (3 matrices) + two RMSNorms, a final norm, and an output head unless it is tied to the embedding.
"""
from __future__ import annotations

import json
import os
from importlib import resources
from typing import Any, Mapping
from labsupport.model.tinymodel import internvl_config

# InternViT-300M-448px's values, used when a vision_config leaves a key out.
VISION_DEFAULTS = {"num_channels": 3, "patch_size": 14, "image_size": 448, "qkv_bias": True,
                   "qk_normalization": False, "norm_type": "layer_norm"}


def _as_dict(config: Any) -> dict:
    """A config given as a dict, a path to config.json (or its folder), or a transformers config object."""
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no config at {path!r}: pass a model folder holding config.json, the file itself, "
                                    "or a dict")
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    raise TypeError(f"cannot read a configuration from {type(config).__name__}: use a dict, a path or a PretrainedConfig")


def _need(cfg: Mapping, key: str, where: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise KeyError(f"{where} has no {key!r}: the parameter count needs it (look at the model's config.json)")
    return cfg[key]


def count_vit(vision_config: Any) -> int:
    """Parameters of an InternViT vision encoder described by VISION_CONFIG."""
    cfg = {**VISION_DEFAULTS, **_as_dict(vision_config)}
    h = _need(cfg, "hidden_size", "vision_config")
    inner = _need(cfg, "intermediate_size", "vision_config")
    layers = _need(cfg, "num_hidden_layers", "vision_config")
    p, size, chans = cfg["patch_size"], cfg["image_size"], cfg["num_channels"]
    norm = 2 * h if cfg["norm_type"] == "layer_norm" else h  # LayerNorm has weight + bias, RMSNorm weight only
    embeddings = h + (chans * p * p * h + h) + ((size // p) ** 2 + 1) * h  # class token, patch conv, positions
    per_layer = (h * 3 * h + (3 * h if cfg["qkv_bias"] else 0)   # attn.qkv
                 + (2 * h if cfg["qk_normalization"] else 0)     # attn.q_norm, attn.k_norm (RMSNorm)
                 + h * h + h                                     # attn.proj
                 + h * inner + inner + inner * h + h             # mlp.fc1, mlp.fc2
                 + 2 * norm                                      # norm1, norm2
                 + 2 * h)                                        # ls1, ls2 (layer scale)
    return embeddings + layers * per_layer


def count_projector(vit_hidden: int, llm_hidden: int, downsample_ratio: float = 0.5) -> int:
    """Parameters of mlp1: LayerNorm(4C) -> Linear(4C, D) -> GELU -> Linear(D, D)."""
    merged = int(vit_hidden * round(1 / downsample_ratio) ** 2)
    return 2 * merged + (merged * llm_hidden + llm_hidden) + (llm_hidden * llm_hidden + llm_hidden)


def _llm_biases(cfg: Mapping) -> tuple[bool, bool, bool]:
    """(q/k/v bias, output-projection bias, MLP bias) for the LLM families InternVL2 uses."""
    kind = (cfg.get("model_type") or "").lower()
    arch = ((cfg.get("architectures") or [""])[0]).lower()
    if kind == "qwen2" or arch.startswith("qwen2"):
        return True, False, False               # Qwen2: biases on q, k, v only
    if kind == "internlm2" or arch.startswith("internlm2"):
        bias = bool(cfg.get("bias", False))     # InternLM2: one flag for wqkv and wo
        return bias, bias, False
    if kind == "phi3" or arch.startswith("phi3"):
        return False, False, False
    bias = bool(cfg.get("attention_bias", False))  # Llama-style
    return bias, bias, bool(cfg.get("mlp_bias", False))


def count_llm(llm_config: Any) -> int:
    """Parameters of a decoder-only LLM (Qwen2, InternLM2, Phi-3, Llama style) described by LLM_CONFIG."""
    cfg = _as_dict(llm_config)
    h = _need(cfg, "hidden_size", "llm_config")
    layers = _need(cfg, "num_hidden_layers", "llm_config")
    heads = _need(cfg, "num_attention_heads", "llm_config")
    kv_heads = cfg.get("num_key_value_heads") or heads
    inner = _need(cfg, "intermediate_size", "llm_config")
    vocab = _need(cfg, "vocab_size", "llm_config")
    head_dim = cfg.get("head_dim") or h // heads
    qkv_bias, o_bias, mlp_bias = _llm_biases(cfg)
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = h * (q + 2 * kv) + ((q + 2 * kv) if qkv_bias else 0) + q * h + (h if o_bias else 0)
    mlp = 3 * h * inner + ((2 * inner + h) if mlp_bias else 0)  # gate, up, down
    per_layer = attention + mlp + 2 * h                           # + two RMSNorms
    embed = vocab * h
    head = 0 if cfg.get("tie_word_embeddings", False) else vocab * h
    return embed + layers * per_layer + h + head


def count_parameters(config: Any) -> dict[str, int]:
    """Parameters of an InternVL model from its config (dict, config.json path or folder, or config object)."""
    cfg = _as_dict(config)
    vision = _need(cfg, "vision_config", "the InternVL config")
    llm = _need(cfg, "llm_config", "the InternVL config")
    vit = count_vit(vision)
    vit_hidden = _as_dict(vision)["hidden_size"]
    llm_hidden = _as_dict(llm)["hidden_size"]
    projector = count_projector(vit_hidden, llm_hidden, cfg.get("downsample_ratio", 0.5))
    lm = count_llm(llm)
    return {"vit": vit, "projector": projector, "llm": lm, "total": vit + projector + lm}


def load_family_file() -> dict:
    """The raw internvl2_family.json shipped with labsupport (configs and their sources)."""
    text = resources.files("labsupport").joinpath("data/internvl2_family.json").read_text(encoding="utf-8")
    return json.loads(text)


def family() -> dict[str, dict]:
    """InternVL2-1B/2B/4B/8B as InternVL-style configs (vision_config, llm_config, downsample_ratio, ...)."""
    raw = load_family_file()
    vision = {k: v for k, v in raw["vision"].items() if not k.startswith("_")}
    out = {}
    for name, spec in raw["models"].items():
        cfg = {k: v for k, v in spec.items() if not k.startswith("_")}
        cfg["vision_config"] = dict(vision)
        out[name] = cfg
    return out


def internvit_6b() -> dict:
    """InternViT-6B-448px-V1.5 (InternVL2-26B's encoder): vision_config, layers before pruning, published size."""
    text = resources.files("labsupport").joinpath("data/internvit_6b.json").read_text(encoding="utf-8")
    return json.loads(text)


def family_table() -> list[dict]:
    """One row per InternVL2 model: its parts, the counted total, the published sizes and the difference (%)."""
    rows = []
    for name, cfg in family().items():
        counts = count_parameters(cfg)
        rows.append({"model": name, "llm_name": cfg["llm_name"], **counts,
                     "published_b": cfg["published_total_b"], "hub_params": cfg["hub_params"],
                     "error_pct": 100 * (counts["total"] - cfg["hub_params"]) / cfg["hub_params"]})
    return rows


def format_count(n: int) -> str:
    """A parameter count for people: 938.2M, 2.21B, 3,456."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n:,}"


def main() -> None:
    """Print the InternVL2 family table: ViT, projector, LLM, total against the published size."""
    header = (f"{'model':<14}{'LLM':<26}{'ViT':>9}{'projector':>11}{'LLM':>9}{'total':>9}"
              f"{'card':>7}{'Hub':>9}{'diff':>8}")
    print(header)
    print("-" * len(header))
    for r in family_table():
        print(f"{r['model']:<14}{r['llm_name']:<26}{format_count(r['vit']):>9}{format_count(r['projector']):>11}"
              f"{format_count(r['llm']):>9}{format_count(r['total']):>9}{r['published_b']:>6.1f}B"
              f"{format_count(int(r['hub_params'])):>9}{r['error_pct']:>+7.1f}%")
    print("card = 'Model Size' in each model card (rounded to 0.1B); Hub = count on the Hugging Face page; "
          "diff = counted vs Hub.")


if __name__ == "__main__":
    main()



# ---- shapes ---------------------------------------------------------------------------------------
def internvl2_4b_config() -> dict:
    """config.json of InternVL2-4B's published shape (from labsupport/data/internvl2_family.json), Phi-3-mini-4k rope."""

    fam = load_family_file()
    v, llm = fam["vision"], fam["models"]["InternVL2-4B"]["llm_config"]
    vision = {k: v[k] for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                                "image_size", "patch_size")}
    lm = {k: llm[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
                              "intermediate_size")}
    lm["max_position_embeddings"] = 4096  # Phi-3-mini-4k; the 128k model adds long-rope scaling on top
    return internvl_config(vision, lm, llm["vocab_size"])


def internvl2_2b_config() -> dict:
    """config.json of InternVL2-2B's published shape (labsupport/data/internvl2_family.json) with the course's InternLM2 LLM."""

    fam = load_family_file()
    v, llm = fam["vision"], fam["models"]["InternVL2-2B"]["llm_config"]
    vision = {k: v[k] for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                                "image_size", "patch_size")}
    lm = {k: llm[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
                              "intermediate_size")}
    lm["max_position_embeddings"] = 32768  # internlm2-chat-1_8b's published value
    return internvl_config(vision, lm, llm["vocab_size"], llm_arch="InternLM2ForCausalLM")
