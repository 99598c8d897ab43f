"""How much GPU memory a fine-tune needs: a back-of-the-envelope estimator with its breakdown.

The formula (bytes per GPU; P = parameters, T = trainable parameters, N = GPUs, Z = ZeRO stage):

* weights      2·P (bf16), the quantised LLM of QLoRA at ~0.55 B/param; ZeRO-3 shards them: /N
* gradients    2·T (bf16); ZeRO-2 and ZeRO-3 shard them: /N
* optimizer    AdamW with DeepSpeed: an fp32 master copy + two fp32 moments (12·T, the ZeRO paper's K)
               plus the fp32 copy of the gradients that DeepSpeed's optimizer step reads (4·T): 16·T;
               ZeRO-1/2/3 shard them: /N. Without DeepSpeed: two moments in the weights' dtype, 4·T
* activations  per LLM layer and token, counted from what autograd keeps in bf16 (flash/SDPA attention):
               attention block 20·h bytes (norm input and output, q, k and v repeated to all heads,
               attention output, wo input), gated MLP 8·i (w1 and w3 outputs, the activation, their
               product) -- 52·h for InternLM2 (i = 4h), where Korthikanti et al.'s 34·h assumes a GeLU MLP.
               LoRA: frozen projections keep no input (−6h − 2i), each adapter keeps its dropout output
               and mask (3 bytes per input element). Eager attention adds 5·a·s for the stored matrix.
               With gradient checkpointing only each layer's input (2·s·b·h) is kept plus one layer's
               worth during recomputation. Plus the logits, b·s·V·8 (bf16 logits + the loss's fp32
               copy + its gradient in flight), and b·s·V·4 more when LoRA adapts the output head (XTuner
               does so for InternLM2's `output`: its target selection skips only `lm_head`), and, when
               the ViT trains, its activations
* overhead     a fixed 1.5 GB for the CUDA context, allocator fragmentation and communication buffers

LoRA adapts every linear layer of the LLM, as XTuner does (target_modules=None): Phi-3 has fused
qkv and gate/up projections, InternLM2 a fused wqkv, Qwen2 none; the adapter count follows.

Measured (H200, ZeRO-2, docs/gpu, re-checked by tests/test_bench.py): every kept row within ±14 %,
e.g. InternVL2-2B full batch 16 62.2 GiB (estimate 63.7), LoRA batch 16 43.0 (45.5), LoRA batch 16
without checkpointing 128.5 (123.8), full batch 32 97.1 (89.9); InternVL2-4B LoRA batch 4 15.6 (17.5),
full 79.4 (77.6). Before the output-head
adapter, the logits' gradient and the gated MLP were counted, the 2B LoRA estimate was 34 % low at
batch 16 and 46 % low without checkpointing.

Where it may still be off: real sequences are shorter than max_length (smaller); fragmentation
and DeepSpeed's bucket sizes vary (±1–3 GB); LoRA's dropout and the frozen parts' temporaries are
ignored; PyTorch may keep cached blocks.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict
from labsupport.core.plots import pyplot
from labsupport.model.params import count_parameters, family

GB = 1024**3


@dataclass(frozen=True)
class LLMShape:
    """The shape of a decoder-only LLM (what the estimator needs to know)."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool = False
    fused_qkv: bool = False           # one qkv projection (Phi-3, InternLM2): one LoRA adapter, not three
    fused_gate_up: bool = False       # one gate/up projection (Phi-3)
    lora_on_head: bool = False        # XTuner's LoRA adapts the output head too (InternLM2's `output`)

    def params(self) -> int:
        """Number of parameters (embeddings, attention, gated MLP, norms, output head)."""
        h, head_dim = self.hidden, self.hidden // self.heads
        attn = h * h + 2 * h * self.kv_heads * head_dim + h * h
        mlp = 3 * h * self.intermediate
        emb = self.vocab * h * (1 if self.tied_embeddings else 2)
        return self.layers * (attn + mlp + 2 * h) + emb + h

    def lora_params(self, r: int) -> int:
        """Parameters LoRA of rank R adds on every linear layer of the decoder (A: r×in, B: out×r)."""
        h, head_dim = self.hidden, self.hidden // self.heads
        kv = self.kv_heads * head_dim
        qkv = [(h, h + 2 * kv)] if self.fused_qkv else [(h, h), (h, kv), (h, kv)]
        i = self.intermediate
        gate_up = [(h, 2 * i)] if self.fused_gate_up else [(h, i), (h, i)]
        shapes = qkv + [(h, h)] + gate_up + [(i, h)]
        head = r * (h + self.vocab) if self.lora_on_head else 0
        return self.layers * sum(r * (i + o) for i, o in shapes) + head

    def layer_bytes_per_token(self, mode: str = "full") -> int:
        """Bytes autograd keeps per token in one decoder layer (bf16, flash/SDPA attention), for MODE lora or full."""
        h, i = self.hidden, self.intermediate
        kept = 20 * h + 8 * i
        if mode in ("lora", "qlora"):
            inputs = (h if self.fused_qkv else 3 * h) + h + (h if self.fused_gate_up else 2 * h) + i
            kept += 3 * inputs - (6 * h + 2 * i)
        return kept


