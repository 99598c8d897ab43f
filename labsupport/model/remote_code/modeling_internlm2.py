"""InternLM2ForCausalLM: the LLM of InternVL2-2B/8B, written from the published architecture.

Parameter names follow the public internlm2-chat checkpoints, so their weights load here and these
load in tools written for them (XTuner, LMDeploy):

    model.tok_embeddings                      token embedding
    model.layers.N.attention_norm             RMSNorm before attention
    model.layers.N.attention.wqkv             one fused projection: per KV head, its query heads, then K, then V
    model.layers.N.attention.wo               attention output projection
    model.layers.N.ffn_norm                   RMSNorm before the MLP
    model.layers.N.feed_forward.w1/w3/w2      SwiGLU: w2(silu(w1 x) * w3 x)
    model.norm, output                        final RMSNorm and the (untied) output head

Unlike the published file, the class inherits GenerationMixin (transformers >= 4.50 needs that for
generate()) and runs with torch's scaled-dot-product attention when `flash_attn` is missing, which
is what XTuner asks for (`attn_implementation = "flash_attention_2"`) on every machine.

When a batch holds only right padding and no cache (training: XTuner's collate pads on the right),
SDPA runs with `is_causal=True` and no mask: causality alone keeps every real token away from the
padding after it, and without a mask torch can pick its flash kernel. Measured on one H200 (2B
shape, XTuner full fine-tune): with the additive mask, iterations took ~0.5 s with stalls of several
seconds whenever a new sequence length arrived (docs/benchmarks.md). On a GPU, SDPA here never picks
torch's cuDNN kernel, which compiles a plan per new shape (see `sdpa`).
"""
import math
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn import CrossEntropyLoss
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from .configuration_internlm2 import InternLM2Config


class InternLM2RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(dtype)


