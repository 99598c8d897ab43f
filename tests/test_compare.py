"""labsupport.evaluate.compare: finding notebook 04's run, complete folders, the tensor-change table, the by-hand merge, the logits check."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from labsupport.evaluate import compare as C, conversion
from labsupport.train import runs


@pytest.fixture(scope="module")
def tiny(artifacts) -> Path:
    from labsupport.model.tinymodel import resolve_model

    return resolve_model("tiny", artifacts)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*"))
    return dst


# ---- the folder check ------------------------------------------------------------------------------

def test_the_tiny_model_folder_is_complete(tiny):
    assert conversion.check_model_folder(tiny) == []
    assert {"modeling_internvl_chat.py", "configuration_internvl_chat.py", "modeling_intern_vit.py"} <= set(conversion.remote_code_files(tiny))


def test_missing_modeling_file_is_named_with_the_fix(tiny, tmp_path):
    folder = _copy(tiny, tmp_path / "m")
    (folder / "modeling_intern_vit.py").unlink()  # imported by modeling_internvl_chat.py, not named in auto_map
    with pytest.raises(conversion.IncompleteModelFolder) as err:
        conversion.require_complete(folder, base=tiny)
    msg = str(err.value)
    assert "modeling_intern_vit.py" in msg and f"copy modeling_intern_vit.py from the base model folder {tiny}" in msg
    assert len(conversion.check_model_folder(folder)) == 1


@pytest.mark.parametrize("remove, named, fix", [
    ("tokenizer_config.json", "tokenizer_config.json", "save_pretrained"),
    ("tokenizer.json", "tokenizer.json", "save_pretrained"),
    ("generation_config.json", "generation_config.json", "copy it from"),
    ("model.safetensors", "no weights", "convert"),
])
def test_missing_tokenizer_or_other_file_is_named_with_the_fix(tiny, tmp_path, remove, named, fix):
    folder = _copy(tiny, tmp_path / "m")
    (folder / remove).unlink()
    problems = conversion.check_model_folder(folder)
    assert len(problems) == 1 and named in problems[0] and fix in problems[0], problems


def test_a_tokenizer_without_chat_template_is_reported(tiny, tmp_path):
    folder = _copy(tiny, tmp_path / "m")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert any("chat template" in p for p in conversion.check_model_folder(folder))


def test_fill_from_base_copies_only_what_is_missing(tiny, tmp_path):
    folder = _copy(tiny, tmp_path / "m")
    (folder / "conversation.py").unlink()
    (folder / "generation_config.json").unlink()
    (folder / "modeling_internvl_chat.py").write_text("# edited\n")
    assert sorted(conversion.fill_from_base(folder, tiny)) == ["conversation.py", "generation_config.json"]
    assert (folder / "modeling_internvl_chat.py").read_text() == "# edited\n"  # present files are left alone
    assert conversion.check_model_folder(folder) == []


def test_remote_code_files_follow_relative_imports(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {"AutoConfig": "cfg_a.A", "AutoModel": "mod_b.B"}}))
    (tmp_path / "cfg_a.py").write_text("import os\n")
    (tmp_path / "mod_b.py").write_text("from .helper_c import x\nfrom .cfg_a import A\n")
    (tmp_path / "helper_c.py").write_text("from .deep_d import y\n")
    assert conversion.remote_code_files(tmp_path) == ["cfg_a.py", "mod_b.py", "helper_c.py", "deep_d.py"]
    assert [p for p in conversion.check_model_folder(tmp_path) if "deep_d.py" in p]


# ---- finding notebook 04's run -------------------------------------------------------------------

def test_no_work_dir_tells_the_learner_to_run_notebook_04(tmp_path):
    with pytest.raises(conversion.TrainingRunMissing, match="run notebooks/04_finetune_xtuner.ipynb first"):
        conversion.find_training_run(tmp_path)
    (tmp_path / conversion.TRAIN_WORK_DIR).mkdir(parents=True)
    with pytest.raises(conversion.TrainingRunMissing, match="no checkpoint"):
        conversion.find_training_run(tmp_path)
    (tmp_path / "mine").mkdir()
    with pytest.raises(conversion.TrainingRunMissing, match=f"{tmp_path / 'mine'} holds no checkpoint"):
        conversion.find_training_run(tmp_path, "mine")  # a relative WORK_DIR lives under ARTIFACTS
    shutil.rmtree(tmp_path / conversion.TRAIN_WORK_DIR)
    other = tmp_path / "xtuner" / "work_dirs" / "InternVL2-2B-lora"
    other.mkdir(parents=True)
    torch.save({"meta": {}}, other / "iter_5.pth")
    (other / runs.FINISHED).write_text('{"checkpoint": "iter_5.pth"}')
    with pytest.raises(conversion.TrainingRunMissing, match="does not exist.*set WORK_DIR to one of the finished runs found: .*InternVL2-2B-lora"):
        conversion.find_training_run(tmp_path)


# ---- the tensor-change table ---------------------------------------------------------------------

@pytest.mark.parametrize("name, ndim, expected", [
    ("language_model.model.layers.0.self_attn.qkv_proj.weight", 2, ("llm", "linear")),
    ("language_model.model.layers.0.input_layernorm.weight", 1, ("llm", "norm")),
    ("language_model.model.embed_tokens.weight", 2, ("llm", "embedding")),
    ("language_model.lm_head.weight", 2, ("llm", "lm_head")),
    ("mlp1.0.weight", 1, ("projector", "norm")),
    ("mlp1.1.bias", 1, ("projector", "bias")),
    ("vision_model.embeddings.patch_embedding.weight", 4, ("vision", "embedding")),
    ("vision_model.encoder.layers.0.ls1", 1, ("vision", "scale")),
])
def test_tensor_group(name, ndim, expected):
    assert C.tensor_group(name, ndim) == expected


def test_weight_changes_ignore_rounding_and_measure_the_change():
    base = {"language_model.a.weight": torch.tensor([[1.0, 2.0]]),
            "language_model.b.weight": torch.tensor([[1.0 + 2 ** -12, 3.0]]),  # rounds to 1.0 in bfloat16
            "mlp1.1.bias": torch.zeros(2)}
    merged = {"language_model.a.weight": torch.tensor([[1.0, 2.5]], dtype=torch.bfloat16),
              "language_model.b.weight": torch.tensor([[1.0, 3.0]], dtype=torch.bfloat16),
              "mlp1.1.bias": torch.tensor([0.0, 0.5], dtype=torch.bfloat16)}
    rows = {r["name"]: r for r in C.weight_changes(base, merged)}
    assert rows["language_model.a.weight"]["changed"] and rows["language_model.a.weight"]["max_abs"] == 0.5
    assert rows["language_model.a.weight"]["rel"] == pytest.approx(0.5 / (1 + 2.5 ** 2) ** 0.5)
    assert not rows["language_model.b.weight"]["changed"]
    assert rows["mlp1.1.bias"]["rel"] == pytest.approx(1.0)  # from zero: relative change 1, not infinity
    summary = C.change_summary(list(rows.values()))
    assert summary.loc[("llm", "linear"), "tensors"] == 2 and summary.loc[("llm", "linear"), "changed"] == 1


def test_unexpected_changes_depend_on_the_mode():
    rows = [{"name": "language_model.x.weight", "part": "llm", "kind": "linear", "changed": True},
            {"name": "language_model.norm.weight", "part": "llm", "kind": "norm", "changed": True},
            {"name": "vision_model.y.weight", "part": "vision", "kind": "linear", "changed": True},
            {"name": "mlp1.1.weight", "part": "projector", "kind": "linear", "changed": True}]
    assert C.unexpected_changes(rows, "lora") == ["language_model.norm.weight", "vision_model.y.weight"]
    assert C.unexpected_changes(rows, "lora", vit_trained=True) == ["language_model.norm.weight"]
    assert C.unexpected_changes(rows, "full") == ["vision_model.y.weight"]
    assert C.unexpected_changes(rows, "full", vit_trained=True) == []


# ---- the by-hand merge -------------------------------------------------------------------------

class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.language_model = torch.nn.Sequential(torch.nn.Linear(6, 5, bias=False))
        self.mlp1 = torch.nn.Linear(4, 6)


def test_merge_by_hand_reproduces_the_lora_forward():
    toy, r, scale = _Toy(), 2, 2.0
    a, b = torch.randn(r, 6), torch.randn(5, r)
    state = {"model.language_model.base_model.model.0.lora_A.default.weight": a,
             "model.language_model.base_model.model.0.lora_B.default.weight": b,
             "model.mlp1.bias": torch.arange(6.0)}
    x = torch.randn(3, 6)
    with torch.no_grad():
        lora_out = toy.language_model(x) + scale * (x @ a.T) @ b.T  # LoRA's definition: h = W x + s * B (A x)
    counts = C.merge_by_hand(toy, state, scale)
    assert counts == {"lora_pairs": 1, "copied": 1}
    with torch.no_grad():
        assert torch.allclose(toy.language_model(x), lora_out, atol=1e-5)
    assert torch.equal(toy.mlp1.bias.detach(), torch.arange(6.0))


def test_merge_by_hand_rejects_unknown_tensors_and_missing_scale():
    with pytest.raises(KeyError, match="no counterpart"):
        C.merge_by_hand(_Toy(), {"model.language_model.nothing.weight": torch.zeros(1)}, 1.0)
    with pytest.raises(ValueError, match="lora_alpha / r"):
        C.merge_by_hand(_Toy(), {"model.language_model.base_model.model.0.lora_A.weight": torch.zeros(2, 6),
                                 "model.language_model.base_model.model.0.lora_B.weight": torch.zeros(5, 2)}, None)


def test_compare_logits_tolerance_scales_with_the_adapter_effect():
    base = torch.zeros(1, 3, 4)
    ref = base.clone()
    ref[0, 0, 0] = 2.0                           # training moved one logit by 2
    close, far = ref.clone(), base.clone()       # far = the adapter was never merged
    close[0, 1, 1] = 0.01
    report = C.compare_logits(close, ref, base, atol=1e-3, rtol=0.02)
    assert report.passed and report.tolerance == pytest.approx(0.041) and report.adapter_effect == 2.0
    assert C.assert_same_logits(report) is report
    bad = C.compare_logits(far, ref, base)
    assert not bad.passed and bad.max_diff == 2.0
    with pytest.raises(C.MergeMismatch, match="not merged"):
        C.assert_same_logits(bad)


# ---- before / after ------------------------------------------------------------------------------

def _result(acc, colour, shape):
    return {"accuracy": acc, "n": 4, "per_kind": {"colour": colour, "shape": shape},
            "per_class": {"colour/red": colour, "shape/star": shape}, "rows": []}


def test_before_after_and_accuracy_table():
    out = C.before_after(_result(0.25, 0.5, 0.0), _result(0.75, 1.0, 0.5), settings={"mode": "lora"}, max_iters=300)
    assert out["gain"] == 0.5 and out["gain_per_kind"] == {"colour": 0.5, "shape": 0.5}
    assert out["training"] == {"mode": "lora"} and out["max_iters"] == 300 and "rows" not in out["after"]
    table = C.accuracy_table(_result(0.25, 0.5, 0.0), _result(0.75, 1.0, 0.5))
    assert table.loc[("overall", "all"), "gain"] == 0.5 and table.loc[("class", "shape/star"), "before"] == 0.0


def test_constant_answer_baseline_is_the_majority_share_per_kind():
    recs = [{"meta": {"kind": k, "value": v, "answer": v}} for k, v in
            [("colour", "red"), ("colour", "red"), ("colour", "blue"), ("count", "1"), ("count", "2"), ("count", "3")]]
    assert C.constant_answer_baseline(recs) == round((2 + 1) / 6, 4)


def test_pick_examples_spreads_over_kinds():
    recs = [{"meta": {"kind": k}} for k in "aaabbc"]
    assert C.pick_examples(recs, 4) == [0, 3, 5, 1]


def test_gallery_shows_both_replies(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "x.jpg")
    recs = [{"image": "x.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}],
             "meta": {"answer": "red"}}]
    page = C.gallery_html(recs, tmp_path, [{"reply": "blue<x>", "correct": False}], [{"reply": "red", "correct": True}], [0])
    assert "What colour?" in page and "blue&lt;x&gt;" in page and "✅ &#x27;red&#x27;" in page and "data:image/jpeg" in page


# ---- end to end: XTuner's converter on a hand-made checkpoint, then every check ---------------------

def _fake_run(tiny: Path, work_dir: Path, mode: str) -> "conversion.TrainingRun":
    """A work dir as XTuner leaves it (config + iter_1.pth) whose checkpoint holds hand-made trained tensors (qlora: a GPU config)."""
    from labsupport.train import xtuner_presets, xtuner_render

    xtuner_render.write_config(xtuner_presets.preset("tiny-cpu", model_path=str(tiny), mode=mode, freeze_vit=True, freeze_llm=mode != "full",
                              lora_r=4, lora_alpha=8, data=[xtuner_presets.DataSpec(str(work_dir / "task" / "train.json"), "unused")],
                              device="cuda" if mode == "qlora" else "cpu"), work_dir / "run.py")
    model = C.load_model(tiny)
    gen = torch.Generator().manual_seed(1)
    noise = lambda t, std: t.detach() + torch.randn(t.shape, generator=gen) * std  # noqa: E731
    state = {f"model.mlp1.{k}": noise(v, 0.05) for k, v in model.mlp1.state_dict().items()}  # the projector trains
    for name, mod in model.language_model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lm_head" not in name:
            if mode in ("lora", "qlora"):  # the key names XTuner's peft-wrapped LLM saves
                prefix = f"model.language_model.base_model.model.{name}"
                state[f"{prefix}.lora_A.default.weight"] = torch.randn(4, mod.in_features, generator=gen) * 0.1
                state[f"{prefix}.lora_B.default.weight"] = torch.randn(mod.out_features, 4, generator=gen) * 0.1
            else:
                state[f"model.language_model.{name}.weight"] = noise(mod.weight, 0.01)
    torch.save({"meta": {}, "state_dict": state}, work_dir / "iter_1.pth")
    runs.mark_finished(work_dir, work_dir / "iter_1.pth")  # as launch() does after the final checkpoint
    return conversion.find_training_run(work_dir.parent, work_dir=work_dir)


@pytest.fixture(scope="module")
def lora_run(tiny, tmp_path_factory):
    run = _fake_run(tiny, tmp_path_factory.mktemp("work"), "lora")
    out = conversion.convert(run, run.work_dir.parent / "converted")
    return run, out


def test_conversion_gives_a_complete_loadable_folder(lora_run):
    from transformers import AutoModel, AutoTokenizer

    run, out = lora_run
    assert run.mode == "lora" and not run.vit_trained and run.max_num == 1
    assert run.heldout == run.work_dir / "task" / "heldout.json"
    assert C.training_summary(run)["lora_r"] == 4 and C.training_summary(run)["checkpoint"].endswith("iter_1.pth")
    assert conversion.check_model_folder(out) == []
    model = AutoModel.from_pretrained(str(out), trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    assert type(model).__name__ == "InternVLChatModel" and tok.chat_template


def test_lora_conversion_changes_only_llm_linear_layers_and_projector(lora_run):
    run, out = lora_run
    rows = C.weight_changes(run.base_model, out)
    # InternLM2's head is called `output`: XTuner's LoRA adapts it (it skips only lm_head / output_layer)
    assert C.changed_groups(rows) == {("llm", "linear"), ("llm", "lm_head"), ("projector", "linear"),
                                      ("projector", "bias"), ("projector", "norm")}
    assert [r["name"] for r in rows if r["kind"] == "lm_head" and r["changed"]] == ["language_model.output.weight"]
    assert C.unexpected_changes(rows, run.mode) == []
    lin = [r for r in rows if (r["part"], r["kind"]) == ("llm", "linear")]
    assert all(r["changed"] for r in lin) and len(lin) == 10  # wqkv, wo, w1, w2, w3 x 2 blocks, each got its LoRA


def test_lora_head_rule_follows_xtuner():
    """A changed InternLM2 `output` head is expected after LoRA; a changed Phi-3/Qwen2 `lm_head` is not."""
    rows = [{"name": n, "part": "llm", "kind": "lm_head", "changed": True}
            for n in ("language_model.output.weight", "language_model.lm_head.weight")]
    assert C.unexpected_changes(rows, "lora") == ["language_model.lm_head.weight"]
    assert C.unexpected_changes(rows, "full") == []
    from xtuner.model.utils import find_all_linear_names  # the rule itself, on both head names
    from torch import nn

    for head, adapted in (("output", True), ("lm_head", False)):
        model = nn.Module()
        model.wqkv = nn.Linear(2, 2)
        setattr(model, head, nn.Linear(2, 2))
        assert (head in find_all_linear_names(model)) == adapted == C.lora_adapts_head(f"language_model.{head}.weight")


def test_merged_logits_equal_base_plus_adapter_and_a_wrong_merge_fails(lora_run):
    from transformers import AutoTokenizer

    run, out = lora_run
    tok = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    merged, base = C.load_model(out), C.load_model(run.base_model)
    scale = C.lora_scale(run.config)
    assert scale == 2.0
    inputs = C.fixed_inputs(merged, tok)
    merged_l, base_l = C.logits_of(merged, inputs, tok), C.logits_of(base, inputs, tok)
    good = C.compare_logits(merged_l, C.logits_of(C.reference_model(run.base_model, run.checkpoint, scale), inputs, tok), base_l)
    print(good)
    assert good.passed and good.adapter_effect > 0.1, good
    C.assert_same_logits(good)
    for wrong_scale in (scale * 2, scale / 2):  # e.g. alpha taken for alpha / r: a deliberately wrong merge
        bad = C.compare_logits(merged_l, C.logits_of(C.reference_model(run.base_model, run.checkpoint, wrong_scale), inputs, tok), base_l)
        print(bad)
        with pytest.raises(C.MergeMismatch):
            C.assert_same_logits(bad)


@pytest.mark.notebook
def test_notebook_05_without_a_training_run_stops_early_with_the_fix(repo, tmp_path):
    from labsupport.course import runner

    result = runner.run_notebook(repo / "notebooks" / "05_convert_and_compare.ipynb", tmp_path, progress=False)
    assert result.status == "fail" and "TrainingRunMissing" in result.error, result.error
    assert "run notebooks/04_finetune_xtuner.ipynb first" in result.error
    assert result.failed_cell <= 6  # right after the set-up, before any conversion


def test_full_fine_tune_converts_and_matches_its_checkpoint(tiny, tmp_path):
    from transformers import AutoTokenizer

    run = _fake_run(tiny, tmp_path / "work", "full")
    assert run.mode == "full" and C.lora_scale(run.config) is None
    out = conversion.convert(run, tmp_path / "converted")
    rows = C.weight_changes(run.base_model, out)
    assert C.changed_groups(rows) >= {("llm", "linear"), ("projector", "linear")}
    assert not [r for r in rows if r["changed"] and r["part"] == "vision"]
    tok = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    merged, base = C.load_model(out), C.load_model(run.base_model)
    inputs = C.fixed_inputs(merged, tok)
    ref = C.reference_model(run.base_model, run.checkpoint, None)
    report = C.compare_logits(C.logits_of(merged, inputs, tok), C.logits_of(ref, inputs, tok), C.logits_of(base, inputs, tok))
    assert report.passed and report.adapter_effect > 0.01, report


def test_a_qlora_run_converts_on_a_cpu_into_base_plus_adapter(tiny, tmp_path):
    """QLoRA trains on a GPU against a 4-bit LLM; the script rebuilds the model unquantised, so conversion needs no GPU."""
    from transformers import AutoTokenizer

    run = _fake_run(tiny, tmp_path / "work", "qlora")
    assert run.mode == "qlora" and "quantization_llm=True" in run.config.read_text()
    out = conversion.convert(run, tmp_path / "converted")
    assert C.unexpected_changes(C.weight_changes(run.base_model, out), run.mode) == []
    tok = AutoTokenizer.from_pretrained(str(out), trust_remote_code=True)
    merged, base = C.load_model(out), C.load_model(run.base_model)
    inputs = C.fixed_inputs(merged, tok)
    ref = C.reference_model(run.base_model, run.checkpoint, C.lora_scale(run.config))
    report = C.compare_logits(C.logits_of(merged, inputs, tok), C.logits_of(ref, inputs, tok), C.logits_of(base, inputs, tok))
    assert report.passed and report.adapter_effect > 0.1, report


def test_merge_identity_holds_per_layer_and_a_wrong_scale_breaks_it(lora_run):
    run, out = lora_run
    state = C.read_checkpoint(run.checkpoint)
    rows = C.merge_identity(run.base_model, out, state, C.lora_scale(run.config))
    assert rows and all(r["rank"] == 4 for r in rows)
    assert max(r["max_diff"] for r in rows) <= 1e-2 * max(r["update_max"] for r in rows)
    assert C.merge_identity_holds(rows)
    wrong = C.merge_identity(run.base_model, out, state, C.lora_scale(run.config) / 2)
    assert max(r["max_diff"] for r in wrong) > 0.1 * max(r["update_max"] for r in wrong)
    assert not C.merge_identity_holds(wrong)


def test_checkpoint_bytes_counts_a_deepspeed_folder_too(tmp_path):
    from labsupport.evaluate import compare

    single = tmp_path / "iter_10.pth"
    single.write_bytes(b"x" * 100)
    folder = tmp_path / "iter_20.pth"
    (folder / "sub").mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"x" * 300)
    (folder / "sub" / "optim_states.pt").write_bytes(b"x" * 700)
    assert compare.checkpoint_bytes(single) == 100 and compare.checkpoint_bytes(folder) == 1000


# ---- updates below bfloat16's step (found on InternVL2-2B's shape on an H100: lr 4e-5, 200 steps) ----------------

def _projector(norm_step: float) -> tuple[dict, dict]:
    """A base projector and a trained checkpoint of it: the norm's weight moved by NORM_STEP, its bias and the linear layer clearly."""
    torch.manual_seed(0)
    base = {"mlp1.0.weight": torch.ones(8), "mlp1.0.bias": torch.zeros(8), "mlp1.1.weight": torch.randn(8, 8)}
    trained = {"model.mlp1.0.weight": base["mlp1.0.weight"] + norm_step, "model.mlp1.0.bias": base["mlp1.0.bias"] + 1e-3,
               "model.mlp1.1.weight": base["mlp1.1.weight"] + 0.1}
    return base, trained


