"""Tests of labsupport.serve.quantize (notebook 06b): the group-size check, the calibration loader, AWQ's unpacking and the
dequantization bound. LMDeploy's side (its packer, auto_awq, the CPU stand-in on an AWQ folder) runs in the deploy env."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from labsupport.publish import modelcard
from labsupport.serve import awq, quantize
from labsupport.core.paths import repo_root
from labsupport.model.tinymodel import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "internvl2-tiny", seed=0)


@pytest.fixture()
def train_json(tmp_path) -> Path:
    records = [{"id": i, "image": f"images/{i}.png",
                "conversations": [{"from": "human", "value": "<image>\nWhat colour are the objects on the plate?"},
                                  {"from": "gpt", "value": colour}]}
               for i, colour in enumerate(["red", "blue", "green", "yellow"] * 10)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_group_size_check_names_the_widths_and_the_valid_choices(tiny):
    widths = awq.check_group_size(tiny, 32)
    assert sorted(widths.values()) == [128, 128, 256]
    assert awq.valid_group_sizes(tiny) == [32, 64, 128]
    with pytest.raises(ValueError) as err:
        awq.check_group_size(tiny, 256)  # divides the MLP's 256 but not the hidden size 128
    text = str(err.value)
    assert "w_group_size=256" in text and "hidden_size (into wqkv, w1, w3) = 128" in text
    assert "intermediate_size (into w2) = 256" not in text  # 256 divides that one: only the widths it fails are named
    assert "Valid choices here: [32, 64, 128];" in text and str(tiny) in text
    with pytest.raises(ValueError, match="LMDeploy's AWQ kernels take"):
        awq.check_group_size(tiny, 16)  # divides every width, but no kernel tiles by it


def test_calibration_loader_cuts_windows_from_the_training_conversations(tiny, train_json):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny), trust_remote_code=True)
    loader = awq.course_calib_loader(train_json)
    windows = loader("wikitext2", tok, nsamples=5, seqlen=32)  # LMDeploy's name is accepted and ignored
    assert len(windows) == 5 and all(tuple(w.shape) == (1, 32) for w in windows)
    assert loader.last["texts"] == 40 and loader.last["tokens"] > 32
    assert windows[0].dtype == torch.long
    joined = tok.decode(torch.cat(windows, dim=1)[0])
    assert "colour" in joined or "plate" in joined  # the course's own text, not a Hub dataset
    assert torch.equal(torch.cat(loader("c4", tok, nsamples=5, seqlen=32)), torch.cat(windows))  # seeded
    with pytest.raises(ValueError, match="CALIB_SEQLEN"):
        loader("wikitext2", tok, nsamples=1, seqlen=100_000)
    with pytest.raises(FileNotFoundError, match="run notebook 04 first"):
        awq.course_calib_loader(train_json.with_name("missing.json"))("wikitext2", tok, 1, 8)


def _pack_like_lmdeploy(values: torch.Tensor) -> torch.Tensor:
    """[rows, out] ints 0..15 packed as lmdeploy's WeightOnlyQLinear.from_linear does (awq_layout=True), written out here."""
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    packed = torch.zeros(values.shape[0], values.shape[1] // 8, dtype=torch.int32)
    for col in range(packed.shape[1]):
        for i in range(8):
            packed[:, col] |= values[:, col * 8 + order[i]].to(torch.int32) << (i * 4)
    return packed


def test_unpacking_inverts_lmdeploys_packing_order():
    values = torch.randint(0, 16, (6, 24))
    assert torch.equal(awq.unpack_int4(_pack_like_lmdeploy(values)), values)
    naive = (_pack_like_lmdeploy(values).unsqueeze(-1) >> torch.arange(0, 32, 4)) & 0xF  # nibble order, no reordering
    assert not torch.equal(naive.reshape(6, -1), values)  # the order matters: a reader that ignores it is wrong


def test_dequantized_weights_stay_within_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(64, 16)  # [in, out]: 4 groups of 16 input channels
    group = 16
    g = w.t().reshape(-1, group)  # LMDeploy's pseudo_quantize_tensor works on [out, in] rows cut into groups
    scale = (g.amax(1, keepdim=True) - g.amin(1, keepdim=True)).clamp(min=1e-5) / 15
    zero = (-torch.round(g.amin(1, keepdim=True) / scale)).clamp(0, 15)
    q = torch.clamp(torch.round(g / scale) + zero, 0, 15).reshape(16, 64).t()  # [in, out]
    scales = scale.reshape(16, 4).t().to(torch.float16)  # [in / group, out]
    zeros = zero.reshape(16, 4).t()
    dq = awq.dequantize_gemm(_pack_like_lmdeploy(q), _pack_like_lmdeploy(zeros), scales, 4, group)
    bound = scales.float().repeat_interleave(group, dim=0) / 2 + 1e-3
    assert ((w - dq).abs() <= bound).all()
    with pytest.raises(ValueError, match="group_size=32"):
        awq.dequantize_gemm(_pack_like_lmdeploy(q), _pack_like_lmdeploy(zeros), scales, 4, 32)


def test_kv_bytes_per_token_follow_the_config(tiny):
    # tiny: 2 layers, 2 KV heads of 32 dims -> 2 (K, V) x 2 x 2 x 32 = 256 values per token
    assert awq.kv_bytes_per_token(tiny, 0) == 512
    assert awq.kv_bytes_per_token(tiny, 8) == 256 and awq.kv_bytes_per_token(tiny, 4) == 128
    with pytest.raises(ValueError, match="quant_policy=3"):
        awq.kv_bytes_per_token(tiny, 3)


def test_flips_and_per_kind_use_the_course_scorer():
    asked = [{"id": 1, "meta": {"kind": "colour", "value": "red", "answer": "red"}},
             {"id": 2, "meta": {"kind": "count", "value": "3", "answer": "3"}}]
    from labsupport.datasets.plates import answer_matches

    assert answer_matches("red", asked[0]["meta"])
    acc = quantize.per_kind(asked, ["red", "4"])
    assert acc == {"colour": 1.0, "count": 0.0, "all": 0.5}
    flipped = quantize.flips(asked, ["red", "4"], ["blue", "4"])
    assert [f["id"] for f in flipped] == [1] and flipped[0]["change"] == "right -> wrong"


def test_flips_and_per_kind_score_a_learners_records_with_their_scorer():
    # the learner's own records have no meta (06b asks what 04 trained on): their reference is the gpt turn
    def record(i, question, answer):
        return {"id": i, "image": f"images/{i}.png", "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                                                                       {"from": "gpt", "value": answer}]}
    digits = [record(1, "Which digit?", "5"), record(2, "Which digit?", "8")]
    assert quantize.per_kind(digits, ["5", "3"]) == {"all": 0.5}
    choice = [record(1, "Which digit? A. 3 B. 5", "B"), record(2, "Which digit? A. 8 B. 1", "A")]
    assert quantize.per_kind(choice, ["B. 5", "The answer is A."], "choice") == {"all": 1.0}
    assert quantize.per_kind(choice, ["B. 5", "The answer is A."], "exact") == {"all": 0.0}   # the scorer decides
    opened = [record(1, "Describe the digit.", "a thin five with a flat top")]
    flipped = quantize.flips(opened, ["a thin five with a flat top"], ["zero"], "text")
    assert [f["change"] for f in flipped] == ["right -> wrong"] and flipped[0]["kind"] == "all"


def test_measured_rows_read_the_json_and_compare_with_bf16(tmp_path):
    data = {"gpu": "NVIDIA H200", "cache_max_entry_count": 0.4, "awq_build_s": 57.0,
            "bandwidth": {"bandwidth_bytes_per_s": 4.3e12},
            "rows": [{"row": "bf16", "decode_tokens_per_s": 400.0, "throughput_tokens_per_s": 8000.0, "disk_bytes": 2**31},
                     {"row": "awq", "decode_tokens_per_s": 300.0, "throughput_tokens_per_s": 4000.0, "disk_bytes": 2**30},
                     {"row": "kv-int8", "error": "timed out; last lines:\n..."}]}
    (tmp_path / "bench-quant-2b-h200.json").write_text(json.dumps(data))
    rows = quantize.measured_rows(tmp_path)
    assert [r["row"] for r in rows] == ["bf16", "awq", "kv-int8"] and rows[0]["machine"] == "h200"
    table = quantize.measured_table(rows)
    assert "0.75" in table and "0.50" in table and "timed out" in table
    step = quantize.decode_step_budget(350.0, 3.4e9, 4.3e12)
    assert abs(step["step_ms"] - 2.857) < 0.01 and abs(step["read_ms"] - 0.791) < 0.01


def test_turbomind_status_names_the_reason(tmp_path, monkeypatch):
    from labsupport.serve import deploy

    phi3 = tmp_path / "phi3"
    phi3.mkdir()
    (phi3 / "config.json").write_text(json.dumps({"llm_config": {"architectures": ["Phi3ForCausalLM"]}}))
    monkeypatch.setattr(deploy, "lmdeploy_version", lambda: None)
    assert quantize.turbomind_status(phi3) == (False, "lmdeploy is not installed in this environment")
    monkeypatch.setattr(deploy, "lmdeploy_version", lambda: "0.18.0")
    ok, why = quantize.turbomind_status(phi3)
    assert not ok and "Phi3ForCausalLM" in why and "PyTorch engine" in why


def _awq_result(ft_dir: Path) -> dict:
    return {"model": str(ft_dir) + "-awq", "quantized_from": str(ft_dir), "tiles": 1, "n": 24,
            "quantization_config": {"bits": 4, "group_size": 128, "quant_method": "awq", "version": "gemm", "zero_point": True},
            "calibration": {"data": "train.json", "samples": 8, "seqlen": 128}, "bytes": {"before": 2_700_000, "after": 2_200_000},
            "before": {"accuracy": 0.9583, "per_kind": {"colour": 1.0, "count": 0.875, "shape": 1.0}},
            "after": {"accuracy": 0.9167, "per_kind": {"colour": 1.0, "count": 0.75, "shape": 1.0}},
            "flips": [{"kind": "count"}], "ran": {"after": "the CPU stand-in, AWQ weights dequantized"}}


def test_awq_card_carries_the_measured_accuracy_and_how_to_serve_it(tmp_path):
    result = _awq_result(tmp_path / "ft")
    card = modelcard.awq_card("me/InternVL2-tiny-plates-AWQ", result, "me/InternVL2-tiny-plates")
    assert modelcard.check_awq_card(card, result) == []
    text = str(card)
    assert "95.8 %" in text and "91.7 %" in text and "| count | 87.5 % | 75.0 % |" in text
    assert "base_model: me/InternVL2-tiny-plates" in text and "quantized" in text
    wrong = dict(result, after={**result["after"], "accuracy": 0.5})
    assert any("accuracy" in p for p in modelcard.check_awq_card(card, wrong))


def test_awq_publish_reason_says_why_not(tmp_path):
    from labsupport.core.paths import finetuned_dir

    art = tmp_path / "art"
    ft = finetuned_dir(art, "tiny")
    assert "nothing fine-tuned" in modelcard.awq_publish_reason(art, "tiny", ft, fine_tuned=False)
    assert "run notebook 06b first" in modelcard.awq_publish_reason(art, "tiny", ft, fine_tuned=True)
    awq_dir = quantize.awq_model_dir(art, "tiny")
    awq_dir.mkdir(parents=True)
    (awq_dir / "config.json").write_text(json.dumps({"llm_config": {"quantization_config": {"quant_method": "awq"}}}))
    assert "run notebook 06b to the end" in modelcard.awq_publish_reason(art, "tiny", ft, fine_tuned=True)
    (art / quantize.AWQ_RESULTS_JSON).parent.mkdir(parents=True)
    (art / quantize.AWQ_RESULTS_JSON).write_text(json.dumps(_awq_result(tmp_path / "another")))
    assert "not of" in modelcard.awq_publish_reason(art, "tiny", ft, fine_tuned=True)
    (art / quantize.AWQ_RESULTS_JSON).write_text(json.dumps(_awq_result(ft)))
    assert modelcard.awq_publish_reason(art, "tiny", ft, fine_tuned=True) == ""


def _in_deploy_env(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """SCRIPT run by the deploy env's Python with this checkout on its path (the test is skipped, saying why, without that env)."""
    python = Path(os.environ.get("LABSUPPORT_DEPLOY_PYTHON", repo_root() / ".venvs/internvl-deploy/bin/python"))
    if not python.exists():
        pytest.skip(f"deploy env python {python} not found (set LABSUPPORT_DEPLOY_PYTHON)")
    env = dict(os.environ, PYTHONPATH=str(repo_root()))
    return subprocess.run([str(python), "-c", script, *args], capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


DEPLOY_SCRIPT = r"""
import json, sys, time, torch
from pathlib import Path
from labsupport.serve import awq, lmdeploy_cpu, quantize
from lmdeploy.lite.quantization import WeightQuantizer
from lmdeploy.lite.quantization.awq import pseudo_quantize_tensor
from lmdeploy.lite.quantization.modules import WeightOnlyQLinear
from lmdeploy.lite.utils import QParams
from lmdeploy.pytorch.backends.default.awq_modules import dequantize_gemm as lmdeploy_dequantize

tiny, train_json, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

# 1. LMDeploy's own packer on a random linear, read back by the course's dequantizer
torch.manual_seed(0)
fc = torch.nn.Linear(128, 64, bias=False)
ref = fc.weight.data.clone()
fc.weight.data, scales, zeros = pseudo_quantize_tensor(fc.weight.data, 4, 32, return_scale_zeros=True)
q = WeightOnlyQLinear.from_linear(fc, WeightQuantizer(4, False, "per_group", 32), qparams=QParams(scales, zeros))
dq = awq.dequantize_gemm(q.qweight, q.qzeros, q.scales, 4, 32)
assert torch.equal(dq, lmdeploy_dequantize(q.qweight, q.qzeros, q.scales.float(), 4, 32).float()), "differs from LMDeploy's"
bound = q.scales.float().repeat_interleave(32, dim=0) / 2 + 1e-3
assert ((ref.t() - dq).abs() <= bound).all(), float(((ref.t() - dq).abs() - bound).max())

# 2. auto_awq on the tiny model: data-free (every layer checkable) and calibrated on the course's loader
import lmdeploy.lite.apis.calibrate as calibrate
from lmdeploy.lite.apis.auto_awq import auto_awq
calibrate.get_calib_loaders = awq.course_calib_loader(train_json)
for samples in (0, 4):
    out = work / f"awq-{samples}"
    auto_awq(str(tiny), str(out), calib_dataset="wikitext2", calib_samples=samples, calib_seqlen=32, w_bits=4,
             w_group_size=32, device="cpu", trust_remote_code=True, dtype="float16")
    rows = awq.weight_errors(tiny, out)
    checked = [r for r in rows if r["checked"]]
    assert len(rows) == 10 and all(r["within"] for r in checked), rows
    assert len(checked) == (10 if samples == 0 else 6), [r["layer"] for r in checked]
    assert awq.awq_config(out)["group_size"] == 32 and awq.folder_bytes(out) < awq.folder_bytes(tiny)
    print("AWQ", samples, len(checked), max(r["worst_ratio"] for r in checked))
assert calibrate.get_calib_loaders.last["texts"] == 40


# 3. the stand-in loads the AWQ folder dequantized and says so; every packed weight came back as a float weight
pipe = lmdeploy_cpu.cpu_pipeline(str(work / "awq-4"), trust_remote_code=True)
assert "dequantized" in lmdeploy_cpu.which(pipe), lmdeploy_cpu.which(pipe)
model = pipe._model.model
state = awq.dequantized_state(work / "awq-4")
w = dict(model.named_parameters())["language_model.model.layers.0.attention.wo.weight"]
assert torch.equal(w.detach(), state["language_model.model.layers.0.attention.wo.weight"])
print("answer:", repr(pipe("What colour are the objects on the plate?").text))

# 4. a wrong group size: LMDeploy's own failure is a bare assert; the course's check names widths and choices first
try:
    auto_awq(str(tiny), str(work / "bad"), calib_samples=0, w_group_size=256, device="cpu", trust_remote_code=True,
             dtype="float16")
    raise SystemExit("auto_awq accepted w_group_size=256 for a hidden size of 128")
except AssertionError as exc:
    assert str(exc) == "", exc   # what a learner would see from LMDeploy: no message at all
try:
    awq.check_group_size(tiny, 256)
    raise SystemExit("check_group_size accepted 256")
except ValueError as exc:
    assert "Valid choices here: [32, 64, 128];" in str(exc)
print("QUANT-OK")
"""


@pytest.mark.deploy
def test_lmdeploy_side_in_deploy_env(tiny, train_json, tmp_path):
    proc = _in_deploy_env(DEPLOY_SCRIPT, str(tiny), str(train_json), str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0 and "QUANT-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-4000:]


# LMDeploy's calibration keeps its activation observers in a process-wide registry: a second model in the same process
# finds the first one's layer names, so Phi-3 gets a process of its own
DEPLOY_PHI3_SCRIPT = r"""
import json, sys
from pathlib import Path
from labsupport.serve import awq, quantize
import lmdeploy.lite.apis.calibrate as calibrate
from lmdeploy.lite.apis.auto_awq import auto_awq
from labsupport.model.tinymodel import build_tiny_model

train_json, work = Path(sys.argv[1]), Path(sys.argv[2])
calibrate.get_calib_loaders = awq.course_calib_loader(train_json)
# Phi-3 (tiny-4b, InternVL2-4B's layout): fused qkv_proj and gate_up_proj, whose last block the linear-to-linear
# smoothing divides; the rows before it are checked, o_proj and down_proj are not
phi3 = build_tiny_model(work / "tiny-4b", layout="tiny-4b")
assert quantize.awq_blocker(phi3) == "", quantize.awq_blocker(phi3)   # Phi-3 built into transformers: nothing stops auto_awq
out = work / "awq-phi3"
auto_awq(str(phi3), str(out), calib_dataset="wikitext2", calib_samples=4, calib_seqlen=32, w_bits=4, w_group_size=32,
         device="cpu", trust_remote_code=True, dtype="float16")
rows = awq.weight_errors(phi3, out)
checked = [r for r in rows if r["checked"]]
assert sorted({r["layer"].split(".", 4)[-1] for r in checked}) == ["mlp.gate_up_proj", "self_attn.qkv_proj"], rows
assert all(r["within"] for r in checked), checked
hidden = json.loads((phi3 / "config.json").read_text())["llm_config"]["hidden_size"]
# smooth_fc_fcs divides the last o_proj-input-wide block (hidden) of qkv_proj, the up half of gate_up_proj
assert all(r["rows"] == (f"{r['shape'][1] - hidden} of {r['shape'][1]}" if r["layer"].endswith("qkv_proj")
                         else f"{r['shape'][1] // 2} of {r['shape'][1]}") for r in checked), checked
print("AWQ phi3", len(checked), max(r["worst_ratio"] for r in checked))
print("PHI3-OK")
"""


@pytest.mark.deploy
def test_awq_weight_check_reads_phi3s_fused_linears_in_deploy_env(train_json, tmp_path):
    proc = _in_deploy_env(DEPLOY_PHI3_SCRIPT, str(train_json), str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0 and "PHI3-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-4000:]


BLOCKER_SCRIPT = r"""
import shutil, sys
from pathlib import Path
from labsupport.serve import quantize

tiny, work = Path(sys.argv[1]), Path(sys.argv[2])
assert quantize.awq_blocker(tiny) == "", quantize.awq_blocker(tiny)
# the published InternLM2 file's transformers-4 declaration, which transformers 5's save_pretrained cannot read
listed = shutil.copytree(tiny, work / "listed-tied-keys")
with open(listed / "modeling_internlm2.py", "a") as f:
    f.write("\nInternLM2ForCausalLM._tied_weights_keys = ['output.weight']\n")
reason = quantize.awq_blocker(listed)
assert "InternLM2ForCausalLM (modeling_internlm2.py) declares _tied_weights_keys as a list" in reason, reason
# a model file that fails while building, as InternVL2-4B's modeling_phi3.py does under transformers 5
broken = shutil.copytree(tiny, work / "broken-init")
with open(broken / "modeling_internlm2.py", "a") as f:
    f.write("\ndef _fails(self, config):\n    raise KeyError('type')\nInternLM2ForCausalLM.__init__ = _fails\n")
reason = quantize.awq_blocker(broken)
assert "cannot build InternLM2ForCausalLM" in reason and "KeyError: 'type'" in reason and "What to do" in reason, reason
print("BLOCKER-OK")
"""


@pytest.mark.deploy
def test_awq_blocker_names_model_code_this_transformers_cannot_build_or_save(tiny, tmp_path):
    proc = _in_deploy_env(BLOCKER_SCRIPT, str(tiny), str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0 and "BLOCKER-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-4000:]
