"""InternViT, the vision encoder of InternVL: 14x14 patches -> [CLS] + patch tokens -> pre-norm transformer blocks.

Written from the published architecture with the official parameter names
(embeddings.{class_embedding,patch_embedding,position_embedding},
encoder.layers.N.{attn.qkv,attn.proj,attn.q_norm,attn.k_norm,ls1,ls2,norm1,norm2,mlp.fc1,mlp.fc2}).
Attention runs with PyTorch's scaled_dot_product_attention (or plain matmuls for "eager");
flash-attention is used only when the `flash_attn` package imports.
"""
from typing import Optional, Tuple, Union

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import PreTrainedModel

from .configuration_intern_vit import InternVisionConfig

try:
    from flash_attn import flash_attn_func  # noqa: F401
    has_flash_attn = True
except Exception:  # not installed (CPU machines): fall back to PyTorch attention
    has_flash_attn = False


class InternRMSNorm(nn.Module):
    """RMSNorm: x / rms(x) * weight (no mean subtraction, no bias)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        x = hidden_states.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


NORM2FN = {"rms_norm": InternRMSNorm, "layer_norm": nn.LayerNorm}


class InternVisionEmbeddings(nn.Module):
    """Pixels [N, 3, H, W] -> tokens [N, 1 + (H/14)*(W/14), C]: a conv patchifier, a learned [CLS], learned positions."""

    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.randn(1, 1, self.embed_dim))
        self.patch_embedding = nn.Conv2d(config.num_channels, self.embed_dim,
                                         kernel_size=self.patch_size, stride=self.patch_size)
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.num_positions = self.num_patches + 1
        self.position_embedding = nn.Parameter(torch.randn(1, self.num_positions, self.embed_dim))

    def _get_pos_embed(self, pos_embed: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Resize the learned patch-position grid to H x W patches (bicubic), for other image sizes."""
        side = self.image_size // self.patch_size
        if (H, W) == (side, side):
            return pos_embed
        target_dtype = pos_embed.dtype
        grid = pos_embed.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(H, W), mode="bicubic", align_corners=False)
        return grid.reshape(1, -1, H * W).permute(0, 2, 1).to(target_dtype)

    def forward(self, pixel_values: torch.FloatTensor) -> torch.Tensor:
        target_dtype = self.patch_embedding.weight.dtype
        patch_embeds = self.patch_embedding(pixel_values.to(target_dtype))  # [N, C, h, w]
        batch_size, _, height, width = patch_embeds.shape
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)  # [N, h*w, C]
        class_embeds = self.class_embedding.expand(batch_size, 1, -1).to(target_dtype)
        embeddings = torch.cat([class_embeds, patch_embeds], dim=1)
        position_embedding = torch.cat([
            self.position_embedding[:, :1, :],
            self._get_pos_embed(self.position_embedding[:, 1:, :], height, width),
        ], dim=1)
        return embeddings + position_embedding.to(target_dtype)


class InternAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and optional q/k normalisation."""

    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        if self.head_dim * self.num_heads != self.embed_dim:
            raise ValueError(f"hidden_size {self.embed_dim} is not divisible by num_attention_heads {self.num_heads}")
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=config.qkv_bias)
        self.attn_drop = nn.Dropout(config.attention_dropout)
        self.proj_drop = nn.Dropout(config.dropout)
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            self.q_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
            self.k_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.use_flash_attn = bool(getattr(config, "use_flash_attn", False)) and has_flash_attn
        self.attn_implementation = getattr(config, "_attn_implementation", None) or "sdpa"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        B, N, C = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(2)  # each [B, N, heads, head_dim]
        if self.qk_normalization:
            q = self.q_norm(q.flatten(-2)).view(B, N, self.num_heads, self.head_dim)
            k = self.k_norm(k.flatten(-2)).view(B, N, self.num_heads, self.head_dim)
        if self.use_flash_attn and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
            out = flash_attn_func(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, N, head_dim]
            if self.attn_implementation == "eager":
                attn = (q * self.scale) @ k.transpose(-2, -1)
                attn = self.attn_drop(attn.softmax(dim=-1))
                out = attn @ v
            else:
                drop = self.attn_drop.p if self.training else 0.0
                if q.is_cuda:  # not torch's cuDNN kernel: it compiles a plan per new shape (tiles per batch vary)
                    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
                        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
                else:
                    out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
            out = out.transpose(1, 2)
        out = self.proj(out.reshape(B, N, C))
        return self.proj_drop(out)


class InternMLP(nn.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.act = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class InternVisionEncoderLayer(nn.Module):
    """Pre-norm block with layer scale: x + ls1*attn(norm1(x)), then x + ls2*mlp(norm2(x))."""

    def __init__(self, config: InternVisionConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.attn = InternAttention(config)
        self.mlp = InternMLP(config)
        self.norm1 = NORM2FN[config.norm_type](self.embed_dim, eps=config.layer_norm_eps)
        self.norm2 = NORM2FN[config.norm_type](self.embed_dim, eps=config.layer_norm_eps)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(self.embed_dim))
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(self.embed_dim))
        self.drop_path_rate = drop_path_rate

    def _drop_path(self, x: torch.Tensor) -> torch.Tensor:
        """Stochastic depth during training: drop a sample's residual branch with probability drop_path_rate."""
        if not self.training or self.drop_path_rate == 0.0:
            return x
        keep = 1.0 - self.drop_path_rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def forward(self, hidden_states: torch.Tensor) -> Tuple[torch.Tensor]:
        hidden_states = hidden_states + self._drop_path(self.attn(self.norm1(hidden_states)) * self.ls1)
        hidden_states = hidden_states + self._drop_path(self.mlp(self.norm2(hidden_states)) * self.ls2)
        return (hidden_states,)