def rope_cos_sin(config: InternLM2Config, head_dim: int, position_ids: torch.Tensor, seq_len: int,
                 dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [batch, seq, head_dim] of the rotary embedding at POSITION_IDS.

    rope_scaling "linear" divides positions by factor; "dynamic" (NTK) raises the base once the
    sequence (SEQ_LEN tokens including the cache) is longer than max_position_embeddings.
    """
    base = float(config.rope_theta)
    scaling = config.rope_scaling or {}
    kind = scaling.get("type", scaling.get("rope_type"))
    factor = float(scaling.get("factor", 1.0))
    positions = position_ids.to(torch.float32)
    if kind == "dynamic" and seq_len > config.max_position_embeddings:
        ratio = factor * seq_len / config.max_position_embeddings - (factor - 1)
        base = base * ratio ** (head_dim / (head_dim - 2))
    elif kind == "linear":
        positions = positions / factor
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim))
    freqs = positions[..., None] * inv_freq  # [batch, seq, head_dim / 2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last axis."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate queries and keys [batch, heads, seq, head_dim] by their positions."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[batch, kv_heads, seq, dim] -> [batch, kv_heads * n_rep, seq, dim] (each KV head serves n_rep query heads)."""
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def causal_mask(attention_mask: Optional[torch.Tensor], batch: int, q_len: int, past_len: int,
                dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask [batch, 1, q_len, past_len + q_len]: 0 where a query may look, the dtype's minimum elsewhere.

    ATTENTION_MASK is the tokenizer's [batch, past_len + q_len] mask of real (1) and padding (0) tokens,
    or already a 4-D mask (returned unchanged). A finite minimum keeps fully padded rows free of NaN.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask
    kv_len = past_len + q_len
    keys = torch.arange(kv_len, device=device)
    queries = torch.arange(past_len, kv_len, device=device)
    allowed = (keys[None, :] <= queries[:, None])[None, None]  # [1, 1, q, kv]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, -kv_len:].to(torch.bool)
    allowed = allowed.expand(batch, 1, q_len, kv_len)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs) -> torch.Tensor:
    """torch's scaled_dot_product_attention without its cuDNN kernel on a GPU: that kernel builds a plan for every
    new sequence length (seconds each), and training batches bring new lengths all the time."""
    if query.is_cuda:
        with sdpa_kernel(_SDPA_BACKENDS):
            return F.scaled_dot_product_attention(query, key, value, **kwargs)
    return F.scaled_dot_product_attention(query, key, value, **kwargs)


def right_padded_only(attention_mask: Optional[torch.Tensor], past_len: int) -> bool:
    """True when plain causal attention is exact: no cache, and ATTENTION_MASK (2-D) is None or has its
    padding only at the end of each row (every real token then sees only real tokens before it)."""
    if past_len or (attention_mask is not None and attention_mask.dim() != 2):
        return False
    if attention_mask is None:
        return True
    m = attention_mask.to(torch.int8)
    return bool((m[:, :-1] >= m[:, 1:]).all()) and bool(m[:, 0].all())


class InternLM2MLP(nn.Module):
    """SwiGLU feed-forward: w2(act(w1 x) * w3 x)."""

    def __init__(self, config: InternLM2Config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act_fn(self.w1(x)) * self.w3(x))


class InternLM2Attention(nn.Module):
    """Multi-head attention with grouped KV heads and one fused wqkv projection.

    wqkv's output rows are grouped by KV head: for each of the num_key_value_heads groups, the
    rows of its num_attention_heads / num_key_value_heads query heads, then its key head, then
    its value head (head_dim rows each) -- the layout of the published weights.
    """

    def __init__(self, config: InternLM2Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        if self.head_dim * self.num_heads != self.hidden_size:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_heads})")
        if self.num_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads "
                             f"({self.num_key_value_heads})")
        self.wqkv = nn.Linear(self.hidden_size, (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim,
                              bias=config.bias)
        self.wo = nn.Linear(self.num_heads * self.head_dim, self.hidden_size, bias=config.bias)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                past_key_value: Optional[Cache] = None, output_attentions: bool = False):
        """Attend over the cache plus these tokens; returns (output, attention weights or None)."""
        bsz, q_len, _ = hidden_states.shape
        qkv = self.wqkv(hidden_states).view(bsz, q_len, self.num_key_value_heads, self.num_key_value_groups + 2,
                                            self.head_dim)
        query = qkv[..., : self.num_key_value_groups, :].reshape(bsz, q_len, self.num_heads, self.head_dim)
        key, value = qkv[..., -2, :], qkv[..., -1, :]
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # [b, heads, q, d]
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if past_key_value is not None:
            key, value = past_key_value.update(key, value, self.layer_idx)
        key = repeat_kv(key, self.num_key_value_groups)
        value = repeat_kv(value, self.num_key_value_groups)
        weights = None
        if output_attentions or self.config.attn_implementation == "eager":
            if mask is None:  # causal only (see right_padded_only)
                mask = causal_mask(None, bsz, q_len, 0, query.dtype, query.device)
            scores = query @ key.transpose(2, 3) / math.sqrt(self.head_dim) + mask.to(query.dtype)
            weights = scores.float().softmax(dim=-1).to(query.dtype)
            out = weights @ value
        elif mask is None:  # causal only: no mask lets torch pick its flash kernel
            out = sdpa(query, key, value, is_causal=q_len > 1)
        else:  # "sdpa", or a flash request without flash_attn
            out = sdpa(query, key, value, attn_mask=mask.to(query.dtype))
        out = out.transpose(1, 2).reshape(bsz, q_len, self.hidden_size)
        return self.wo(out), (weights if output_attentions else None)


class InternLM2DecoderLayer(nn.Module):
    """Pre-norm block: x + attention(attention_norm(x)), then x + feed_forward(ffn_norm(x))."""

    def __init__(self, config: InternLM2Config, layer_idx: int):
        super().__init__()
        self.attention = InternLM2Attention(config, layer_idx)
        self.feed_forward = InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, mask, cos, sin, past_key_value=None, output_attentions=False):
        attn_out, weights = self.attention(self.attention_norm(hidden_states), mask, cos, sin,
                                           past_key_value=past_key_value, output_attentions=output_attentions)
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.feed_forward(self.ffn_norm(hidden_states))
        return hidden_states, weights


