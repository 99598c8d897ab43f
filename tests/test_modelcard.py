"""labsupport.publish.modelcard: the card's facts come from the results files, and the checker catches a card that disagrees."""
import json
from pathlib import Path

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


def venv_without_labsupport(where):
    """A new venv at WHERE whose only packages are this environment's site-packages, added as a plain path entry.

    The course installs labsupport in editable mode through a `.pth` file; a path entry's `.pth` files are not run,
    so `import labsupport` fails in this venv as on a user's machine. Same torch, transformers and Pillow as the course
    environment: what this shows is that the snippet needs nothing of the course, not that it runs with other versions."""
    import site
    import subprocess
    import sys
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    Path(target, "course_packages.pth").write_text("\n".join(sorted(ours)) + "\n", encoding="utf-8")
    return python


def clean_env():
    """This process's environment without PYTHONPATH (which points at the course's checkout) and offline."""
    import os

    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {"HF_HUB_OFFLINE": "1"}


@pytest.mark.notebook
def test_the_cards_snippet_runs_as_written_where_labsupport_is_not_installed(tmp_path):
    """The usage snippet, copied from the card (README.md of the published folder), runs in a new venv where the course
    package is not installed (its packages: this environment's site-packages as a path entry, see venv_without_labsupport)."""
    import shutil
    import subprocess

    from labsupport.datasets import plates
    from labsupport.model import tinymodel

    python = venv_without_labsupport(tmp_path / "venv")
    absent = subprocess.run([str(python), "-c", "import labsupport"], capture_output=True, text=True, cwd=tmp_path, env=clean_env())
    assert absent.returncode != 0 and "No module named 'labsupport'" in absent.stderr, \
        f"labsupport is importable in the test venv {tmp_path / 'venv'}, so the test would prove nothing: {absent.stderr[-500:]}"
    repo = tmp_path / "InternVL2-tiny-plates"
    shutil.copytree(tinymodel.resolve_model("tiny"), repo)
    (repo / "examples").mkdir()
    plates.draw_plate("red", "circle", 2, seed=1).save(repo / modelcard.EXAMPLE_IMAGE)
    system = "You are a careful assistant."
    card = modelcard.build_card(str(repo), None, None, max_num=1, system=system)
    (repo / "README.md").write_text(str(card), encoding="utf-8")
    snippet = modelcard.python_blocks((repo / "README.md").read_text(encoding="utf-8"))[0]
    assert "pixel_values = load_image(" in snippet and "plate" in snippet and f"model.system_message = {system!r}" in snippet
    assert "labsupport" not in snippet  # a user outside the course has the model's own requirements only
    (tmp_path / "snippet.py").write_text(snippet, encoding="utf-8")
    ran = subprocess.run([str(python), "snippet.py"], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=clean_env())
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


RECORD = {"name": "digits_short", "source": "/home/someone/data/digits_short.jsonl", "sha256": "c0ffee" + "0" * 58,
          "n_train": 900, "n_heldout": 100, "held_out_by": "a fixed slice of digits_short.jsonl", "scorer": "choice",
          "tiles": 2, "system": "Answer with one letter.", "model_path": "tiny"}


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "models" / "some-model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"max_dynamic_patch": 6}))
    return folder


@pytest.fixture
def fake_plates(tmp_path, monkeypatch):
    """build_course_task replaced by a two-record task (the real one draws 720 plates), training_system by a constant."""
    root = tmp_path / "plates"
    root.mkdir()
    (root / "train.json").write_text(json.dumps([{"id": 1}, {"id": 2}, {"id": 3}]))
    (root / "heldout.json").write_text(json.dumps([{"id": 4}]))
    task = {"root": root, "image_folder": root, "train": root / "train.json", "heldout": root / "heldout.json"}
    monkeypatch.setattr(modelcard, "build_course_task", lambda out, progress=False: task)
    monkeypatch.setattr(modelcard, "training_system", lambda model_dir: "XTuner's system prompt.")
    return task


def test_data_facts_come_from_notebook_04s_record_without_machine_paths(tmp_path, model_dir, fake_plates):
    facts, said = modelcard.data_facts(RECORD, tmp_path, "tiny", model_dir)
    assert facts["source"] == "digits_short.jsonl" and "someone" not in json.dumps(facts, default=str)
    assert (facts["n_train"], facts["n_heldout"], facts["scorer"]) == (900, 100, "choice")
    assert facts["tiles"] == 2 and facts["system"] == "Answer with one letter."
    assert "digits_short.jsonl" in said and "c0ffee" in said
    assert "the card uses 04's" in said  # config.json says 6 tiles: the disagreement is told, 04's record wins


