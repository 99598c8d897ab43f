"""Tests of labsupport.train.memory: the ZeRO model-state formulas, parameter counts, and the table."""
import pytest

from labsupport.train import memory as M

GB = 1024**3


@pytest.mark.parametrize("zero,gpus", [(1, 8), (2, 8), (3, 8), (3, 2)])
def test_model_states_follow_the_zero_paper_plus_deepspeeds_fp32_gradients(zero, gpus):
    """Fully trainable model (full mode, ViT unfrozen): the ZeRO paper's 2P + 2P + 12P, sharded by stage, plus the
    4P of fp32 gradients DeepSpeed's optimizer step holds (sharded like the optimizer): ZeRO-1 4P+16P/N,
    ZeRO-2 2P+18P/N, ZeRO-3 20P/N bytes."""
    e = M.estimate("InternVL2-2B", mode="full", zero=zero, gpus=gpus, freeze_vit=False)
    p = e.trainable_params_m * 1e6
    expected = {1: 4 * p + 16 * p / gpus, 2: 2 * p + 18 * p / gpus, 3: 20 * p / gpus}[zero]
    assert (e.weights + e.gradients + e.optimizer) * GB == pytest.approx(expected, rel=2e-3)


@pytest.mark.parametrize("name,published_b", [("InternVL2-1B", 0.9), ("InternVL2-2B", 2.2), ("InternVL2-4B", 4.2), ("InternVL2-8B", 8.1)])
def test_parameter_counts_match_the_published_sizes(name, published_b):
    assert M.estimate(name).total_params_b == pytest.approx(published_b, rel=0.1)


def test_memory_moves_the_right_way():
    base = M.estimate("InternVL2-4B", mode="lora", seq=4096)
    assert M.estimate("InternVL2-4B", mode="qlora", seq=4096).weights < base.weights
    assert M.estimate("InternVL2-4B", mode="lora", seq=4096, checkpointing=False).activations > base.activations
    assert M.estimate("InternVL2-4B", mode="lora", seq=8192).activations > base.activations
    assert M.estimate("InternVL2-8B", mode="full", zero=3, gpus=8).total < M.estimate("InternVL2-8B", mode="full", zero=3, gpus=2).total
    assert base.trainable_params_m < M.estimate("InternVL2-4B", mode="full").trainable_params_m


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="mode"):
        M.estimate("InternVL2-2B", mode="prefix")
    with pytest.raises(ValueError, match="ZeRO|stage"):
        M.estimate("InternVL2-2B", zero=4)


def test_table_has_a_row_per_estimate_and_the_totals():
    es = [M.estimate(n) for n in M.MODELS]
    text = M.table(es)
    lines = text.splitlines()
    assert len(lines) == 2 + len(es)
    for e, line in zip(es, lines[2:]):
        assert line.split()[0] == e.model and line.split()[-1] == str(round(e.total, 1))


def test_lora_counts_the_fused_projections_each_llm_has():
    """XTuner puts LoRA on every linear layer: Phi-3 fuses qkv and gate/up, InternLM2 fuses wqkv, Qwen2 fuses none."""
    r = 8
    phi3, internlm2, qwen2 = (M.MODELS[n].llm for n in ("InternVL2-4B", "InternVL2-2B", "InternVL2-1B"))
    assert phi3.fused_qkv and phi3.fused_gate_up and internlm2.fused_qkv and not internlm2.fused_gate_up
    assert not (qwen2.fused_qkv or qwen2.fused_gate_up)
    h, i, kv = phi3.hidden, phi3.intermediate, phi3.kv_heads * phi3.hidden // phi3.heads
    per_layer = r * ((h + h + 2 * kv) + (h + h) + (h + 2 * i) + (i + h))
    assert phi3.lora_params(r) == phi3.layers * per_layer


def test_eager_attention_stores_the_attention_matrix():
    sdpa = M.estimate("InternVL2-4B", mode="lora", seq=4096)
    eager = M.estimate("InternVL2-4B", mode="lora", seq=4096, attention="eager")
    assert eager.activations > 2 * sdpa.activations
    with pytest.raises(ValueError, match="attention"):
        M.estimate("InternVL2-4B", attention="flash")


def test_internlm2_lora_adapts_the_output_head_and_keeps_its_logits():
    """XTuner's target selection skips only lm_head/output_layer: InternLM2's `output` gets an adapter too."""
    r = 8
    internlm2, phi3 = M.MODELS["InternVL2-2B"].llm, M.MODELS["InternVL2-4B"].llm
    assert internlm2.lora_on_head and not phi3.lora_on_head
    without = M.LLMShape(**{**internlm2.__dict__, "lora_on_head": False})
    assert internlm2.lora_params(r) - without.lora_params(r) == r * (internlm2.hidden + internlm2.vocab)
    b, s = 4, 1000
    with_head = M.estimate("InternVL2-2B", mode="lora", batch=b, seq=s)
    full = M.estimate("InternVL2-2B", mode="full", batch=b, seq=s)
    logits_gb = b * s * internlm2.vocab / M.GB
    # LoRA keeps 4 more bytes per logit than full; its layers keep their own amounts (checkpointing: one layer)
    layer_diff = s * b * (internlm2.layer_bytes_per_token("lora") - internlm2.layer_bytes_per_token("full")) / M.GB
    assert with_head.activations - full.activations == pytest.approx(4 * logits_gb + layer_diff)


def test_layer_bytes_count_the_gated_mlp_and_the_lora_inputs():
    llm = M.MODELS["InternVL2-2B"].llm
    h, i = llm.hidden, llm.intermediate
    assert llm.layer_bytes_per_token("full") == 20 * h + 8 * i == 52 * h  # InternLM2: i = 4h
    # LoRA: frozen projections keep no input; 5 adapters keep dropout output + mask (wqkv, wo, w1, w3, w2)
    assert llm.layer_bytes_per_token("lora") == 52 * h - (6 * h + 2 * i) + 3 * (4 * h + i)
    no_ckpt = M.estimate("InternVL2-2B", mode="full", batch=2, seq=512, checkpointing=False)
    ckpt = M.estimate("InternVL2-2B", mode="full", batch=2, seq=512)
    assert no_ckpt.activations > 5 * (ckpt.activations - 2 * 512 * llm.vocab * 8 / M.GB)


def test_amp_counts_float32_master_weights_and_autocasts_copies():
    """mmengine's AmpOptimWrapper without DeepSpeed: float32 weights, gradients and Adam moments, plus autocast's bf16 copies."""
    bf16 = M.estimate("InternVL2-2B", mode="full", zero=0, batch=4, seq=1024)
    amp = M.estimate("InternVL2-2B", mode="full", zero=0, batch=4, seq=1024, amp=True)
    trainable = bf16.trainable_params_m * 1e6 / M.GB
    assert amp.weights == pytest.approx(2 * bf16.weights) and amp.gradients == pytest.approx(2 * bf16.gradients)
    assert amp.optimizer == pytest.approx(2 * bf16.optimizer)
    assert amp.activations - bf16.activations == pytest.approx(2 * trainable, rel=1e-3)
    with pytest.raises(ValueError, match="zero=0"):
        M.estimate("InternVL2-2B", mode="full", zero=2, amp=True)
