"""Build the embedded miniature InternVL2 checkpoint ("tiny") and resolve the MODEL_PATH parameter.

The tiny model has the structure of the real InternVL2-4B (InternViT -> pixel shuffle -> MLP
projector -> Phi-3) in the official remote-code format, with hidden sizes of tens and two layers
per tower, so it loads with AutoModel(trust_remote_code=True), trains with XTuner and runs on a
CPU. Its weights are random (deterministic for a seed): it answers gibberish until fine-tuned.
They are drawn at the scale that suits a narrow network (std 1/sqrt(fan_in), see init_std), so that
the image's signal reaches the answer at once and fine-tuning on a CPU takes minutes, not hours.

    from labsupport.tinymodel import resolve_model
    model_dir = resolve_model(MODEL_PATH)      # "tiny" -> artifacts/models/internvl2-tiny/
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoints import write_json_atomic
from .paths import artifacts_dir
from .remote_code import REMOTE_CODE_DIR, REMOTE_CODE_FILES

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

TINY_NAME = "internvl2-tiny"
CORPUS = Path(__file__).resolve().parent / "data" / "tokenizer_corpus.txt"
STAMP_FILE = ".labsupport-build.json"
BUILDER_VERSION = 2  # bump when the builder writes something different (2: fan-in scaled weights)

SPECIAL_TOKENS = [
    "<unk>", "<s>", "</s>", "<|endoftext|>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
    "<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>",
]
DEFAULT_SYSTEM = "You are an AI assistant whose name is Phi-3."

# The sizes of the miniature model (the real InternVL2-4B in brackets).
TINY_SETTINGS = {
    "vision": {"hidden_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,  # [1024, 16, 24]
               "intermediate_size": 128, "image_size": 448, "patch_size": 14},       # [4096, 448, 14]
    "llm": {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 2,  # [3072, 32, 32]
            "num_hidden_layers": 2, "intermediate_size": 256,                         # [32, 8192]
            "max_position_embeddings": 4096},
    "tokenizer_vocab_size": 3000,  # [32064]
    "init_std": 0.02,  # config.json's initializer_range (what transformers uses for weights it creates)
}

# Phi-3 chat layout as XTuner 0.2.0 trains InternVL2-Phi3 (and as conversation.py's "phi3-chat"
# renders it): "<|system|>\n{system}<|end|>\n<|user|>\n{q}<|end|><|assistant|>\n{a}<|end|>".
CHAT_TEMPLATE = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = text(messages[0]['content']) -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = '" + DEFAULT_SYSTEM + "' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- if system -%}{{ '<|system|>\\n' + system + '<|end|>\\n' }}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}{{ '<|user|>\\n' + text(message['content']) + '<|end|>' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '<|assistant|>\\n' + text(message['content']) + '<|end|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)


def _stamp(seed: int) -> str:
    """Hash of everything the build depends on: remote code, corpus, settings, seed, builder version."""
    h = hashlib.sha256()
    for name in REMOTE_CODE_FILES:
        h.update(name.encode() + b"\0" + (REMOTE_CODE_DIR / name).read_bytes())
    h.update(CORPUS.read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(json.dumps({"settings": TINY_SETTINGS, "seed": seed, "v": BUILDER_VERSION}, sort_keys=True).encode())
    return h.hexdigest()


def train_tokenizer(corpus: Path = CORPUS, vocab_size: int = TINY_SETTINGS["tokenizer_vocab_size"]) -> "Tokenizer":
    """Train the byte-level BPE tokenizer (a tokenizers.Tokenizer) on the course corpus; deterministic."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    lines = [ln for ln in corpus.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([  # one Chinese character (or CJK punctuation) per word
        pre_tokenizers.Split(Regex("[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def _write_tokenizer(tok: "Tokenizer", out: Path) -> int:
    """Write tokenizer.json and tokenizer_config.json (a PreTrainedTokenizerFast); return the vocab size."""
    (out / "tokenizer.json").write_text(tok.to_str(pretty=True), encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<|endoftext|>",
        "additional_special_tokens": SPECIAL_TOKENS[4:],
        "model_max_length": TINY_SETTINGS["llm"]["max_position_embeddings"],
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    special_map = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token", "additional_special_tokens")}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")
    return tok.get_vocab_size()


def internvl_config(vision: dict, llm: dict, vocab_size: int, init_std: float = TINY_SETTINGS["init_std"]) -> dict:
    """config.json of an InternVL2 model (official layout, InternViT + Phi-3) of any shape: VISION and LLM hold
    the keys of TINY_SETTINGS["vision"] / ["llm"]; VOCAB_SIZE is the LLM's embedding rows."""
    ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    v, l = vision, llm
    vision_config = {
        "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
        "num_channels": 3, "patch_size": v["patch_size"], "image_size": v["image_size"],
        "hidden_size": v["hidden_size"], "num_attention_heads": v["num_attention_heads"],
        "intermediate_size": v["intermediate_size"], "num_hidden_layers": v["num_hidden_layers"],
        "qkv_bias": True, "qk_normalization": False, "use_flash_attn": False, "hidden_act": "gelu",
        "norm_type": "layer_norm", "layer_norm_eps": 1e-6, "dropout": 0.0, "drop_path_rate": 0.0,
        "attention_dropout": 0.0, "initializer_range": init_std, "initializer_factor": 1.0,
        "torch_dtype": "bfloat16",
    }
    llm_config = {
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
        "vocab_size": vocab_size, "hidden_size": l["hidden_size"], "intermediate_size": l["intermediate_size"],
        "num_hidden_layers": l["num_hidden_layers"], "num_attention_heads": l["num_attention_heads"],
        "num_key_value_heads": l["num_key_value_heads"], "hidden_act": "silu",
        "max_position_embeddings": l["max_position_embeddings"],
        "original_max_position_embeddings": l["max_position_embeddings"],
        "initializer_range": init_std, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "rope_scaling": None, "sliding_window": None, "use_cache": True, "tie_word_embeddings": False,
        "attention_dropout": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
        "bos_token_id": ids["<s>"], "eos_token_id": ids["</s>"], "pad_token_id": ids["<|endoftext|>"],
        "torch_dtype": "bfloat16",
    }
    return {
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "model_type": "internvl_chat",
        "torch_dtype": "bfloat16",
        "force_image_size": v["image_size"],
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "select_layer": -1,
        "template": "phi3-chat",
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "tie_word_embeddings": False,
        "vision_config": vision_config,
        "llm_config": llm_config,
    }


def tiny_config(vocab_size: int) -> dict:
    """The config.json of the tiny model (official InternVL2 layout) for a tokenizer of VOCAB_SIZE tokens."""
    padded_vocab = (vocab_size + 63) // 64 * 64
    return internvl_config(TINY_SETTINGS["vision"], TINY_SETTINGS["llm"], padded_vocab)


def init_kind(name: str, shape) -> str:
    """How parameter NAME starts: "zeros" for biases, "ones" for norms and layer scales, else "normal"."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return "zeros"
    if len(shape) == 1 and ("norm" in name or name.startswith("mlp1.0.") or leaf in ("ls1", "ls2")):
        return "ones"
    return "normal"


def init_std(name: str, shape) -> float:
    """Standard deviation of a "normal" parameter: 1/sqrt(fan_in) for weights, 1 for token embeddings, 0.02 for ViT position/class embeddings.

    Why not the real model's initializer_range of 0.02 everywhere: 0.02 is about 1/sqrt(fan_in) for a
    width of 3,072. In a width-128 LLM it shrinks every projection's output about 4x, so what the answer
    token reads from the image tokens arrives ~20x too weak after attention's value and output
    projections; the measured effect: the model answered from the question alone for ~600 iterations
    before it looked at the image. At 1/sqrt(fan_in) (LeCun) signals keep their size through each layer.
    """
    if "embed_tokens" in name:
        return 1.0  # a lookup, not a projection: unit-size rows, as the RMSNorm after it expects
    if len(shape) < 2 or "position_embedding" in name or "class_embedding" in name:
        return 0.02  # added to the patch features: small, like the real model's
    fan_in = 1
    for n in shape[1:]:
        fan_in *= int(n)
    return fan_in ** -0.5


def _init_value(name: str, shape, generator):
    """Deterministic initial value of parameter NAME: zeros for biases, ones for norms and layer scales, else N(0, init_std)."""
    import torch

    kind = init_kind(name, shape)
    if kind == "zeros":
        return torch.zeros(shape)
    if kind == "ones":
        return torch.ones(shape)
    return torch.randn(shape, generator=generator) * init_std(name, shape)


def parameter_shapes(config: dict) -> dict[str, tuple]:
    """Name -> shape of every tensor of the InternVLChatModel CONFIG describes (built on the meta device: no memory)."""
    import torch

    from .remote_code.configuration_internvl_chat import InternVLChatConfig
    from .remote_code.modeling_internvl_chat import InternVLChatModel

    cfg = InternVLChatConfig(**{k: v for k, v in config.items() if k not in ("architectures", "auto_map", "model_type")})
    with torch.device("meta"):
        model = InternVLChatModel(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _write_weights(config: dict, out: Path, seed: int) -> None:
    """Instantiate the architecture on the meta device for names and shapes; write seeded bf16 weights."""
    import torch
    from safetensors.torch import save_file

    shapes = parameter_shapes(config)
    tensors = {}
    for name in sorted(shapes):  # one generator per tensor: adding a tensor never changes the others
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        tensors[name] = _init_value(name, shapes[name], gen).to(torch.bfloat16).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def write_model_files(out: Path, config: dict, tokenizer: "Tokenizer | None" = None) -> int:
    """Write everything of a checkpoint but its weights into OUT: tokenizer, config.json, generation_config.json,
    the remote code; return the tokenizer's vocabulary size (token ids below it are valid for CONFIG's LLM).
    TOKENIZER: the course tokenizer (train_tokenizer()), trained here when not given."""
    vocab_size = _write_tokenizer(tokenizer or train_tokenizer(), out)
    if config["llm_config"]["vocab_size"] < vocab_size:
        raise ValueError(f"llm_config.vocab_size = {config['llm_config']['vocab_size']} is smaller than the tokenizer's "
                         f"{vocab_size} tokens: the embedding must have a row for every token id")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    generation = {"bos_token_id": ids["<s>"], "eos_token_id": [ids["</s>"], ids["<|end|>"]],
                  "pad_token_id": ids["<|endoftext|>"], "do_sample": False, "max_new_tokens": 64}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    for name in REMOTE_CODE_FILES:
        shutil.copyfile(REMOTE_CODE_DIR / name, out / name)
    return vocab_size


def build_tiny_model(out_dir: str | os.PathLike | None = None, seed: int = 0, force: bool = False) -> Path:
    """Write the tiny InternVL2 checkpoint to OUT_DIR (default artifacts/models/internvl2-tiny/); skip when up to date."""
    out = Path(out_dir) if out_dir is not None else artifacts_dir() / "models" / TINY_NAME
    stamp = _stamp(seed)
    try:
        if not force and json.loads((out / STAMP_FILE).read_text())["stamp"] == stamp:
            return out
    except (FileNotFoundError, KeyError, ValueError):
        pass  # no stamp or an unreadable one: build
    if out.is_dir() and any(out.iterdir()) and not (out / STAMP_FILE).exists():
        raise FileExistsError(f"{out} exists and was not written by build_tiny_model (no {STAMP_FILE}); "
                              "refusing to overwrite it. Choose another out_dir or delete that folder yourself.")
    started = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tok = train_tokenizer()
        config = tiny_config(tok.get_vocab_size())
        vocab_size = write_model_files(tmp, config, tok)
        _write_weights(config, tmp, seed)
        write_json_atomic(tmp / STAMP_FILE, {"stamp": stamp, "seed": seed, "vocab_size": vocab_size,
                                             "build_seconds": round(time.time() - started, 2)})
        for f in tmp.iterdir():  # mkdtemp and safetensors create private files; a model folder is for everyone
            f.chmod(0o644)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished the same build first: keep its copy if it is current
            if json.loads((out / STAMP_FILE).read_text()).get("stamp") != stamp:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model(model_path: str = "tiny", artifacts: str | os.PathLike | None = None) -> Path:
    """Resolve the MODEL_PATH parameter: "tiny" builds/returns the miniature model (under ARTIFACTS), else a checkpoint folder."""
    if str(model_path).strip().lower() == "tiny":
        return build_tiny_model(artifacts_dir(artifacts) / "models" / TINY_NAME)
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"MODEL_PATH = {str(model_path)!r} is not a folder. Set MODEL_PATH to \"tiny\" for the built-in "
            "miniature model, or to the folder of a downloaded InternVL2 checkpoint (e.g. ./InternVL2-2B) "
            "that holds config.json and the weights.")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"MODEL_PATH = {str(model_path)!r} has no config.json, so it is not a Hugging Face checkpoint. "
            "Point MODEL_PATH at the folder that holds config.json (e.g. the one `huggingface-cli download "
            "OpenGVLab/InternVL2-2B --local-dir ...` created), or set it to \"tiny\".")
    _check_remote_code_name(path)
    return path.resolve()


def _check_remote_code_name(path: Path) -> None:
    """transformers < 5 imports remote code as a module named after the folder: a '.' in that name breaks it."""
    if "." not in path.resolve().name:
        return
    try:
        auto_map = json.loads((path / "config.json").read_text(encoding="utf-8")).get("auto_map")
        from transformers import dynamic_module_utils
    except (ValueError, ImportError):
        return  # unreadable config or no transformers here: nothing to predict
    if auto_map and not hasattr(dynamic_module_utils, "_sanitize_module_name"):
        raise ValueError(
            f"MODEL_PATH = {str(path)!r}: this transformers version cannot load remote code from a folder whose "
            f"name contains '.' ({path.resolve().name!r}; it fails with 'No module named transformers_modules...'). "
            "Rename the folder (e.g. replace '.' with '_') and set MODEL_PATH to the new name.")


def parameter_counts(model: "torch.nn.Module") -> dict[str, int]:
    """Number of parameters of an InternVLChatModel by part: vision_model, mlp1, language_model, total."""
    parts = {name: sum(p.numel() for p in getattr(model, name).parameters())
             for name in ("vision_model", "mlp1", "language_model")}
    parts["total"] = sum(parts.values())
    return parts