def test_data_facts_without_a_record_assume_the_plates_task_and_say_so(tmp_path, model_dir, fake_plates):
    from labsupport.datasets.learner import file_sha256

    facts, said = modelcard.data_facts(None, tmp_path, "tiny", model_dir)
    assert facts["name"] == "plates" and (facts["n_train"], facts["n_heldout"]) == (3, 1)
    assert facts["sha256"] == file_sha256(fake_plates["train"]) and facts["scorer"] == "exact"
    assert facts["tiles"] == 6 and facts["system"] == "XTuner's system prompt."
    assert "no record" in said and "plates task" in said
    stale, said = modelcard.data_facts(dict(RECORD, model_path="/models/other"), tmp_path, "tiny", model_dir)
    assert stale["name"] == "plates" and "/models/other" in said
    base, _ = modelcard.data_facts(RECORD, tmp_path, "tiny", model_dir, fine_tuned=False)
    assert base["system"] is None and base["tiles"] == 6  # the base model: its own config, no trained prompt


def test_the_card_names_its_data_scorer_tiles_and_prompt_and_the_checker_holds_them(tmp_path, model_dir, fake_plates):
    facts, _ = modelcard.data_facts(RECORD, tmp_path, "tiny", model_dir)
    evaluation = dict(RESULTS, scorer="choice")
    card = modelcard.build_card("alice/InternVL2-tiny-digits", None, evaluation, data=facts, max_num=facts["tiles"],
                                system=facts["system"])
    text = str(card)
    assert "`digits_short.jsonl` (sha256 `c0ffee000000`)" in text and "900 trained on, 100 held out" in text
    assert "with the `choice` scorer" in text and "max_num=2" in text and "model.system_message = 'Answer with one letter.'" in text
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["datasets"] == ["digits_short"] and front["model-index"][0]["results"][0]["metrics"][0]["type"] == "accuracy"
    assert modelcard.check_card(card, None, evaluation, facts) == []
    wrong = dict(facts, sha256="beef" * 16, n_heldout=99, system="Something else.")
    problems = modelcard.check_card(card, None, evaluation, wrong)
    assert len(problems) == 3 and any("sha256" in p for p in problems) and any("split sizes" in p for p in problems)


def test_an_open_answer_card_names_chrf_not_accuracy(tmp_path, model_dir, fake_plates):
    facts, _ = modelcard.data_facts(dict(RECORD, scorer="text"), tmp_path, "tiny", model_dir)
    text = str(modelcard.build_card("alice/InternVL2-tiny-captions", None, RESULTS, data=facts))
    assert "Held-out chrF" in text and "| model | chrF | questions |" in text and "type: chrf" in text


def test_read_evaluation_takes_a_scorers_headline(tmp_path):
    path = tmp_path / "before_after.json"
    path.write_text(json.dumps({"scorer": "text", "before": {"metric": "chrF", "score": 0.2, "n": 5},
                                "after": {"metric": "chrF", "score": 0.6, "n": 5}}))
    got = modelcard.read_evaluation(path)
    assert (got["before"]["accuracy"], got["after"]["accuracy"]) == (0.2, 0.6)
    assert modelcard.scorer_of(got, None) == "text" and modelcard.scorer_of(None, {"scorer": "choice"}) == "choice"


def test_data_facts_fill_what_a_record_leaves_out_from_its_split_files(tmp_path, model_dir, fake_plates):
    from labsupport.datasets.learner import file_sha256

    plates = fake_plates["train"].parent
    bare = {"train": plates / "train.json", "heldout": plates / "heldout.json", "tiles": 6, "model_path": "tiny"}
    facts, said = modelcard.data_facts(bare, tmp_path, "tiny", model_dir)
    assert (facts["name"], facts["source"], facts["n_train"], facts["n_heldout"]) == ("plates", "train.json", 3, 1)
    assert facts["sha256"] == file_sha256(bare["train"]) and facts["scorer"] == "exact" and facts["image_folder"] == plates
    assert "None" not in said
