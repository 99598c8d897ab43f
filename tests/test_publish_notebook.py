"""Notebook 07 with a (fake) token in the environment: the token is used, shown only masked, and written nowhere."""
import json
import os
import secrets
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest

from labsupport.core import credentials
from labsupport.course import runner
from labsupport.publish import hub

NOTEBOOK = runner.course_notebooks()[0].parent / "07_publish.ipynb"


@pytest.fixture(scope="module")
def tiny_model():
    tinymodel = pytest.importorskip("labsupport.model.tinymodel", reason="labsupport.model.tinymodel (the tiny model builder) is not merged yet")
    return tinymodel.resolve_model("tiny")


def plant_results_of_notebooks_04_05(art, tiny_model):
    """What notebooks 04-05 would leave: a fine-tuned model folder, an XTuner work dir, before/after accuracy,
    04's record of the data it trained on."""
    from labsupport.core.paths import finetuned_dir

    shutil.copytree(tiny_model, finetuned_dir(art, "tiny"))
    from labsupport.evaluate.conversion import PROVENANCE  # notebook 05 records the finished run it converted
    (finetuned_dir(art, "tiny") / PROVENANCE).write_text(json.dumps({"run": "04_finetune", "checkpoint": "iter_30.pth",
                                                                     "finished": True}))
    work = art / hub.TRAIN_WORK_DIR
    work.mkdir(parents=True)
    (work / "tiny_lora.py").write_text("path = '/x/internvl2-tiny'\ndata_paths = ['/x/data/plates/train.json']\nlora_r, lora_alpha, lora_dropout = 4, 8, 0.0\n"
                                       "lr = 0.0002\nmax_iters = 30\n")
    (work / hub.TRAIN_SCALARS_JSON).write_text(json.dumps([{"iter": 10, "loss": 2.75}, {"iter": 30, "loss": 1.125}]))
    (art / hub.EVAL_RESULTS_JSON).parent.mkdir(parents=True)
    (art / hub.EVAL_RESULTS_JSON).write_text(json.dumps({"before": {"accuracy": 0.125, "n": 16},
                                                         "after": {"accuracy": 0.625, "n": 16}}))
    # notebook 04's record of the data it trained on: the learner's own file, split by HELDOUT
    from labsupport.datasets import learner, plates
    own = art / "data" / "own" / "my_plates-f00df00d"
    own.mkdir(parents=True)
    plates.draw_plate("red", "circle", 2, seed=1).save(own / "q.png")
    (own / "heldout.json").write_text(json.dumps([{"id": 0, "image": "q.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "red"}]}]))
    task = {"name": "my-plates", "train": own / "train.json", "heldout": own / "heldout.json", "image_folder": own,
            "source": Path("/home/someone/my_plates.jsonl"), "sha256": "f00d" * 16, "n_train": 40, "n_heldout": 1,
            "held_out_by": "HELDOUT = my_heldout.jsonl (1 records)"}
    learner.write_training_data(art, task, scorer="exact", tiles=1, system="Answer in one word.", model_path=str(tiny_model))


@pytest.mark.notebook
@pytest.mark.skipif(hub.git_lfs_version() is None, reason="git-lfs is not installed (apt-get install git-lfs)")
def test_fake_token_is_never_exposed(tiny_model, tmp_path):
    token = "hf_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(34))
    art, out = tmp_path / "artifacts", tmp_path / "07.out.ipynb"
    plant_results_of_notebooks_04_05(art, tiny_model)
    env = {**os.environ, "HF_TOKEN": token, "HF_HOME": str(tmp_path / "hf_home"),
           "HF_ENDPOINT": "http://127.0.0.1:9",  # nothing listens there: the upload fails at once, offline
           "PYTHONPATH": str(NOTEBOOK.parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    kernel = runner.notebook_kernel(NOTEBOOK)
    kernel = kernel if kernel in runner.known_kernels() else "python3"
    proc = subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOK), str(out), "-k", kernel, "--log-output",
                           "--cwd", str(NOTEBOOK.parent), "-p", "ARTIFACTS", str(art), "-p", "MODEL_PATH", str(tiny_model)],
                          env=env, capture_output=True, text=True, timeout=300)
    logs = proc.stdout + proc.stderr
    executed = out.read_text(encoding="utf-8")

    # the card was written from the planted results, not typed in
    assert "| after fine-tuning | 62.5 % | 16 |" in executed and "| before fine-tuning | 12.5 % | 16 |" in executed
    assert "for 30 iterations; loss 2.750 → 1.125" in executed and "from the local model `internvl2-tiny`" in executed
    # ... and names the data notebook 04 recorded, its scorer, and the tiling and prompt it trained with
    assert "- my-plates" in executed and "`my_plates.jsonl` (sha256 `f00df00df00d`)" in executed
    assert "40 trained on, 1 held out" in executed and "with the `exact` scorer" in executed
    assert "max_num=1" in executed and "model.system_message = 'Answer in one word.'" in executed
    assert "someone" not in executed  # the learner's machine paths stay off the card

    # the token was found and used (masked), and the offline hub made only the real-hub checkpoint fail
    assert "hf_****" in executed and "environment variable HF_TOKEN" in executed
    results = json.loads((art / "checkpoints" / "07_publish.json").read_text())
    failed = [c["name"] for c in results["checkpoints"] if c["status"] == "fail"]
    assert failed == ["pushed to the real hub"], logs[-3000:]
    assert proc.returncode != 0 and "CheckpointsFailed" in logs

    # ... and it is nowhere: not in the notebook, the logs, nor any file written (the git remote's internals included)
    assert token not in executed and token[3:] not in executed
    assert token not in logs and token[3:] not in logs
    assert credentials.scan_for_secrets(art, [token]) == []
    from labsupport.core.paths import hub_repo_name
    assert (art / "publish" / "remote" / f"{hub_repo_name(tiny_model, 'my-plates')}.git" / "lfs" / "objects").is_dir()