@dataclass(frozen=True)
class VLMShape:
    """An InternVL2 model: ViT + MLP projector + LLM."""

    name: str
    vit_params: int
    vit_layers: int
    vit_hidden: int
    llm: LLMShape
    image_tokens_per_tile: int = 256

    def projector_params(self) -> int:
        """mlp1: LayerNorm(4C) → Linear(4C, D) → GELU → Linear(D, D)."""
        c4, d = 4 * self.vit_hidden, self.llm.hidden
        return 2 * c4 + c4 * d + d + d * d + d


def shape_of(config: dict, name: str = "model") -> VLMShape:
    """The estimator's view of an InternVL config (a dict with vision_config and llm_config, e.g. a config.json)."""

    llm, vit = config["llm_config"], config["vision_config"]
    arch = (llm.get("architectures") or [""])[0]
    return VLMShape(name, count_parameters(config)["vit"], vit["num_hidden_layers"], vit["hidden_size"],
                    LLMShape(config.get("llm_name", name + "-llm"), llm["num_hidden_layers"], llm["hidden_size"],
                             llm["intermediate_size"], llm["num_attention_heads"],
                             llm.get("num_key_value_heads") or llm["num_attention_heads"],
                             llm["vocab_size"], bool(llm.get("tie_word_embeddings", False)),
                             fused_qkv=arch.startswith(("Phi3", "InternLM2")), fused_gate_up=arch.startswith("Phi3"),
                             lora_on_head=arch.startswith("InternLM2")))


def _family_shapes() -> dict[str, VLMShape]:

    return {name: shape_of(cfg, name) for name, cfg in family().items()}


# The InternVL2 family, read from labsupport/data/internvl2_family.json (the published configs).
MODELS: dict[str, VLMShape] = _family_shapes()


