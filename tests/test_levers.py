"""The lever comparison of XTuner and ms-swift (benchmarks/levers_cpu.py) and the shim settings it needs (course env)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import levers_cpu as L

pytest.importorskip("xtuner")


def test_trained_modules_name_the_lora_layers_and_the_modules_trained_whole():
    xtuner = ["model.language_model.base_model.model.model.layers.0.attention.wqkv.lora_A.default.weight",
              "model.language_model.base_model.model.model.layers.0.attention.wqkv.lora_B.default.weight",
              "model.language_model.base_model.model.output.lora_A.default.weight",
              "model.mlp1.1.weight", "model.mlp1.3.bias"]
    swift = ["base_model.model.language_model.model.layers.1.feed_forward.w2.lora_A.weight",
             "base_model.model.mlp1.modules_to_save.default.1.weight"]
    assert L.trained_modules(xtuner) == {"lora": ["output", "wqkv"], "full": ["mlp1"]}
    assert L.trained_modules(swift) == {"lora": ["w2"], "full": ["mlp1"]}


def test_every_lever_names_a_line_of_xtuners_official_config():
    from labsupport.train import xtuner_config as XC

    official = XC.official_config_path("internvl_v2_internlm2_2b_lora_finetune").read_text().splitlines()
    stripped = {ln.strip() for ln in official}
    for lever, edits in L.LEVERS.items():
        for old, _, _ in edits:
            # weight_decay's official value is 0.05; notebook 04's preset writes 0.0 before the lever applies
            assert old in stripped or old.startswith("weight_decay"), f"lever {lever}: {old!r} is not in XTuner's file"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from labsupport.model.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "internvl2-tiny")


@pytest.fixture(scope="module")
def plates(tmp_path_factory) -> dict:
    from labsupport.datasets.plates import build_course_task

    return build_course_task(tmp_path_factory.mktemp("data") / "plates", n_train=2, n_heldout=1, kinds=("colour",),
                             progress=False)


def _dataset(tiny: Path, plates: dict, **kw):
    import copy

    from xtuner.utils import PROMPT_TEMPLATE

    from labsupport.train.xtuner_shims import CourseInternVLDataset

    return CourseInternVLDataset(str(tiny), copy.deepcopy(PROMPT_TEMPLATE.internlm2_chat), [str(plates["train"])],
                                 [str(plates["root"])], max_length=1024, max_dynamic_patch=1, **kw)


def test_the_dataset_shim_trains_with_the_system_prompt_it_is_given(tiny, plates):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny), trust_remote_code=True)
    default = tok.decode(_dataset(tiny, plates)[0]["input_ids"])
    given = tok.decode(_dataset(tiny, plates, system="Answer in one word.")[0]["input_ids"])
    assert "InternLM" in default and "Answer in one word." not in default
    assert "Answer in one word." in given and "InternLM" not in given


def test_the_cpu_model_shim_can_build_the_published_rotary_cache_in_float32(artifacts):
    """XTuner loads in bfloat16, so the published InternLM2 code caches its rotary cos/sin in bfloat16 (the weights
    themselves are stored in bfloat16: nothing else is rounded); load_dtype="float32" builds it as ms-swift's load does."""
    import torch

    from labsupport.model import official
    from labsupport.train.xtuner_shims import CPUInternVL

    built = official.available(artifacts).get("2B")
    if built is None:
        pytest.skip("no official-format InternVL2-2B built (python -m labsupport.model.official 2B)")

    def rotary(**kw):
        m = CPUInternVL(str(built), freeze_llm=True, freeze_visual_encoder=True, gradient_checkpointing=False, **kw)
        return next(mod for mod in m.model.language_model.modules() if hasattr(mod, "cos_cached"))

    exact, rounded = rotary(load_dtype="float32"), rotary()
    assert exact.cos_cached.dtype == rounded.cos_cached.dtype == torch.float32  # CPUInternVL casts up either way
    assert torch.equal(rounded.cos_cached, exact.cos_cached.bfloat16().float())
    assert not torch.equal(rounded.cos_cached, exact.cos_cached)
