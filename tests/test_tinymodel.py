"""Tests of labsupport.tinymodel and the project's InternVL2 remote code (course env; one check in the deploy env)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from labsupport.paths import repo_root
from labsupport.remote_code.conversation import get_conv_template
from labsupport.remote_code.modeling_internvl_chat import pixel_shuffle
from labsupport.tinymodel import build_tiny_model, parameter_counts, resolve_model

GEN = dict(max_new_tokens=6, do_sample=False)
PY_FILES = ["configuration_intern_vit.py", "configuration_internvl_chat.py", "conversation.py",
            "modeling_intern_vit.py", "modeling_internvl_chat.py"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plate_image() -> Image.Image:
    """A 448x448 picture in the spirit of the course task: a white plate with a red circle on grey."""
    img = Image.new("RGB", (448, 448), (200, 200, 200))
    draw = ImageDraw.Draw(img)
    draw.ellipse((40, 40, 408, 408), fill=(255, 255, 255))
    draw.ellipse((180, 180, 260, 260), fill=(220, 20, 20))
    return img


def to_pixel_values(img: Image.Image) -> torch.Tensor:
    """Resize to 448 (bicubic) and normalise with the ImageNet mean/std: [1, 3, 448, 448]."""
    arr = np.asarray(img.convert("RGB").resize((448, 448), Image.BICUBIC), dtype=np.float32) / 255.0
    arr = (arr - np.array([0.485, 0.456, 0.406], dtype=np.float32)) / np.array([0.229, 0.224, 0.225], dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "internvl2-tiny", seed=0)


@pytest.fixture(scope="module")
def loaded(tiny):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(tiny), trust_remote_code=True, torch_dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny), trust_remote_code=True)
    return model, tok


def test_build_writes_official_layout(tiny):
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["architectures"] == ["InternVLChatModel"]
    assert cfg["auto_map"]["AutoModel"] == "modeling_internvl_chat.InternVLChatModel"
    assert cfg["llm_config"]["architectures"] == ["Phi3ForCausalLM"]
    assert cfg["vision_config"]["model_type"] == "intern_vit_6b"
    for key, value in {"force_image_size": 448, "downsample_ratio": 0.5, "ps_version": "v2", "select_layer": -1,
                       "template": "phi3-chat", "dynamic_image_size": True, "use_thumbnail": True,
                       "min_dynamic_patch": 1, "max_dynamic_patch": 12}.items():
        assert cfg[key] == value, key
    for name in PY_FILES + ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        assert (tiny / name).is_file(), name
    size = sum(f.stat().st_size for f in tiny.iterdir())
    assert size < 10 * 2**20, f"the tiny model should be a few MB, is {size / 2**20:.1f} MB"
    assert cfg["llm_config"]["vocab_size"] % 64 == 0


def test_build_is_deterministic_and_stamped(tiny, tmp_path):
    again = build_tiny_model(tmp_path / "same", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha256(again / name) == sha256(tiny / name), name
    assert sha256(other / "model.safetensors") != sha256(tiny / "model.safetensors")
    before = (again / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tmp_path / "same", seed=0) == tmp_path / "same"
    assert (again / "model.safetensors").stat().st_mtime_ns == before, "an up-to-date build must be skipped"
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("a learner's file")
    with pytest.raises(FileExistsError, match="refusing"):
        build_tiny_model(tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "a learner's file"


def test_resolve_model(tiny, tmp_path):
    built = resolve_model("tiny", artifacts=tiny.parent.parent)  # ARTIFACTS/models/internvl2-tiny
    assert built == tiny.parent.parent / "models" / "internvl2-tiny" and (built / "config.json").is_file()
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path / "real")) == (tmp_path / "real").resolve()
    with pytest.raises(FileNotFoundError, match="MODEL_PATH"):
        resolve_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_resolve_model_dotted_folder(tiny, tmp_path):
    from transformers import AutoModel, dynamic_module_utils

    dotted = tmp_path / "iter_10.pth_hf"  # the kind of name a converted XTuner checkpoint gets
    shutil.copytree(tiny, dotted)
    if hasattr(dynamic_module_utils, "_sanitize_module_name"):  # newer transformers copes: it must load
        assert resolve_model(str(dotted)) == dotted.resolve()
        AutoModel.from_pretrained(str(dotted), trust_remote_code=True)
    else:  # transformers 4.48 cannot import it: resolve_model says so before the cryptic failure
        with pytest.raises(ValueError, match="Rename the folder"):
            resolve_model(str(dotted))
        with pytest.raises(ModuleNotFoundError):
            AutoModel.from_pretrained(str(dotted), trust_remote_code=True)


def test_pixel_shuffle_shape_and_layout():
    n, h, w, c = 2, 4, 6, 3
    x = torch.arange(n * h * w * c, dtype=torch.float32).reshape(n, h, w, c)
    y = pixel_shuffle(x, 0.5, "v2")
    assert y.shape == (n, h // 2, w // 2, 4 * c)
    assert torch.equal(y.flatten().sort().values, x.flatten())  # a permutation: nothing lost or duplicated
    for i in range(h // 2):  # v2: output (i, j) is the 2x2 block at rows 2i..2i+1, columns 2j..2j+1, row-major
        for j in range(w // 2):
            block = torch.cat([x[:, 2 * i, 2 * j], x[:, 2 * i, 2 * j + 1], x[:, 2 * i + 1, 2 * j], x[:, 2 * i + 1, 2 * j + 1]], -1)
            assert torch.equal(y[:, i, j], block)
    sq = torch.randn(1, 32, 32, 8)
    assert torch.equal(pixel_shuffle(sq, 0.5, "v1"), pixel_shuffle(sq, 0.5, "v2").transpose(1, 2))
    assert pixel_shuffle(sq).shape == (1, 16, 16, 32)


def test_extract_feature_and_parameter_counts(loaded):
    model, _ = loaded
    with torch.no_grad():
        feats = model.extract_feature(torch.randn(3, 3, 448, 448))
    assert feats.shape == (3, 256, 128)
    assert model.num_image_token == 256
    counts = parameter_counts(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["mlp1"] == (256 * 2) + (256 * 128 + 128) + (128 * 128 + 128)  # LayerNorm(4*64) -> 128 -> 128


def test_state_dict_names_follow_official_checkpoints(loaded):
    names = set(loaded[0].state_dict())
    for name in ["vision_model.embeddings.class_embedding", "vision_model.embeddings.patch_embedding.weight",
                 "vision_model.embeddings.position_embedding", "vision_model.encoder.layers.1.attn.qkv.weight",
                 "vision_model.encoder.layers.0.attn.proj.weight", "vision_model.encoder.layers.0.ls1",
                 "vision_model.encoder.layers.0.norm2.weight", "vision_model.encoder.layers.0.mlp.fc2.weight",
                 "mlp1.0.weight", "mlp1.1.weight", "mlp1.3.weight", "language_model.model.embed_tokens.weight",
                 "language_model.model.layers.1.self_attn.qkv_proj.weight", "language_model.lm_head.weight"]:
        assert name in names, name


def test_chat_template_renders_phi3_two_turns(tiny, loaded):
    _, tok = loaded
    messages = [{"role": "user", "content": "What colour is it?"}, {"role": "assistant", "content": "Red."},
                {"role": "user", "content": "盘子上有几个物体？"}]
    expected = ("<|system|>\nYou are an AI assistant whose name is Phi-3.<|end|>\n"
                "<|user|>\nWhat colour is it?<|end|><|assistant|>\nRed.<|end|>"
                "<|user|>\n盘子上有几个物体？<|end|><|assistant|>\n")
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    with_system = [{"role": "system", "content": "Be brief."}] + messages[:1]
    assert tok.apply_chat_template(with_system, tokenize=False, add_generation_prompt=False) == \
        "<|system|>\nBe brief.<|end|>\n<|user|>\nWhat colour is it?<|end|>"
    conv = get_conv_template("phi3-chat")  # chat() and the tokenizer's template must agree
    for m in messages:
        conv.append_message(conv.roles[0] if m["role"] == "user" else conv.roles[1], m["content"])
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == expected
    gen = json.loads((tiny / "generation_config.json").read_text())
    assert tok.convert_tokens_to_ids("<|end|>") in gen["eos_token_id"]
    assert tok.convert_tokens_to_ids("</s>") in gen["eos_token_id"]


def test_tokenizer_special_tokens_are_single_ids(loaded):
    _, tok = loaded
    for t in ["<img>", "</img>", "<IMG_CONTEXT>", "<|user|>", "<|end|>", "<|assistant|>", "<|system|>", "<box>"]:
        ids = tok(t, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, t
    text = "What colour are the objects on the plate? 盘子上的物体是什么颜色？"
    assert tok.decode(tok(text).input_ids) == text
    assert 1000 < len(tok) <= 4096


def test_chat_and_batch_chat(loaded):
    model, tok = loaded
    px = to_pixel_values(plate_image())
    answer, history = model.chat(tok, px, "What colour are the objects on the plate?", GEN, return_history=True)
    assert isinstance(answer, str) and history[-1] == ("<image>\nWhat colour are the objects on the plate?", answer)
    assert model.img_context_token_id == tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    pixels = torch.cat([px, px.flip(-1)])
    answers = model.batch_chat(tok, pixels, ["What shape?", "盘子上有几个物体？"], GEN, num_patches_list=[1, 1])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    with pytest.raises(ValueError, match="num_patches_list"):
        model.chat(tok, pixels, "two tiles, wrong count", GEN, num_patches_list=[1])


def test_xtuner_flash_attention_request_falls_back(tiny):
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(tiny), trust_remote_code=True)
    config.llm_config._attn_implementation = "flash_attention_2"  # what xtuner/model/internvl.py does
    model = AutoModel.from_pretrained(str(tiny), config=config, torch_dtype=torch.bfloat16, trust_remote_code=True)
    assert model.language_model.config._attn_implementation in ("sdpa", "eager")
    assert model.config.use_return_dict is True
    model.language_model.enable_input_require_grads()
    model.language_model.gradient_checkpointing_enable()
    embeds = model.language_model.get_input_embeddings()(torch.tensor([[5, 6, 7]]))
    out = model.language_model(inputs_embeds=embeds, use_cache=False)
    assert out.logits.shape == (1, 3, config.llm_config.vocab_size)


def test_save_pretrained_carries_remote_code(loaded, tmp_path):
    from transformers import AutoModel

    model, _ = loaded
    model.save_pretrained(tmp_path / "saved")
    for name in PY_FILES:
        assert (tmp_path / "saved" / name).is_file(), name
    again = AutoModel.from_pretrained(str(tmp_path / "saved"), trust_remote_code=True, torch_dtype=torch.float32)
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["llm_config"]["architectures"] == ["Phi3ForCausalLM"]
    a, b = model.state_dict(), again.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


DEPLOY_SCRIPT = textwrap.dedent("""
    import sys, torch, transformers
    from transformers import AutoModel, AutoTokenizer
    path = sys.argv[1]
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    model = AutoModel.from_pretrained(path, trust_remote_code=True, dtype=torch.float32).eval()
    px = torch.randn(1, 3, 448, 448)
    assert tuple(model.extract_feature(px).shape) == (1, 256, 128)
    answer = model.chat(tok, px, "What colour?", dict(max_new_tokens=4, do_sample=False))
    answers = model.batch_chat(tok, torch.cat([px, px]), ["a?", "b?"], dict(max_new_tokens=4, do_sample=False),
                               num_patches_list=[1, 1])
    assert isinstance(answer, str) and len(answers) == 2
    prompt = tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\\nq<|end|><|assistant|>\\n"), prompt
    print("DEPLOY-OK", transformers.__version__)