@dataclass
class Estimate:
    """GB per GPU, by part."""

    model: str
    mode: str
    zero: int
    gpus: int
    batch: int
    seq: int
    checkpointing: bool
    total_params_b: float
    trainable_params_m: float
    weights: float
    gradients: float
    optimizer: float
    activations: float
    overhead: float

    @property
    def total(self) -> float:
        """Sum of the parts, in GB."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    def row(self) -> dict:
        """A flat dict for a table, rounded to 0.1 GB."""
        d = asdict(self)
        d["total"] = self.total
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in d.items()}


def estimate(model: str | VLMShape, mode: str = "lora", zero: int = 0, gpus: int = 1, batch: int = 1,
             seq: int = 4096, checkpointing: bool = True, lora_r: int = 128, freeze_vit: bool = True,
             tiles: int = 7, overhead_gb: float = 1.5, attention: str = "sdpa", amp: bool = False) -> Estimate:
    """GB per GPU to fine-tune MODEL in MODE (lora | qlora | full) with ZeRO stage ZERO (0 = no DeepSpeed) on GPUS GPUs;
    ATTENTION "sdpa" (flash or memory-efficient kernels, what XTuner runs) or "eager" (stores the attention matrix);
    AMP (ZERO 0 only): mmengine's AmpOptimWrapper over float32 master weights instead of XTuner's bfloat16 ones."""
    m = MODELS[model] if isinstance(model, str) else model
    if mode not in ("lora", "qlora", "full"):
        raise ValueError(f"mode must be 'lora', 'qlora' or 'full', not {mode!r}")
    if zero not in (0, 1, 2, 3):
        raise ValueError(f"zero (DeepSpeed stage) must be 0, 1, 2 or 3, not {zero!r}")
    if attention not in ("sdpa", "eager"):
        raise ValueError(f"attention must be 'sdpa' or 'eager', not {attention!r}")
    if amp and (zero or mode == "qlora"):
        raise ValueError("amp is the run without DeepSpeed over float32 weights: pass zero=0 and mode lora or full")
    if gpus < 1 or batch < 1 or seq < 1:
        raise ValueError("gpus, batch and seq must be at least 1")
    llm_p, proj_p = m.llm.params(), m.projector_params()
    total_p = m.vit_params + proj_p + llm_p
    trainable = proj_p + (m.llm.lora_params(lora_r) if mode in ("lora", "qlora") else llm_p)
    if not freeze_vit:
        trainable += m.vit_params
    n = gpus if zero else 1
    llm_bytes = 0.55 if mode == "qlora" else 2.0
    weights = 2.0 * (m.vit_params + proj_p) + llm_bytes * llm_p
    if mode in ("lora", "qlora"):
        weights += 2.0 * m.llm.lora_params(lora_r)
    if zero == 3:
        weights /= n
    grads = 2.0 * trainable / (n if zero >= 2 else 1)
    optim = (16.0 if zero else 4.0) * trainable / (n if zero >= 1 else 1)
    if amp:  # the whole model in float32, float32 gradients and Adam moments for what trains
        weights, grads, optim = 2.0 * weights, 4.0 * trainable, 8.0 * trainable
    h, a, L = m.llm.hidden, m.llm.heads, m.llm.layers
    per_layer = seq * batch * (m.llm.layer_bytes_per_token(mode) + (5 * a * seq if attention == "eager" else 0))
    acts = (2 * seq * batch * h * L + per_layer) if checkpointing else per_layer * L
    head_lora = mode in ("lora", "qlora") and m.llm.lora_on_head
    acts += batch * seq * m.llm.vocab * (8 + (4 if head_lora else 0))
    if amp:  # autocast keeps a bfloat16 copy of every trained weight it cast, until the forward ends
        acts += 2.0 * trainable
    if not freeze_vit:
        vit_seq = 1025
        vit_attn = 5 * 16 * vit_seq / m.vit_hidden if attention == "eager" else 0
        acts += tiles * batch * vit_seq * m.vit_hidden * (34 + vit_attn) * m.vit_layers
    return Estimate(m.name, mode, zero, gpus, batch, seq, checkpointing, round(total_p / 1e9, 2),
                    round(trainable / 1e6, 1), weights / GB, grads / GB, optim / GB, acts / GB, overhead_gb)


def table(estimates: list[Estimate]) -> str:
    """A fixed-width text table of ESTIMATES (GB per GPU)."""
    cols = ["model", "mode", "zero", "gpus", "batch", "seq", "trainable_params_m", "weights", "gradients",
            "optimizer", "activations", "overhead", "total"]
    heads = ["model", "mode", "ZeRO", "GPUs", "batch", "seq", "trainable M", "weights", "grads", "optim",
             "activ.", "other", "TOTAL GB"]
    rows = [[str(e.row()[c]) for c in cols] for e in estimates]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(r) for r in rows])


def plot_zero(model: str = "InternVL2-8B", gpus: int = 8, mode: str = "full", seq: int = 4096):
    """A stacked-bar picture of GB per GPU for ZeRO stages 0-3 (weights, gradients, optimizer, activations)."""
    plt = pyplot()  # with the CJK font

    es = [estimate(model, mode=mode, zero=z, gpus=gpus, seq=seq) for z in range(4)]
    parts = [("weights", "tab:blue"), ("gradients", "tab:orange"), ("optimizer", "tab:green"),
             ("activations", "tab:red"), ("overhead", "tab:gray")]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    labels = ["no ZeRO\n(DDP)", "ZeRO-1\noptimizer /N", "ZeRO-2\n+ gradients /N", "ZeRO-3\n+ weights /N"]
    bottom = [0.0] * 4
    for name, colour in parts:
        vals = [getattr(e, name) for e in es]
        ax.bar(labels, vals, bottom=bottom, color=colour, label=name)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, b in enumerate(bottom):
        ax.text(i, b, f"{b:.0f} GB", ha="center", va="bottom")
    ax.set(ylabel="GB per GPU", title=f"{model}, {mode} fine-tune on {gpus} GPUs (batch 1, {seq} tokens)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
