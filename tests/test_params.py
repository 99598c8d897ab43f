"""Tests of labsupport.model.params: analytic counts against hand arithmetic, real modules on the meta device,
and the published sizes of InternVL2-1B/2B/4B/8B."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from labsupport.model import params


def meta_numel(build) -> int:
    """Parameters of the module BUILD() makes, created on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters())  # shared (tied) tensors are counted once


def test_internvit_300m_by_hand():
    # embeddings: class token 1024 + patch conv 3*14*14*1024 + 1024 + positions (32*32 + 1)*1024
    embeddings = 1024 + 3 * 14 * 14 * 1024 + 1024 + 1025 * 1024
    # one layer: qkv 1024x3072 + 3072, proj 1024x1024 + 1024, fc1 1024x4096 + 4096, fc2 4096x1024 + 1024,
    # two LayerNorms 2*(2*1024), two layer-scale vectors 2*1024
    layer = (1024 * 3072 + 3072) + (1024 * 1024 + 1024) + (1024 * 4096 + 4096) + (4096 * 1024 + 1024) + 4 * 1024 + 2 * 1024
    assert params.count_vit(params.family()["InternVL2-1B"]["vision_config"]) == embeddings + 24 * layer == 304_012_288


@pytest.mark.parametrize("d_llm", [896, 2048, 3072, 4096, 64])
def test_projector_matches_the_torch_module(d_llm):
    mlp1 = lambda: nn.Sequential(nn.LayerNorm(4096), nn.Linear(4096, d_llm), nn.GELU(), nn.Linear(d_llm, d_llm))
    assert params.count_projector(1024, d_llm, 0.5) == meta_numel(mlp1)


def _llm(name):
    return params.family()[name]["llm_config"]


@pytest.mark.parametrize("tied", [False, True])
def test_qwen2_count_matches_transformers(tied):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = {k: v for k, v in _llm("InternVL2-1B").items() if k not in ("architectures", "model_type")}
    cfg["tie_word_embeddings"] = tied
    real = meta_numel(lambda: Qwen2ForCausalLM(Qwen2Config(**cfg)))
    assert params.count_llm({**_llm("InternVL2-1B"), "tie_word_embeddings": tied}) == real
    if tied:  # the base Qwen2-0.5B (151936 vocab, tied) is published as 494M parameters
        base = {**_llm("InternVL2-1B"), "vocab_size": 151936, "tie_word_embeddings": True}
        assert abs(params.count_llm(base) / 494e6 - 1) < 0.01


def test_phi3_count_matches_transformers():
    from transformers import Phi3Config, Phi3ForCausalLM

    cfg = {k: v for k, v in _llm("InternVL2-4B").items() if k not in ("architectures", "model_type")}
    real = meta_numel(lambda: Phi3ForCausalLM(Phi3Config(**cfg, pad_token_id=0)))
    assert params.count_llm(_llm("InternVL2-4B")) == real


@pytest.mark.parametrize("name", ["InternVL2-2B", "InternVL2-8B"])
def test_internlm2_count_matches_the_equivalent_llama(name):
    # InternLM2 with bias=False has Llama's shapes (fused wqkv = q, k, v stacked): count the Llama twin.
    from transformers import LlamaConfig, LlamaForCausalLM

    c = _llm(name)
    twin = LlamaConfig(hidden_size=c["hidden_size"], num_hidden_layers=c["num_hidden_layers"],
                       num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
                       intermediate_size=c["intermediate_size"], vocab_size=c["vocab_size"],
                       tie_word_embeddings=False)
    assert params.count_llm(c) == meta_numel(lambda: LlamaForCausalLM(twin))


def test_family_totals_match_the_published_sizes():
    rows = {r["model"]: r for r in params.family_table()}
    assert set(rows) == {"InternVL2-1B", "InternVL2-2B", "InternVL2-4B", "InternVL2-8B"}
    for name, card in [("InternVL2-1B", 0.9), ("InternVL2-2B", 2.2), ("InternVL2-4B", 4.2), ("InternVL2-8B", 8.1)]:
        r = rows[name]
        assert r["total"] == r["vit"] + r["projector"] + r["llm"]
        assert abs(r["total"] / r["hub_params"] - 1) < 0.03, name       # the Hub's finer count
        # the card's 0.1B figures: within 3 %, or within their rounding (0.05B) for 1B (0.938 vs "0.9" is 4 %)
        assert abs(r["total"] / 1e9 - card) <= max(0.03 * card, 0.05), name
    # the LLM is what grows: ViT is shared, the projector stays below 1 %
    assert len({r["vit"] for r in rows.values()}) == 1
    assert all(r["projector"] / r["total"] < 0.01 for r in rows.values())


def test_family_file_records_sources():
    raw = params.load_family_file()
    assert "_source" in raw["vision"]
    for spec in raw["models"].values():
        assert "huggingface.co/OpenGVLab/InternVL2-" in spec["_source"]


def test_count_parameters_reads_a_config_file(tmp_path):
    cfg = params.family()["InternVL2-2B"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert params.count_parameters(tmp_path) == params.count_parameters(tmp_path / "config.json") \
        == params.count_parameters(cfg)


def test_errors_name_the_missing_key(tmp_path):
    cfg = params.family()["InternVL2-2B"]
    del cfg["llm_config"]["hidden_size"]
    with pytest.raises(KeyError, match="hidden_size"):
        params.count_parameters(cfg)
    with pytest.raises(FileNotFoundError, match="config.json"):
        params.count_parameters(tmp_path / "missing")


def test_main_prints_the_table(capsys):
    params.main()
    out = capsys.readouterr().out
    for name in ("InternVL2-1B", "InternVL2-2B", "InternVL2-4B", "InternVL2-8B"):
        assert name in out


def test_tiny_model_count_matches_its_architecture():
    from labsupport.model import tinymodel
    from labsupport.model.remote_code.configuration_internvl_chat import InternVLChatConfig
    from labsupport.model.remote_code.modeling_internvl_chat import InternVLChatModel

    cfg = tinymodel.tiny_config(vocab_size=1000)
    counts = params.count_parameters(cfg)
    with torch.device("meta"):
        model = InternVLChatModel(InternVLChatConfig(**cfg))
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["vit"] == sum(p.numel() for p in model.vision_model.parameters())
    assert counts["projector"] == sum(p.numel() for p in model.mlp1.parameters())


def test_internvit_6b_counts_to_its_published_size():
    big = params.internvit_6b()
    n = params.count_vit(big["vision_config"])
    assert abs(n / 1e6 - big["published_params_m"]) / big["published_params_m"] < 0.01
    assert big["original_layers"] - big["vision_config"]["num_hidden_layers"] == 3