""")


@pytest.mark.deploy
def test_loads_and_chats_in_deploy_env(tiny):
    python = Path(os.environ.get("LABSUPPORT_DEPLOY_PYTHON", repo_root() / ".venvs/internvl-deploy/bin/python"))
    if not python.exists():
        pytest.skip(f"deploy env python {python} not found (set LABSUPPORT_DEPLOY_PYTHON)")
    env = dict(os.environ, PYTHONPATH=str(repo_root()))
    proc = subprocess.run([str(python), "-c", DEPLOY_SCRIPT, str(tiny)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0 and "DEPLOY-OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_weights_are_drawn_at_the_scale_of_a_narrow_network(tiny):
    """std 1/sqrt(fan_in) for projections (not the real model's 0.02), so signals keep their size layer to layer."""
    from safetensors.torch import load_file

    weights = {k: v.float() for k, v in load_file(str(tiny / "model.safetensors")).items()}
    q = weights["language_model.model.layers.0.self_attn.qkv_proj.weight"]
    assert q.std().item() == pytest.approx(q.shape[1] ** -0.5, rel=0.05)
    patch = weights["vision_model.embeddings.patch_embedding.weight"]
    assert patch.std().item() == pytest.approx((3 * 14 * 14) ** -0.5, rel=0.05)
    assert weights["language_model.model.embed_tokens.weight"].std().item() == pytest.approx(1.0, rel=0.05)
    assert weights["vision_model.embeddings.position_embedding"].std().item() == pytest.approx(0.02, rel=0.05)
    assert bool((weights["language_model.model.norm.weight"] == 1).all())
