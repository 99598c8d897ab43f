"""labsupport.datasets.sources: the real datasets' download commands, the gated-repo error, and the Oogiri-GO converter."""
import json

import pytest

from labsupport.datasets import formats, sources, validate


def test_the_gated_demo_raises_huggingface_hubs_own_gated_error():
    from huggingface_hub.errors import GatedRepoError

    exc = sources.gated_error_demo()
    assert isinstance(exc, GatedRepoError) and "lyan62/FoodieQA" in str(exc)
    assert "accept its terms" in sources.explain_hub_error(exc, "lyan62/FoodieQA")


def test_download_commands_name_each_route():
    food = "\n".join(sources.download_commands("foodieqa"))
    clot = "\n".join(sources.download_commands("clot"))
    assert "hf auth login" in food and "hf download lyan62/FoodieQA --repo-type dataset" in food
    assert "hf auth login" not in clot and "modelscope download --dataset shan233/CLoT-Oogiri-GO" in clot


def test_oogiri_converter_on_the_sample_lines():
    path = sources.sample_dir("clot") / "cn.jsonl"
    recs = sources.from_oogiri(path)                       # I2T + IT2T, duplicates dropped
    assert len(recs) == 3
    assert recs[0]["conversations"][0]["value"] == "<image>\n" + sources.CLOT_PROMPT
    assert recs[1]["conversations"][0]["value"].startswith("<image>\n这个三角形")
    assert len(sources.from_oogiri(path, min_star=5)) == 2
    assert len(sources.from_oogiri(path, dedupe=False)) == 4
    text_only = sources.from_oogiri(path, types=("T2T",))
    assert len(text_only) == 1 and "image" not in text_only[0]


def test_converted_samples_validate(tmp_path):
    clot = sources.sample_dir("clot")
    out = formats.save_records(tmp_path / "oogiri.json", sources.from_oogiri(clot / "cn.jsonl"))
    assert validate.validate(out, clot, progress=False).ok
    food = sources.sample_dir("foodieqa")
    out = formats.save_records(tmp_path / "food.json", formats.from_foodieqa(food / "sivqa_tidy.json"))
    assert validate.validate(out, food, progress=False).ok
    assert validate.validate(clot / "ex_cn.json", clot, progress=False).ok


def test_oogiri_converter_names_the_missing_key(tmp_path):
    bad = tmp_path / "cn.jsonl"
    bad.write_text(json.dumps({"type": "I2T", "image": "a.jpg", "response": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"record 1: no \['text'\]"):
        sources.from_oogiri(bad)
