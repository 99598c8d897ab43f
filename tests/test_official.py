"""Tests of labsupport.model.official: official-format checkpoints (published remote code, tiny random weights).

The checkpoints are built from a local clone of OpenGVLab/InternVL (`python -m labsupport.model.official`); where
they are absent (CI has no network) the tests that need them skip and say why.
"""
from __future__ import annotations

import json

import pytest
import torch

from labsupport.model import official


def test_flatten_imports_makes_package_imports_relative():
    text = ("from internvl.conversation import get_conv_template\n"
            "from internvl.model.internlm2.modeling_internlm2 import InternLM2ForCausalLM\n"
            "    from internvl.model.phi3.configuration_phi3 import Phi3Config\n"
            "from transformers import AutoModel\nfrom .configuration_intern_vit import InternVisionConfig\n")
    assert official.flatten_imports(text) == (
        "from .conversation import get_conv_template\n"
        "from .modeling_internlm2 import InternLM2ForCausalLM\n"
        "    from .configuration_phi3 import Phi3Config\n"
        "from transformers import AutoModel\nfrom .configuration_intern_vit import InternVisionConfig\n")


def built() -> dict:
    found = official.available()
    if not found:
        pytest.skip(f"no official-format checkpoints under {official.official_dir('2B').parent}: build them with "
                    f"`python -m labsupport.model.official --source <clone of github.com/{official.SOURCE_REPO}>`")
    return found


@pytest.mark.parametrize("size", official.SIZES)
def test_official_format_checkpoint_loads_and_chats(size):
    from transformers import AutoModel, AutoTokenizer

    path = built().get(size)
    if path is None:
        pytest.skip(f"InternVL2-{size} official-format checkpoint not built (python -m labsupport.model.official {size})")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["llm_config"]["architectures"] == [official.LAYOUTS[size]["llm"]]
    assert json.loads((path / "SOURCE.json").read_text())["commit"] == official.SOURCE_COMMIT
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=True, use_fast=False)
    model = AutoModel.from_pretrained(str(path), trust_remote_code=True, torch_dtype=torch.float32).eval()
    assert "InternVL" in type(model).__name__ and model.template == official.LAYOUTS[size]["template"]
    answer = model.chat(tok, torch.randn(1, 3, 448, 448), "What colour?", dict(max_new_tokens=3, do_sample=False))
    assert isinstance(answer, str)
