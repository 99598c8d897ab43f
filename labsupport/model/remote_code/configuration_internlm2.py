"""InternLM2Config: the fields of a published InternLM2 config.json (InternVL2-2B/8B's llm_config).

The field names, meanings and defaults follow the public internlm2-chat checkpoints, so that a
config.json written for the real model loads here and one written here reads like the real one.
"""
from transformers import PretrainedConfig


class InternLM2Config(PretrainedConfig):
    """Shape and options of an InternLM2 decoder (fused wqkv attention with grouped KV heads, SwiGLU MLP, RMSNorm)."""

    model_type = "internlm2"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=103168,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,
        hidden_act="silu",
        max_position_embeddings=2048,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        pretraining_tp=1,
        tie_word_embeddings=False,
        bias=True,
        rope_theta=10000,
        rope_scaling=None,
        attn_implementation=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.bias = bias
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.pretraining_tp = pretraining_tp
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self._check_rope_scaling()
        # "eager", "sdpa" or "flash_attention_2" (XTuner sets the last one; without flash_attn the model uses sdpa)
        self.attn_implementation = attn_implementation or "eager"
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)

    def _check_rope_scaling(self) -> None:
        """rope_scaling is None or {"type": "linear" | "dynamic", "factor": a number > 1}."""
        if self.rope_scaling is None:
            return
        if not isinstance(self.rope_scaling, dict):
            raise ValueError(f"rope_scaling must be a dict with 'type' and 'factor', got {self.rope_scaling!r}")
        kind = self.rope_scaling.get("type", self.rope_scaling.get("rope_type"))
        factor = self.rope_scaling.get("factor")
        if kind not in ("linear", "dynamic"):
            raise ValueError(f"rope_scaling type must be 'linear' or 'dynamic', got {kind!r}")
        if not isinstance(factor, (int, float)) or factor < 1.0:
            raise ValueError(f"rope_scaling factor must be a number >= 1, got {factor!r}")


# save_pretrained copies this file next to config.json
InternLM2Config.register_for_auto_class()
