"""The LLaVA track (notebook 09): the tiny CLIP tower, plates in LLaVA format, and the edits to XTuner's LLaVA configs."""
import json
from pathlib import Path

import pytest
import torch

from labsupport.datasets import plates
from labsupport.model import towers, vit_pretrain
from labsupport.sidetracks import llava
from labsupport.train import xtuner_configs as XC


def _official(name: str, tmp_path: Path) -> Path:
    from xtuner.configs import cfgs_name_path

    src = tmp_path / f"{name}.py"
    src.write_text(Path(cfgs_name_path[name]).read_text())
    return src


def test_tiny_clip_is_an_official_clip_folder(tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionModel

    out = towers.build_tiny_clip(tmp_path / "clip")
    model = CLIPVisionModel.from_pretrained(out)
    proc = CLIPImageProcessor.from_pretrained(out)
    assert model.config.image_size == proc.crop_size["height"] == towers.TINY_CLIP["image_size"]
    again = towers.build_tiny_clip(tmp_path / "clip2")
    assert (out / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()  # deterministic


def test_plates_in_llava_format_with_captions():
    recs = plates.plates_records(8, "train", kinds=("colour",))
    qa, cap = llava.to_llava(recs), llava.to_llava(recs, captions=True)
    assert set(qa[0]) == {"id", "image", "conversations"} and qa[0]["conversations"][0]["value"].startswith("<image>")
    for rec, c in zip(recs, cap):
        m = rec["meta"]
        text = c["conversations"][1]["value"]
        assert c["conversations"][0]["value"] == "<image>"
        assert (m["colour"] in text) if m["lang"] == "en" else (plates.COLOURS[m["colour"]] in text)


@pytest.mark.parametrize("stage,cpu", [("pretrain", True), ("finetune", True), ("finetune", False)])
def test_llava_config_edits_are_explained_and_load(tmp_path, stage, cpu):
    name = llava.PRETRAIN_CONFIG if stage == "pretrain" else llava.FINETUNE_CONFIG
    src = _official(name, tmp_path)
    edits = llava.config_edits(stage, llm="/m/llm", clip="/m/clip", data_json="/d/qa.json", image_folder="/d",
                               eval_image="/d/a.jpg", eval_question="What colour?", lr=5e-3, cpu=cpu,
                               pretrained_pth="/w/iter_75.pth")
    dst = XC.edit_config(src, tmp_path / "edited.py", edits)
    assert XC.unexplained(src, dst, edits) == []
    cfg = XC.load(dst)
    assert cfg.llm_name_or_path == "/m/llm" and cfg.visual_encoder_name_or_path == "/m/clip"
    assert cfg.data_path == "/d/qa.json" and cfg.image_folder == "/d" and cfg.evaluation_images == "/d/a.jpg"
    assert cfg.model.freeze_llm and cfg.model.freeze_visual_encoder  # XTuner's own choice, kept
    assert ("quantization_config" in cfg.model.llm) != cpu
    if stage == "finetune":
        assert cfg.pretrained_pth == "/w/iter_75.pth" and cfg.model.llm_lora.r == 64
    with pytest.raises(ValueError, match="stage"):
        llava.config_edits("middle", "/l", "/c", "/d", "/i", "/e", "q")


@pytest.mark.parametrize("checkpointing,group_by_length", [(False, False), (True, True)])
def test_the_cpu_speed_and_sampler_edits_apply_and_load(tmp_path, checkpointing, group_by_length):
    src = _official(llava.FINETUNE_CONFIG, tmp_path)
    edits = llava.config_edits("finetune", llm="/m/llm", clip="/m/clip", data_json="/d/qa.json", image_folder="/d",
                               eval_image="/d/a.jpg", eval_question="q", pretrained_pth="/w/p.pth", vision_lora=False,
                               checkpointing=checkpointing, group_by_length=group_by_length)
    dst = XC.edit_config(src, tmp_path / "edited.py", edits)
    assert XC.unexplained(src, dst, edits) == []
    cfg = XC.load(dst)
    assert cfg.model.get("use_activation_checkpointing", True) == checkpointing
    assert ("LengthGroupedSampler" in cfg.train_dataloader.sampler.type.__name__) == group_by_length
    assert "visual_encoder_lora" not in cfg.model


# --- the shipped CLIP tower -------------------------------------------------------------------------------

def test_the_clip_record_describes_the_shipped_weights():
    tower = towers.TOWERS["clip"]
    record = json.loads(tower.record.read_text())
    assert record["sha256"] == towers.weights_digest(tower.weights)
    assert record["tower"] == "clip" and record["recipe"] == tower.recipe  # `--tower clip` reproduces it
    assert record["log"][-1]["step"] == tower.recipe["steps"]
    assert min(record["log"][-1]["val_accuracy"].values()) >= 0.9
    assert tower.weights.stat().st_size < 1_000_000


def test_build_tiny_clip_loads_the_shipped_tower(tmp_path):
    from safetensors.torch import load_file

    shipped = towers.pretrained_weights(towers.TOWERS["clip"].weights)
    warm = load_file(str(towers.build_tiny_clip(tmp_path / "warm") / "model.safetensors"))
    cold = load_file(str(towers.build_tiny_clip(tmp_path / "cold", pretrained=False) / "model.safetensors"))
    assert set(shipped) <= set(warm)
    for name, value in shipped.items():
        assert torch.equal(warm[name].to(value.dtype), value), name
    name = "vision_model.embeddings.patch_embedding.weight"
    assert not torch.equal(warm[name].to(torch.bfloat16), cold[name].to(torch.bfloat16))


def _clip_features(folder, images):
    from transformers import CLIPVisionModel

    tower = towers.TOWERS["clip"]
    model = CLIPVisionModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return torch.cat([vit_pretrain.mean_patch_feature(model, vit_pretrain.normalise(images[i:i + 64], tower.mean, tower.std),
                                                          tower.layer) for i in range(0, len(images), 64)])


def test_the_shipped_clip_sees_shape_and_count_where_a_random_one_does_not(tmp_path):
    # plates the tower never saw (its training used indices below 12,512), at the hidden layer XTuner's LLaVA reads
    tower = towers.TOWERS["clip"]
    images, labels = vit_pretrain.pretrain_set(400, start=1_000_000, size=tower.size, fill=tower.fill)
    warm = vit_pretrain.probe_accuracy(_clip_features(towers.build_tiny_clip(tmp_path / "w"), images), labels, n_fit=300)
    cold = vit_pretrain.probe_accuracy(
        _clip_features(towers.build_tiny_clip(tmp_path / "c", pretrained=False), images), labels, n_fit=300)
    assert warm["shape"] >= 0.8 and warm["count"] >= 0.85 and warm["colour"] >= 0.9, warm
    assert cold["shape"] < warm["shape"] - 0.2 and cold["count"] < warm["count"] - 0.2, (cold, warm)


# --- after training: the converted folders, XTuner's chat CLI, the comparison ------------------------------

_LORA_KEY = "llm.base_model.model.model.layers.0.attention.wo.lora_B.default.weight"


@pytest.fixture(scope="module")
def converted(artifacts, tmp_path_factory):
    """A fine-tune checkpoint as XTuner saves it (its LLaVAModel's trainable weights, one LoRA tensor set to a known
    value), through `xtuner convert pth_to_hf`."""
    from xtuner.registry import BUILDER

    from labsupport.model import chatllm
    from labsupport.sidetracks import selfcog

    tmp = tmp_path_factory.mktemp("llava")
    llm, clip = chatllm.build_chat_llm(artifacts), towers.build_tiny_clip(tmp / "clip")
    stage1 = tmp / "iter_0.pth"  # a stage-1 checkpoint: the projector only
    torch.save({"state_dict": {"projector.model.0.weight": torch.full((128, 64), 0.02), "projector.model.0.bias": torch.zeros(128),
                               "projector.model.2.weight": torch.eye(128), "projector.model.2.bias": torch.zeros(128)}}, stage1)
    image = tmp / "plate.jpg"
    plates.draw_plate("red", "star", 3, seed=1).save(image)
    edits = llava.config_edits("finetune", llm=str(llm), clip=str(clip), data_json=str(tmp / "none.json"), image_folder=str(tmp),
                               eval_image=str(image), eval_question="q", pretrained_pth=str(stage1), llm_lora_r=8,
                               llm_lora_alpha=16, vision_lora=False)
    cfg = XC.edit_config(_official(llava.FINETUNE_CONFIG, tmp), tmp / "finetune.py", edits)
    state = BUILDER.build(XC.load(cfg).model).state_dict()  # LLaVAModel.state_dict(): what XTuner's checkpoint holds
    state[_LORA_KEY] = torch.full_like(state[_LORA_KEY], 0.01)
    pth = tmp / "iter_1.pth"
    torch.save({"state_dict": state}, pth)
    return {"llm": llm, "clip": clip, "pth": pth, "state": state, "image": image, "hf": selfcog.pth_to_hf(cfg, pth, tmp / "hf")}


def test_converted_folders_load_with_transformers_and_chat(converted):
    from transformers import AutoModel

    hf = converted["hf"]
    assert json.loads((hf / "llm_adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    projector = AutoModel.from_pretrained(hf / "projector", trust_remote_code=True)  # plain transformers, its own code
    assert torch.equal(projector.state_dict()["model.0.weight"], converted["state"]["projector.model.0.weight"])
    chat = llava.LLaVAChat(converted["llm"], converted["clip"], hf)
    lora = dict(chat.llm.named_parameters())[_LORA_KEY.removeprefix("llm.")]
    # the adapter holds the checkpoint's LoRA weights (pth_to_hf saves them in float16: equal to its precision)
    assert torch.allclose(lora.float(), converted["state"][_LORA_KEY].float(), rtol=1e-3, atol=0)  # the adapter holds the checkpoint's LoRA weights
    reply = chat.ask(converted["image"], plates.QUESTIONS[("colour", "en")])
    assert isinstance(reply, str)
    with pytest.raises(RuntimeError, match="no projector"):
        llava.LLaVAChat(converted["llm"], converted["clip"], None).ask(converted["image"], "q")


def test_evaluate_scores_every_record_and_restores_the_threads(converted, tmp_path):
    records = plates.plates_records(3, "heldout")
    (tmp_path / "images").mkdir()
    for rec in records:
        m = rec["meta"]
        plates.draw_plate(m["colour"], m["shape"], m["count"], tuple(rec["image_wh"]), seed=m["draw_seed"]).save(tmp_path / rec["image"])
    threads = torch.get_num_threads()
    result = llava.evaluate(llava.LLaVAChat(converted["llm"], converted["clip"], converted["hf"]), records, tmp_path)
    assert torch.get_num_threads() == threads and result["n"] == 3
    assert result["accuracy"] == sum(plates.answer_matches(r["reply"], rec["meta"]) for r, rec in zip(result["rows"], records)) / 3


def test_xtuner_chat_cli_answers_about_the_image(converted):
    replies = llava.xtuner_chat(converted["llm"], converted["clip"], converted["hf"], converted["image"],
                                ["What colour?", "How many?"], max_new_tokens=4)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    cmd = llava.chat_command("llm", "clip", "hf", "a.jpg")
    assert cmd.startswith("xtuner chat llm --visual-encoder clip --llava hf") and "--image a.jpg" in cmd


def test_trained_parts_and_a_comparison_without_notebook_04(converted, tmp_path):
    parts = llava.trained_parts(converted["pth"])
    assert parts["projector"] == 64 * 128 + 128 * 128 + 256 and set(parts) == {"projector", "llm"}
    assert parts["llm"] == sum(v.numel() for k, v in converted["state"].items() if k.startswith("llm."))
    assert llava.checkpoint_mode(converted["pth"]) == "LoRA"
    projector_only = tmp_path / "iter_2.pth"
    torch.save({"state_dict": {k: v for k, v in converted["state"].items() if k.startswith("projector.")}}, projector_only)
    assert llava.checkpoint_mode(projector_only) == "projector only"
    rows = llava.comparison(tmp_path / "empty-artifacts", {"accuracy": 0.9}, train_seconds=25.04, iters=2,
                            checkpoint=converted["pth"])
    assert rows[0]["accuracy"] == "90%" and rows[0]["iterations"] == 2 and rows[0]["training s"] == 25.0
    assert rows[1]["accuracy"] == "not run here" and "run notebooks 04 and 05" in rows[1]["note"]


def test_accuracy_by_kind():
    rows = [{"kind": "colour", "correct": True}, {"kind": "colour", "correct": False}, {"kind": "count", "correct": True}]
    assert llava.by_kind(rows) == {"colour": 0.5, "count": 1.0}


def test_vit_pretrain_retrains_the_clip_tower_into_a_folder(tmp_path):
    vit_pretrain.main(["--tower", "clip", "--device", "cpu", "--threads", "1", "--processes", "1", "--steps", "2",
                       "--images", "16", "--batch", "4", "--out", str(tmp_path)])
    tower = towers.TOWERS["clip"]
    record = json.loads((tmp_path / tower.record.name).read_text())
    assert record["tower"] == "clip" and record["recipe"]["steps"] == 2 and record["log"][-1]["step"] == 2
    weights = towers.pretrained_weights(tmp_path / tower.weights.name)
    assert set(weights) == set(towers.pretrained_weights(tower.weights))  # the shipped file's names and shapes
    with pytest.raises(FileNotFoundError, match="--tower clip"):
        towers.pretrained_weights(tmp_path / "gone" / tower.weights.name)


def test_notebook_09_runs_the_seeds_xtuner_commands_in_the_seeds_order(repo):
    import nbformat

    nb = nbformat.read(repo / "notebooks" / "09_llava_xtuner.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    # seed 003: list-cfg, copy-cfg, xtuner train, pth_to_hf (pretrain) + xtuner chat, pth_to_hf (fine-tune) + xtuner chat,
    # each the tool's own command in a cell (`!xtuner ...`), not a helper that runs it
    steps = ["!xtuner list-cfg", "!xtuner copy-cfg", "xtuner train {PRETRAIN_CFG}", "xtuner train {FINETUNE_CFG}",
             "!xtuner convert pth_to_hf {PRETRAIN_CFG}", "!xtuner chat {LLM} --visual-encoder",
             "!xtuner convert pth_to_hf {FINETUNE_CFG}", "!xtuner chat {LLM} --visual-encoder"]
    at = 0
    for step in steps:
        found = code.find(step, at)
        assert found >= 0, f"{step} missing after position {at}"
        at = found + 1