class InternLM2PreTrainedModel(PreTrainedModel):
    """Weight initialisation and the transformers capability flags shared by the InternLM2 classes."""

    config_class = InternLM2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["InternLM2DecoderLayer"]
    _skip_keys_device_placement = "past_key_values"
    _supports_sdpa = True
    _supports_flash_attn_2 = True
    _supports_cache_class = True

    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) for linear and embedding weights, zero biases (norms start at one)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, InternLM2RMSNorm):
            module.weight.data.fill_(1.0)


class InternLM2Model(InternLM2PreTrainedModel):
    """The decoder stack: tok_embeddings -> layers -> norm (no output head)."""

    def __init__(self, config: InternLM2Config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([InternLM2DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.tok_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.tok_embeddings = value

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[Union[Cache, List[torch.FloatTensor]]] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache_position: Optional[torch.LongTensor] = None,
        **kwargs,
    ) -> Union[Tuple, BaseModelOutputWithPast]:
        """Hidden states of the last layer for INPUT_IDS or INPUTS_EMBEDS (one of them), after the cached tokens."""
        output_attentions = bool(output_attentions)
        output_hidden_states = bool(output_hidden_states)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        return_dict = getattr(self.config, "return_dict", True) if return_dict is None else return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.tok_embeddings(input_ids)
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputation and a cache do not mix
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        elif past_key_values is not None and not isinstance(past_key_values, Cache):
            past_key_values = DynamicCache.from_legacy_cache(past_key_values)
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        bsz, q_len = inputs_embeds.shape[:2]
        if position_ids is None:
            start = int(cache_position[0]) if cache_position is not None else past_len
            position_ids = torch.arange(start, start + q_len, device=inputs_embeds.device)[None].expand(bsz, q_len)
        eager = output_attentions or self.config.attn_implementation == "eager"
        if not eager and right_padded_only(attention_mask, past_len):
            mask = None  # the layers run causal SDPA (flash kernel on a GPU)
        else:
            mask = causal_mask(attention_mask, bsz, q_len, past_len, inputs_embeds.dtype, inputs_embeds.device)
        cos, sin = rope_cos_sin(self.config, self.config.hidden_size // self.config.num_attention_heads,
                                position_ids, past_len + q_len, inputs_embeds.dtype)

        hidden_states = inputs_embeds
        all_hidden, all_attn = [], []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            if self.gradient_checkpointing and self.training:
                hidden_states, weights = self._gradient_checkpointing_func(
                    layer.__call__, hidden_states, mask, cos, sin, None, output_attentions)
            else:
                hidden_states, weights = layer(hidden_states, mask, cos, sin, past_key_value=past_key_values,
                                               output_attentions=output_attentions)
            if output_attentions:
                all_attn.append(weights)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        out = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
        )
        return out if return_dict else out.to_tuple()


class InternLM2ForCausalLM(InternLM2PreTrainedModel, GenerationMixin):
    """InternLM2Model plus the output head; forward gives next-token logits (and the loss for LABELS)."""

    def __init__(self, config: InternLM2Config):
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.vocab_size = config.vocab_size
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.tok_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.tok_embeddings = value

    def get_output_embeddings(self) -> nn.Module:
        return self.output

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.output = new_embeddings

    def get_decoder(self) -> InternLM2Model:
        return self.model

    def set_decoder(self, decoder: InternLM2Model) -> None:
        self.model = decoder

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[Union[Cache, List[torch.FloatTensor]]] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache_position: Optional[torch.LongTensor] = None,
        **kwargs,
    ) -> Union[Tuple, CausalLMOutputWithPast]:
        """Logits [batch, seq, vocab]; with LABELS (-100 = ignore) also the mean next-token cross-entropy."""
        return_dict = getattr(self.config, "return_dict", True) if return_dict is None else return_dict
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                             return_dict=True, cache_position=cache_position)
        logits = self.output(outputs.last_hidden_state).float()
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].contiguous().view(-1, self.config.vocab_size)
            shift_labels = labels[..., 1:].contiguous().view(-1).to(shift_logits.device)
            loss = CrossEntropyLoss()(shift_logits, shift_labels)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                     hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return out if return_dict else out.to_tuple()


# save_pretrained copies this file next to config.json (a text-only InternLM2 checkpoint)
InternLM2ForCausalLM.register_for_auto_class("AutoModelForCausalLM")
