"""labsupport.publish.modelcard: the card's facts come from the results files, and the checker catches a card that disagrees."""
import json

import pytest
import yaml

from labsupport.publish import modelcard

CONFIG = """from xtuner.utils import PROMPT_TEMPLATE
path = '/home/someone/artifacts/models/internvl2-tiny'
data_paths = ['/home/someone/artifacts/data/plates/train.json']
prompt_template = PROMPT_TEMPLATE.phi3_chat  # chat markers
max_length = 2048
freeze_llm = True
freeze_visual_encoder = True
lora_r, lora_alpha, lora_dropout = 16, 32, 0.05
batch_size = 2
max_iters = 120
lr = 0.0001
model = dict(type=object, model_path=path)   # not a literal: ignored
"""
SCALARS = [{"iter": 10, "loss": 3.25, "lr": 1e-4}, {"iter": 20, "loss": 2.0}, {"iter": 120, "loss": 0.5, "lr": 0.0}]
RESULTS = {"before": {"accuracy": 0.25, "n": 40, "per_kind": {"colour": 0.5, "count": 0.0}},
           "after": {"accuracy": 0.875, "n": 40, "per_kind": {"colour": 1.0, "count": 0.75}}}


@pytest.fixture
def work_dir(tmp_path):
    wd = tmp_path / "work_dirs" / "04_finetune"
    wd.mkdir(parents=True)
    (wd / "tiny_lora.py").write_text(CONFIG)
    (wd / "scalars.json").write_text(json.dumps(SCALARS))
    return wd


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(RESULTS))
    return path


def test_read_config_settings_takes_literals_and_template_names(work_dir):
    s = modelcard.read_config_settings(work_dir / "tiny_lora.py")
    assert s["lora_r"] == 16 and s["lora_alpha"] == 32 and s["lora_dropout"] == 0.05
    assert s["prompt_template"] == "phi3_chat" and s["max_iters"] == 120 and s["freeze_llm"] is True
    assert "model" not in s


def test_read_training_summarises_the_run_without_local_paths(work_dir):
    t = modelcard.read_training(work_dir)
    assert (t["mode"], t["iters"], t["loss_first"], t["loss_last"]) == ("LoRA", 120, 3.25, 0.5)
    assert t["settings"]["path"] == "internvl2-tiny"
    assert t["settings"]["data_paths"] == ["plates/train.json"]
    assert "someone" not in json.dumps(t["settings"])
    assert modelcard.read_training(work_dir.parent / "missing") is None


