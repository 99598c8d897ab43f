"""The LLaVA track (notebook 09): the tiny CLIP tower, plates in LLaVA format, and the edits to XTuner's LLaVA configs."""
from pathlib import Path

import pytest

from labsupport import datasets as D, llava, xtuner_configs as XC


def _official(name: str, tmp_path: Path) -> Path:
    from xtuner.configs import cfgs_name_path

    src = tmp_path / f"{name}.py"
    src.write_text(Path(cfgs_name_path[name]).read_text())
    return src


def test_tiny_clip_is_an_official_clip_folder(tmp_path):
    from transformers import CLIPImageProcessor, CLIPVisionModel

    out = llava.build_tiny_clip(tmp_path / "clip")
    model = CLIPVisionModel.from_pretrained(out)
    proc = CLIPImageProcessor.from_pretrained(out)
    assert model.config.image_size == proc.crop_size["height"] == llava.TINY_CLIP["image_size"]
    again = llava.build_tiny_clip(tmp_path / "clip2")
    assert (out / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()  # deterministic


def test_plates_in_llava_format_with_captions():
    recs = D.plates_records(8, "train", kinds=("colour",))
    qa, cap = llava.to_llava(recs), llava.to_llava(recs, captions=True)
    assert set(qa[0]) == {"id", "image", "conversations"} and qa[0]["conversations"][0]["value"].startswith("<image>")
    for rec, c in zip(recs, cap):
        m = rec["meta"]
        text = c["conversations"][1]["value"]
        assert c["conversations"][0]["value"] == "<image>"
        assert (m["colour"] in text) if m["lang"] == "en" else (D.COLOURS[m["colour"]] in text)


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