def test_a_norm_update_below_half_a_bfloat16_step_is_rounded_away():
    base, trained = _projector(1e-3)   # bfloat16 stores 1.0's neighbours 2**-7 apart
    assert C.rounded_away_groups(trained, base) == {("projector", "norm")}


def test_a_norm_trained_in_bfloat16_that_never_moved_counts_as_rounded_away():
    """DeepSpeed's bfloat16 training saves the bfloat16 weight: an fp32 master update below half a step leaves it as it was."""
    base, trained = _projector(0.0)
    trained = {k: v.to(torch.bfloat16) for k, v in trained.items()}
    assert C.rounded_away_groups(trained, base) == {("projector", "norm")}


def test_an_update_bfloat16_can_store_is_not_rounded_away():
    base, trained = _projector(0.05)
    assert C.rounded_away_groups(trained, base) == set()
    assert C.rounded_away_groups(trained, base, dtype="float32") == set()


def test_a_prediction_may_name_a_rounded_away_group_but_must_name_every_changed_one():
    changed = {("projector", "linear"), ("projector", "bias")}
    away = {("projector", "norm")}
    assert C.prediction_matches(changed | away, changed, away)
    assert C.prediction_matches(changed, changed, away)
    assert not C.prediction_matches({("projector", "linear")} | away, changed, away)          # a changed group left out
    assert not C.prediction_matches(changed | {("llm", "norm")}, changed, away)                # a group that did not train
    assert not C.prediction_matches(changed | away, changed)                                    # nothing was rounded away