def test_read_evaluation_checks_the_shape(results, tmp_path):
    assert modelcard.read_evaluation(results)["after"]["accuracy"] == 0.875
    assert modelcard.read_evaluation(tmp_path / "nothing.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"before": 0.2, "after": 0.9}))
    with pytest.raises(ValueError, match="bad.json"):
        modelcard.read_evaluation(bad)


def test_card_carries_the_results_and_parses_as_the_hub_reads_it(work_dir, results):
    training, evaluation = modelcard.read_training(work_dir), modelcard.read_evaluation(results)
    card = modelcard.build_card("alice/InternVL2-tiny-plates", training, evaluation, base_model="OpenGVLab/InternVL2-2B")
    text = str(card)
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["base_model"] == "OpenGVLab/InternVL2-2B" and front["license"] == "mit"
    assert {"internvl", "xtuner", "lmdeploy", "lora"} <= set(front["tags"])
    assert front["datasets"] == ["plates"]
    assert front["model-index"][0]["name"] == "InternVL2-tiny-plates"
    assert front["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.875
    assert "| before fine-tuning | 25.0 % | 40 |" in text and "| after fine-tuning | 87.5 % | 40 |" in text
    assert "| colour | 50.0 % | 100.0 % |" in text and "| count | 0.0 % | 75.0 % |" in text
    assert "from [OpenGVLab/InternVL2-2B](https://huggingface.co/OpenGVLab/InternVL2-2B)" in text
    assert "120 iterations" in text and "loss 3.250 → 0.500" in text
    assert "AutoModel.from_pretrained" in text and 'path = "alice/InternVL2-tiny-plates"' in text and "pipeline(path," in text
    assert modelcard.check_card(card, training, evaluation) == []


def test_check_card_catches_numbers_that_are_not_the_results(work_dir, results):
    training, evaluation = modelcard.read_training(work_dir), modelcard.read_evaluation(results)
    card = modelcard.build_card("alice/InternVL2-tiny-plates", training, evaluation)
    from huggingface_hub import ModelCard

    typed_in = ModelCard(str(card).replace("87.5 %", "95.0 %").replace("value: 0.875", "value: 0.95"))
    problems = modelcard.check_card(typed_in, training, evaluation)
    assert any("after accuracy 87.5 %" in p for p in problems)
    assert any("model-index" in p for p in problems)


def test_card_without_results_says_so_and_stays_valid():
    card = modelcard.build_card("alice/InternVL2-tiny", None, None)
    assert "notebook 05 has not run" in str(card) and "notebook 04 has not run, or did not train" in str(card)
    assert "not fine-tuned" in str(card) and "fine-tuned with XTuner" not in str(card)
    assert modelcard.check_card(card, None, None) == []
    assert modelcard.check_card(modelcard.build_card("alice/tiny", None, None), None, None) == ["model name 'tiny' lacks 'InternVL'"]


@pytest.mark.notebook
def test_the_cards_snippet_runs_as_written_against_the_cards_own_model(tmp_path):
    """The usage snippet, copied from the card (README.md of the published folder), runs in a fresh Python."""
    import os
    import shutil
    import subprocess
    import sys

    from labsupport.datasets import plates
    from labsupport.model import tinymodel

    repo = tmp_path / "InternVL2-tiny-plates"
    shutil.copytree(tinymodel.resolve_model("tiny"), repo)
    (repo / "examples").mkdir()
    plates.draw_plate("red", "circle", 2, seed=1).save(repo / modelcard.EXAMPLE_IMAGE)
    card = modelcard.build_card(str(repo), None, None, max_num=1)
    (repo / "README.md").write_text(str(card), encoding="utf-8")
    snippet = modelcard.python_blocks((repo / "README.md").read_text(encoding="utf-8"))[0]
    assert "pixel_values = load_image(" in snippet and "plate" in snippet
    assert "labsupport" not in snippet  # a user outside the course has the model's own requirements only
    (tmp_path / "snippet.py").write_text(snippet, encoding="utf-8")
    # the course package made unimportable (sys.modules entry None), so an import of it anywhere would fail here
    runner = "import sys; sys.modules['labsupport'] = None; exec(compile(open('snippet.py').read(), 'snippet.py', 'exec'))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    ran = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.strip(), "the snippet printed no reply"


def test_read_training_reads_mmengines_dumped_config(tmp_path):
    # what train.py leaves in the work dir: top-level names resolved, the LoRA only inside model=dict(llm_lora=dict(...))
    lora = ("lr = 0.001\nbatch_size = 4\nmodel = dict(\n    freeze_llm=True,\n    freeze_visual_encoder=True,\n"
            "    llm_lora=dict(lora_alpha=64, lora_dropout=0.0, r=32, type='peft.LoraConfig'),\n"
            "    model_path='/m/tiny', type='xtuner.model.InternVL_V1_5')\n")
    (tmp_path / "run.py").write_text(lora)
    got = modelcard.read_training(tmp_path)
    assert got["mode"] == "LoRA" and got["settings"]["lora_r"] == 32 and got["settings"]["lora_alpha"] == 64
    (tmp_path / "run.py").write_text(lora.replace("freeze_llm=True", "freeze_llm=False")
                                     .replace("llm_lora=dict(lora_alpha=64, lora_dropout=0.0, r=32, type='peft.LoraConfig')",
                                              "llm_lora=None"))
    assert modelcard.read_training(tmp_path)["mode"] == "full"


@pytest.mark.parametrize("size,max_num", [((448, 448), 6), ((640, 360), 6), ((360, 900), 12), ((1000, 300), 4), ((512, 384), 1)])
def test_the_cards_inline_tiling_is_the_courses(tmp_path, size, max_num):
    """The card's few lines of preprocessing give the tensors the course trained with (labsupport.core.tiling)."""
    import torch
    from PIL import Image

    from labsupport.core import tiling

    path = tmp_path / "img.png"
    Image.effect_noise(size, 60).convert("RGB").save(path)
    scope = {"torch": torch}
    exec(modelcard.IMAGE_HELPERS, scope)
    mine, course = scope["load_image"](str(path), max_num), tiling.load_image(path, max_num=max_num)
    assert mine.shape == course.shape and torch.allclose(mine, course, atol=1e-6)


def test_the_cards_snippets_pass_the_trained_prompt_and_tiling():
    card = str(modelcard.build_card("me/InternVL2-x", None, None, max_num=6, system="Be brief."))
    transformers_block, lmdeploy_block = modelcard.python_blocks(card)
    assert "model.system_message = 'Be brief.'" in transformers_block and "max_num=6" in transformers_block
    assert "trust_remote_code=True" in lmdeploy_block and '"max_dynamic_patch": 6' in lmdeploy_block
    assert '"role": "system", "content": \'Be brief.\'' in lmdeploy_block
    assert "--trust-remote-code" in card and "127.0.0.1" in card


CARD_LMDEPLOY_CHECK = r"""
import ast, sys
from lmdeploy import ChatTemplateConfig
from labsupport.serve import lmdeploy_cpu
model, block = sys.argv[1], open(sys.argv[2]).read()
call = next(n for n in ast.walk(ast.parse(block)) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "pipeline")
assert any(k.arg == "trust_remote_code" and k.value.value is True for k in call.keywords), "pipeline() without trust_remote_code"
lmdeploy_cpu.check_engine_config(model, trust_remote_code=True)   # LMDeploy's own reading of the config passes
messages = eval(block.split("messages = ")[1].split("\nprint(")[0], {"os": __import__("os"), "path": model})
text_only = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else
              "<img><IMG_CONTEXT></img>\n" + m["content"][0]["text"]} for m in messages]
prompt = ChatTemplateConfig("hf", model_path=model).chat_template(trust_remote_code=True).messages2prompt(text_only)
assert "Be brief." in prompt, prompt
print("CARD-LMDEPLOY-OK")
"""


@pytest.mark.deploy
def test_the_cards_lmdeploy_snippet_passes_lmdeploys_own_checks(tmp_path):
    """In the deploy env: pipeline() trusts the remote code, LMDeploy reads the config, its chat template keeps the system prompt."""
    import os
    import subprocess
    from pathlib import Path

    from labsupport.core.paths import repo_root
    from labsupport.model import tinymodel

    python = Path(os.environ.get("LABSUPPORT_DEPLOY_PYTHON", repo_root() / ".venvs/internvl-deploy/bin/python"))
    if not python.exists():
        pytest.skip(f"deploy env python {python} not found (set LABSUPPORT_DEPLOY_PYTHON)")
    block = modelcard.python_blocks(modelcard.build_card("me/InternVL2-x", None, None, max_num=6, system="Be brief."))[1]
    (tmp_path / "block.py").write_text(block, encoding="utf-8")
    proc = subprocess.run([str(python), "-c", CARD_LMDEPLOY_CHECK, str(tinymodel.resolve_model("tiny")), str(tmp_path / "block.py")],
                          capture_output=True, text=True, timeout=400, env=dict(os.environ, PYTHONPATH=str(repo_root())))
    assert proc.returncode == 0 and "CARD-LMDEPLOY-OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