class InternVisionEncoder(nn.Module):
    """The stack of encoder layers, with optional gradient checkpointing."""

    def __init__(self, config: InternVisionConfig):
        super().__init__()
        self.config = config
        n = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linearly deeper
        self.layers = nn.ModuleList([InternVisionEncoderLayer(config, rates[i]) for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, inputs_embeds: torch.Tensor, output_hidden_states: Optional[bool] = None,
                return_dict: Optional[bool] = None) -> Union[Tuple, BaseModelOutput]:
        all_hidden_states = () if output_hidden_states else None
        hidden_states = inputs_embeds
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states = all_hidden_states + (hidden_states,)
            if self.gradient_checkpointing and self.training:
                hidden_states = torch.utils.checkpoint.checkpoint(layer, hidden_states, use_reentrant=False)[0]
            else:
                hidden_states = layer(hidden_states)[0]
        if output_hidden_states:
            all_hidden_states = all_hidden_states + (hidden_states,)
        if not return_dict:
            return tuple(v for v in (hidden_states, all_hidden_states) if v is not None)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden_states)


class InternVisionModel(PreTrainedModel):
    """InternViT: pixel_values [N, 3, 448, 448] -> last_hidden_state [N, 1 + 1024, C] (token 0 is [CLS])."""

    main_input_name = "pixel_values"
    config_class = InternVisionConfig
    base_model_prefix = "vision_model"
    _no_split_modules = ["InternVisionEncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn_2 = True
    _supports_flash_attn = True
    supports_gradient_checkpointing = True

    def __init__(self, config: InternVisionConfig):
        super().__init__(config)
        self.config = config
        self.embeddings = InternVisionEmbeddings(config)
        self.encoder = InternVisionEncoder(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Small normal weights, zero biases, unit norms (used when the model is built from a config)."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        elif isinstance(module, InternVisionEmbeddings):
            module.class_embedding.data.normal_(mean=0.0, std=std)
            module.position_embedding.data.normal_(mean=0.0, std=std)

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding (a Conv2d)."""
        return self.embeddings

    def forward(self, pixel_values: Optional[torch.FloatTensor] = None, output_hidden_states: Optional[bool] = None,
                return_dict: Optional[bool] = None, pixel_embeds: Optional[torch.FloatTensor] = None,
                ) -> Union[Tuple, BaseModelOutputWithPooling]:
        return_dict = True if return_dict is None else return_dict
        if pixel_values is None and pixel_embeds is None:
            raise ValueError("InternVisionModel needs pixel_values [N, 3, H, W] (or pixel_embeds)")
        if pixel_embeds is not None:
            hidden_states = pixel_embeds
        elif pixel_values.ndim == 4:
            hidden_states = self.embeddings(pixel_values)
        else:
            raise ValueError(f"pixel_values must be [N, 3, H, W]; got shape {tuple(pixel_values.shape)}")
        encoder_outputs = self.encoder(inputs_embeds=hidden_states, output_hidden_states=output_hidden_states,
                                       return_dict=True)
        last_hidden_state = encoder_outputs.last_hidden_state
        pooled_output = last_hidden_state[:, 0, :]
        if not return_dict:
            return (last_hidden_state, pooled_output) + ((encoder_outputs.hidden_states,) if output_hidden_states else ())
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled_output,
                                          hidden_states=encoder_outputs.hidden_states)
