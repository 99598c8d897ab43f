"""Fuzz: the same generated records go to the validator and to XTuner 0.2.0's own InternVL dataset code.

No record may pass the validator (no error) and then be rejected by XTuner. "Rejected" means anything that
would crash training or silently train something other than the record: an exception while loading the file
or preparing the sample, a sample XTuner replaces by another (its loader returns None for an image it cannot
read), a warning (XTuner strips '<image>' from text-only data), a cut at max_length, image tokens that do not
match the image's tiles, a non-integer length for the sampler, or a sample with nothing to learn.
The validator may be stricter than XTuner; the test prints how often it was.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import random
import warnings
from pathlib import Path

import pytest

pytest.importorskip("xtuner")

from labsupport.train import runs  # noqa: E402
from labsupport.datasets import validate as V  # noqa: E402
from test_bad_inputs import GOOD_IMAGE, make_images  # noqa: E402  (the corpus's images, drawn in tmp_path)

N_RECORDS = 600
MAX_LENGTH = 400  # one tile (256 tokens) + the template with its system prompt + a short text: longer texts are cut by XTuner
SEED = 17

IMAGES = [GOOD_IMAGE, "second.jpg", "strip.png", "tiny.png", "empty.jpg", "text.jpg", "cut.png", "cut.jpg", "bomb.png",
          "huge.png", "deep16.png", "float.tif", "clear.png", "half_clear.png", "anim.gif", "rotated.jpg", "cmyk.jpg",
          "grey.png", "palette.png", "bilevel.png", "folder.jpg", "sub/nested.jpg", "../outside.jpg", "link_out.jpg",
          "nowhere.jpg", "", "photo.webp"]
TEXTS = ["What colour?", "", "  ", "<image>", "<image>\n", "<image>\nWhat colour?", "What <image> colour?",
         "<image>\n<image>\nTwo?", "red", "红色", "<IMG_CONTEXT>", "<img>x</img>", "<|im_end|>", "a\u2028b", "\ufffd",
         "long " * 60, "x" * 5, "\udcff", "<image>" * 3, "\n", "ok\u0085ok"]
VALUES = [None, 0, 1, -5, 3.5, True, "", "x", "448x448", [], [1], [448, 448], [[448, 448]], [0, 0], ["a", "b"], {},
          {"a": 1}, [[64, 48], [10, 10]], [64, 48]]


def base(rng: random.Random) -> dict:
    kind = rng.choice(["image", "image", "text", "multi"])
    rec = {"id": f"f{rng.randrange(10**6)}",
           "conversations": [{"from": "human", "value": "<image>\nWhat colour?" if kind != "text" else "Hello?"},
                             {"from": "gpt", "value": "red"}]}
    if kind != "text":
        rec["image"] = GOOD_IMAGE
    if kind == "multi":
        rec["conversations"] += [{"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "yes"}]
    return rec


def mutate(rec: dict, rng: random.Random) -> object:
    """One random change (the record may stop being a dict)."""
    convs = rec.get("conversations") if isinstance(rec, dict) else None
    turns = [t for t in convs if isinstance(t, dict)] if isinstance(convs, list) else []
    op = rng.randrange(22)
    if not isinstance(rec, dict):
        return rec
    if op == 0:
        return rng.choice([None, "record", 5, [rec], []])
    if op == 1:
        rec["image"] = rng.choice(IMAGES)
    elif op == 2:
        rec["image"] = rng.choice([[rng.choice(IMAGES)], [], [GOOD_IMAGE, "second.jpg"], None, 7, {"p": 1}])
    elif op == 3:
        rec.pop(rng.choice(["image", "conversations", "id"]), None)
    elif op == 4:
        rec["image_wh"] = rng.choice(VALUES)
    elif op == 5:
        rec["length"] = rng.choice(VALUES)
    elif op == 6 and turns:
        rng.choice(turns)["value"] = rng.choice(TEXTS)
    elif op == 7 and turns:
        rng.choice(turns)["value"] = rng.choice(VALUES)
    elif op == 8 and turns:
        rng.choice(turns)["from"] = rng.choice(["human", "gpt", "user", "assistant", "system", None, 1, ""])
    elif op == 9 and turns:
        rng.choice(turns).pop(rng.choice(["from", "value"]))
    elif op == 10 and isinstance(convs, list):
        convs.reverse()
    elif op == 11 and isinstance(convs, list):
        convs.append(rng.choice([{"from": "human", "value": "more?"}, {"from": "gpt", "value": "yes"}, "turn", None]))
    elif op == 12 and isinstance(convs, list) and convs:
        convs.pop(rng.randrange(len(convs)))
    elif op == 13:
        rec["conversations"] = rng.choice(VALUES)
    elif op == 14 and turns:
        t = rng.choice(turns)
        if isinstance(t.get("value"), str):
            t["value"] = t["value"] + rng.choice(TEXTS)
    elif op == 15 and turns:
        t = rng.choice(turns)
        if isinstance(t.get("value"), str):
            t["value"] = t["value"].replace("<image>", "")
    elif op == 16 and turns:
        t = turns[-1]
        if isinstance(t.get("value"), str):
            t["value"] = "<image>\n" + t["value"]
    elif op == 17:
        rec["id"] = rng.choice(VALUES)
    elif op == 18 and isinstance(convs, list):
        convs.insert(0, rng.choice([{"from": "gpt", "value": "Hi."}, {"from": "system", "value": "Be brief."}]))
    elif op == 19:
        rec["meta"] = rng.choice(VALUES)
    elif op == 20 and turns:
        t = rng.choice(turns)
        if isinstance(t.get("value"), str):
            t["value"] = t["value"] + " word" * rng.randrange(1, 40)
    elif op == 21:
        rec["image"] = GOOD_IMAGE
        if turns and isinstance(turns[0].get("value"), str) and "<image>" not in turns[0]["value"]:
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
    return rec


def generate(n: int, seed: int = SEED) -> list:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        rec: object = base(rng)
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            rec = mutate(rec, rng) if isinstance(rec, dict) else rec
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def xtuner_setup(tmp_path_factory):
    from labsupport.train import xtuner_presets, xtuner_render
    from labsupport.model.tinymodel import build_tiny_model

    tmp = tmp_path_factory.mktemp("fuzz")
    tiny = build_tiny_model(tmp / "internvl2-tiny")
    make_images(tmp / "images")
    s = xtuner_presets.preset("tiny-cpu", model_path=str(tiny), max_length=MAX_LENGTH, max_iters=2,
                 data=[xtuner_presets.DataSpec(str(tmp / "probe.json"), str(tmp / "images"))])
    cfg = xtuner_render.load_config(xtuner_render.write_config(s, tmp / "cfg.py"))
    dataset = runs.xtuner_dataset(cfg, tmp)
    return {"tmp": tmp, "cfg": cfg, "dataset": dataset, "images": tmp / "images"}


def xtuner_rejects(path: Path, image_folder: Path, setup: dict, monkeypatch_module) -> str | None:
    """Why XTuner's own InternVL dataset code rejects the one record in PATH, or None when it takes it as written."""
    import torch
    from xtuner.dataset import internvl_dataset as xd
    from xtuner.dataset.collate_fns import default_collate_fn
    from xtuner.registry import BUILDER

    logged: list[str] = []
    monkeypatch_module.setattr(xd, "print_log", lambda msg, *a, **k: logged.append(str(msg)))
    ds_cfg = copy.deepcopy(setup["cfg"].train_dataloader.dataset)
    ds_cfg.update(data_paths=[str(path)], image_folders=[str(image_folder)], repeat_times=[1])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = BUILDER.build(ds_cfg)
            if len(ds) != 1:
                return f"{len(ds)} samples"
            if not isinstance(ds.modality_length[0], int) or isinstance(ds.modality_length[0], bool):
                return f"length {ds.modality_length[0]!r} is not an integer"
            with contextlib.redirect_stdout(io.StringIO()):  # XTuner prints "Error: ..." for a bad image
                sample = ds.prepare_data(0)
            if sample is None:
                return "the loader returned None (XTuner would train on another sample instead)"
            default_collate_fn([sample])
        texty = [w for w in caught if "plain text mode" in str(w.message)]
        if texty:
            return "warning: " + str(texty[0].message)[:80]
    except Exception as exc:  # any exception is a rejection: that is what the test looks for
        return f"{type(exc).__name__}: {str(exc)[:100]}"
    cuts = [m for m in logged if "cut to" in m]
    if cuts:
        return cuts[0][:100]
    ids = torch.tensor(sample["input_ids"])
    context = int((ids == ds.tokenizer.convert_tokens_to_ids(V.IMG_CONTEXT)).sum())
    has_image = ds.data[0].get("image") is not None
    want = sample["pixel_values"].shape[0] * ds.patch_token if has_image else 0
    if context != want:
        return f"{context} image tokens for {want} expected (the model's forward would fail or ignore the image)"
    if not any(label >= 0 for label in sample["labels"]):
        return "no answer token to learn from"
    return None


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_no_record_passes_the_validator_and_fails_in_xtuner(xtuner_setup, monkeypatch_module):
    setup = xtuner_setup
    length = runs.xtuner_length(setup["dataset"])
    records = generate(N_RECORDS)
    folder = setup["tmp"] / "records"
    folder.mkdir()
    disagreements, stricter, passed = [], 0, 0
    for i, rec in enumerate(records):
        path = folder / f"r{i:04d}.json"
        path.write_text(json.dumps([rec]), encoding="utf-8")
        report = V.validate(path, setup["images"], length_fn=length, max_length=MAX_LENGTH, progress=False)
        why = xtuner_rejects(path, setup["images"], setup, monkeypatch_module)
        if report.ok:
            passed += 1
            if why:
                disagreements.append(f"record {i}: {json.dumps(rec)[:200]}\n    validator: ok; XTuner: {why}")
        elif why is None:
            stricter += 1
    print(f"\n{N_RECORDS} generated records: {passed} passed the validator, {N_RECORDS - passed} refused "
          f"({stricter} of them XTuner would have taken: the validator is stricter there)")
    assert passed >= N_RECORDS // 5 and N_RECORDS - passed >= N_RECORDS // 5, "the generator must make both kinds"
    assert not disagreements, "\n".join(disagreements[:15])


def test_the_generator_is_reproducible():
    assert json.dumps(generate(50)) == json.dumps(generate(50))


@pytest.mark.parametrize("change, rejected", [
    (lambda r: None, False),
    (lambda r: r["conversations"][1].update(value=None), True),
    (lambda r: r.update(image="nowhere.jpg"), True),
    (lambda r: (r["conversations"][0].update(value="What colour?"), r["conversations"][1].update(value="<image> red")), True),
    (lambda r: r.update(image_wh="448x448"), True),
    (lambda r: r["conversations"][1].update(value="long " * 200), True),
])
def test_the_xtuner_oracle_can_say_no(xtuner_setup, monkeypatch_module, tmp_path, change, rejected):
    rec = {"id": "a", "image": GOOD_IMAGE, "conversations": [{"from": "human", "value": "<image>\nWhat colour?"},
                                                             {"from": "gpt", "value": "red"}]}
    change(rec)
    path = tmp_path / "one.json"
    path.write_text(json.dumps([rec]))
    assert (xtuner_rejects(path, xtuner_setup["images"], xtuner_setup, monkeypatch_module) is not None) == rejected
