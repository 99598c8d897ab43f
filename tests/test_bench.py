"""benchmarks on a CPU: the decode-bound arithmetic, tables and json, the checkpoint builder (tiny shape)."""
import json
import math

import pytest

from benchmarks import build, serve, train
from benchmarks.__main__ import main as bench_main
from labsupport.evaluate import measured
from labsupport.model import params
from labsupport.model.params import count_parameters, family
from labsupport.model.tinymodel import tiny_config

# A hand-sized Phi-3-style LLM: hidden 8, 2 layers, 2 heads (kv 2), MLP 16, vocab 10, untied head.
SMALL_LLM = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 8, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 16, "vocab_size": 10,
             "tie_word_embeddings": False}


def test_decode_bytes_per_token_counts_every_weight_but_the_embedding_table():
    # per layer: q, k, v, o = 4 * 8*8 = 256; gate, up, down = 3 * 8*16 = 384; two RMSNorms = 16 -> 656
    # 2 layers = 1312; final norm 8; lm_head 10*8 = 80; one embedding row 8 -> 1408 parameters, bf16
    assert build.decode_bytes_per_token(SMALL_LLM) == 1408 * 2
    assert build.decode_bytes_per_token(SMALL_LLM, bytes_per_param=1) == 1408


def test_decode_bound_is_bandwidth_over_bytes():
    assert build.decode_bound(3.0e12, 7.5e9) == pytest.approx(400.0)
    with pytest.raises(ValueError):
        build.decode_bound(3.0e12, 0)


def test_4b_decode_bytes_is_close_to_the_llm_weights():
    llm = params.internvl2_4b_config()["llm_config"]
    embedding = llm["vocab_size"] * llm["hidden_size"]
    # Phi-3-mini: 3.82B parameters of which 98M are the embedding table -> about 7.44 GB read per token
    assert build.decode_bytes_per_token(llm) == pytest.approx(2 * (3_820_809_216 - embedding), rel=1e-6)


def test_decode_rate_excludes_the_first_token():
    assert serve._decode_rate(256, 2.65, 0.1) == pytest.approx(255 / 2.55)
    assert serve._decode_rate(256, 0.1, 0.2) is None  # nonsense timings give no rate


def test_copy_bandwidth_on_cpu_counts_read_and_write():
    r = build.measure_copy_bandwidth(1 << 20, device="cpu", repeats=3)
    assert r["bytes"] == 1 << 20 and r["repeats"] == 3
    assert r["bandwidth_bytes_per_s"] == pytest.approx(2 * (1 << 20) * 3 / r["seconds"])


def test_format_table_aligns_and_marks_missing_values():
    text = measured.format_table([{"row": "lmdeploy", "x": 1234.5}, {"row": "transformers-long", "x": None}],
                              [("row", "row"), ("x", "tok/s")])
    lines = text.splitlines()
    assert lines[0].startswith("row") and lines[0].rstrip().endswith("tok/s")
    assert len({len(line) for line in lines}) == 1  # every line as wide as the header
    assert "1,234.5" in lines[2] and lines[3].rstrip().endswith("-")


def test_save_results_is_atomic_json(tmp_path):
    path = build.save_results("serve", {"rows": [{"row": "a", "v": 1.5}]}, tmp_path / "out" / "serve.json")
    assert json.loads(path.read_text()) == {"rows": [{"row": "a", "v": 1.5}]}
    assert [p.name for p in path.parent.iterdir()] == ["serve.json"]  # no temporary file left behind


def test_save_results_defaults_to_artifacts_bench(tmp_path, monkeypatch):
    monkeypatch.setenv("LABSUPPORT_ARTIFACTS", str(tmp_path))
    path = build.save_results("train", {"runs": []})
    assert path == tmp_path / "bench" / "train.json" and json.loads(path.read_text()) == {"runs": []}


def test_serve_and_train_tables_show_rows_and_errors():
    served = {"gpu": "X", "bandwidth": {"bandwidth_bytes_per_s": 3e12}, "llm_bytes_per_token": 7.5e9, "new_tokens": 256,
             "concurrency": 64, "rows": [
                 {"row": "lmdeploy", "ttft_s": 0.05, "decode_tokens_per_s": 300.0, "decode_bound_tokens_per_s": 400.0,
                  "fraction_of_bound": 0.75, "batch_requests": 64, "throughput_tokens_per_s": 9000.0},
                 {"row": "transformers", "batch_requests": 32, "batch_truncated": True},
                 {"row": "lmdeploy-eager", "error": "timed out; last lines:\nboom"}]}
    text = serve.serve_table(served)
    assert "3,000 GB/s" in text and "75.0" in text and "50.0" in text  # bandwidth, % of bound, TTFT in ms
    assert "32 (capped)" in text and "timed out" in text and "boom" not in text
    trained = {"peak_flops": 989e12, "runs": [{"mode": "lora", "zero": 2, "mfu": 0.25, "data_fraction": 0.1},
                                            {"mode": "full", "zero": 2, "error": "TrainingFailed: CUDA out of memory"}]}
    text = train.train_table(trained)
    assert "989 TFLOPS" in text and "25.00" in text and "10.00" in text and "CUDA out of memory" in text


# ---- the checkpoint builder, with the tiny shape ---------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_built(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tinyshape"
    config = tiny_config(3000, "tiny-4b")  # the Phi-3 layout the benchmark measures (InternVL2-4B's)
    return out, config, build.build_model(out, config, device="cpu")


def test_build_model_writes_the_official_layout(tiny_built):
    out, config, summary = tiny_built
    names = {p.name for p in out.iterdir()}
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors",
              "modeling_internvl_chat.py", "modeling_intern_vit.py", "configuration_internvl_chat.py", "conversation.py"):
        assert f in names
    assert json.loads((out / "config.json").read_text()) == config
    assert summary["tokenizer_vocab"] <= config["llm_config"]["vocab_size"]  # every token id has an embedding row


def test_build_model_parameter_count_matches_the_analytic_count(tiny_built):
    from safetensors import safe_open

    out, config, summary = tiny_built
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        stored = {k: f.get_slice(k).get_shape() for k in f.keys()}
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    total = sum(math.prod(s) for s in stored.values())
    assert total == count_parameters(config)["total"] == summary["parameters"]
    assert dtypes == {"BF16"}
    assert summary["bytes"] == 2 * total


def test_build_model_values_follow_the_init_rule(tiny_built):
    from safetensors.torch import load_file

    out, config, _ = tiny_built
    w = load_file(str(out / "model.safetensors"))
    assert float(w["vision_model.encoder.layers.0.ls1"].float().min()) == 1.0  # layer scale: ones
    assert float(w["vision_model.encoder.layers.0.attn.qkv.bias"].float().abs().max()) == 0.0  # biases: zeros
    internlm2 = config["llm_config"]["architectures"][0] == "InternLM2ForCausalLM"  # the tiny shape is 2B's layout
    emb = w["language_model.model.tok_embeddings.weight" if internlm2 else "language_model.model.embed_tokens.weight"]
    assert emb.float().std().item() == pytest.approx(config["llm_config"]["initializer_range"], rel=0.1)
    head = w["language_model.output.weight" if internlm2 else "language_model.lm_head.weight"].float()
    known = json.loads((out / build.BUILD_STAMP).read_text())["tokenizer_vocab"]
    assert known < head.shape[0]  # the tiny tokenizer is smaller than the padded vocabulary
    assert head[known:].abs().max().item() == 0.0 and head[:known].std().item() > 0.01  # unknown ids never win


def test_build_model_skips_when_current_and_refuses_foreign_folders(tiny_built, tmp_path):
    out, config, _ = tiny_built
    again = build.build_model(out, config, device="cpu")
    assert again["skipped"] is True
    foreign = tmp_path / "someone-elses"
    foreign.mkdir()
    (foreign / "weights.bin").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not written by benchmarks"):
        build.build_model(foreign, config, device="cpu")


def test_sharded_weights_have_a_complete_index(tiny_built, tmp_path):
    out, config, _ = tiny_built
    info = build.write_random_weights(config, tmp_path, device="cpu", shard_bytes=1_000_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert info["shards"] > 1 and len(set(index["weight_map"].values())) == info["shards"]
    assert index["metadata"]["total_size"] == info["bytes"] == 2 * count_parameters(config)["total"]
    assert all((tmp_path / f).is_file() for f in index["weight_map"].values())


def test_shards_respect_the_size_limit():
    shapes = {"a": (10,), "b": (10,), "c": (30,), "d": (5,)}  # 20, 20, 60, 10 bytes in bf16
    groups = build._shards(shapes, shard_bytes=45)
    assert groups == [["a", "b"], ["c"], ["d"]]  # a tensor larger than a shard gets its own


def test_4b_config_has_the_published_shape():
    cfg = params.internvl2_4b_config()
    v, llm = cfg["vision_config"], cfg["llm_config"]
    assert (v["num_hidden_layers"], v["hidden_size"], v["num_attention_heads"], v["intermediate_size"]) == (24, 1024, 16, 4096)
    assert v["qkv_bias"] is True
    assert (llm["num_hidden_layers"], llm["hidden_size"], llm["num_attention_heads"], llm["num_key_value_heads"],
            llm["intermediate_size"]) == (32, 3072, 32, 32, 8192)
    assert llm["architectures"] == ["Phi3ForCausalLM"] and llm["max_position_embeddings"] >= 4096
    published = family()["InternVL2-4B"]["hub_params"]
    assert count_parameters(cfg)["total"] == pytest.approx(published, rel=0.005)


def test_4b_parameter_shapes_match_the_analytic_count():
    from labsupport.model.tinymodel import parameter_shapes

    cfg = params.internvl2_4b_config()
    shapes = parameter_shapes(cfg)  # meta device: no memory
    assert sum(math.prod(s) for s in shapes.values()) == count_parameters(cfg)["total"]


# ---- training arithmetic ---------------------------------------------------------------------------------
def test_train_flops_full_minus_lora_is_the_weight_gradients():
    cfg = tiny_config(3000)
    llm = cfg["llm_config"]
    n = count_parameters(cfg)["llm"] - llm["vocab_size"] * llm["hidden_size"]
    full = train.train_flops_per_sample(cfg, "full", 100, 1)
    lora = train.train_flops_per_sample(cfg, "lora", 100, 1)
    assert full - lora == pytest.approx(2 * n * 100)


def test_train_flops_approach_6n_per_token_for_the_4b_llm():
    cfg = params.internvl2_4b_config()
    llm = cfg["llm_config"]
    n = count_parameters(cfg)["llm"] - llm["vocab_size"] * llm["hidden_size"]
    per_token = train.train_flops_per_sample(cfg, "full", 512, 0) / 512
    assert 6 * n < per_token < 6 * n * 1.05  # attention adds a few percent at 512 tokens
    with pytest.raises(ValueError):
        train.train_flops_per_sample(cfg, "dora", 512, 0)


def test_train_flops_grow_by_one_tile():
    cfg = tiny_config(3000)
    counts = count_parameters(cfg)
    v = cfg["vision_config"]
    one = train.train_flops_per_sample(cfg, "lora", 10, 1) - train.train_flops_per_sample(cfg, "lora", 10, 0)
    vit_fwd = 2 * counts["vit"] * 1025 + 4 * v["num_hidden_layers"] * v["hidden_size"] * 1025 ** 2
    assert one == pytest.approx(vit_fwd + 256 * 6 * counts["projector"])


def test_summarize_scalars_skips_warmup_and_reports_peak_memory():
    rows = [{"iter": i, "loss": 1.0, "time": t, "data_time": d, "memory": m}
            for i, t, d, m in [(1, 9.0, 5.0, 1000), (2, 1.0, 0.1, 2048), (3, 3.0, 0.3, 1500), (4, 2.0, 0.2, 1024)]]
    s = train.summarize_scalars(rows, warmup=1)
    assert s["measured_iters"] == 3 and s["s_per_iter"] == 2.0 and s["data_s_per_iter"] == pytest.approx(0.2)
    assert s["peak_memory_gib"] == 2.0
    with pytest.raises(ValueError, match="warm-up"):
        train.summarize_scalars(rows, warmup=4)


def test_summarize_scalars_prefers_the_wall_clock_between_log_lines():
    """mmengine's `time` is a moving average; the launch's own timestamps give the true mean after warm-up."""
    rows = [{"iter": i, "loss": 1.0, "time": 5.0, "data_time": 0.1, "seconds": sec}
            for i, sec in [(1, 10.0), (2, 20.0), (3, 21.0), (4, 22.5), (5, 24.0)]]
    s = train.summarize_scalars(rows, warmup=2)
    assert s["clock"] == "wall" and s["s_per_iter"] == pytest.approx(4.0 / 3) and s["mmengine_s_per_iter"] == 5.0


def test_checkpoint_without_optimizer_edits_the_generated_config(tmp_path):
    from labsupport.train import xtuner_presets, xtuner_render

    s = xtuner_presets.preset("InternVL2-4B-full", model_path=str(tmp_path), max_iters=25, deepspeed=2, nproc=1)
    path = tmp_path / "config.py"
    path.write_text(xtuner_render.render_config(s))
    train._no_optimizer_in_checkpoint(path)
    text = path.read_text()
    assert "save_optimizer=False" in text and "save_optimizer=True" not in text
    with pytest.raises(RuntimeError, match="save_optimizer=True"):
        train._no_optimizer_in_checkpoint(path)  # a second edit finds nothing to change: say so


def test_vlm_shape_agrees_with_the_memory_table():
    from labsupport.train import memory

    mine = build.vlm_shape(params.internvl2_4b_config(), "4b")
    table = memory.MODELS["InternVL2-4B"]
    assert mine.llm.params() == table.llm.params()
    assert mine.projector_params() == table.projector_params()


# ---- guards ----------------------------------------------------------------------------------------------
def test_gpu_paths_say_what_is_missing_without_cuda():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        build.need_cuda("the serve benchmark")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        serve.serve("/nonexistent", rows=["transformers"], device="cuda")


def test_serve_refuses_lmdeploy_rows_on_cpu_and_unknown_rows():
    with pytest.raises(ValueError, match="CUDA GPU"):
        serve.serve("/nonexistent", rows=["lmdeploy"], device="cpu")
    with pytest.raises(ValueError, match="unknown serve rows"):
        serve.serve("/nonexistent", rows=["vllm"], device="cpu")


def test_serve_lmdeploy_logic_with_a_stand_in_pipeline(monkeypatch):
    """The LMDeploy row's bookkeeping, with a stand-in pipeline (the engine itself needs a GPU).

    Where lmdeploy imports (the deploy env), its real GenerationConfig / PytorchEngineConfig /
    ChatTemplateConfig check the keyword names the benchmark passes."""
    import types
    from dataclasses import dataclass

    try:
        from lmdeploy import ChatTemplateConfig, GenerationConfig, PytorchEngineConfig
    except ImportError:
        @dataclass
        class GenerationConfig:  # noqa: D101 - the fields the benchmark uses
            max_new_tokens: int = 512
            min_new_tokens: int | None = None
            ignore_eos: bool = False
            do_sample: bool = False

        @dataclass
        class PytorchEngineConfig:  # noqa: D101
            tp: int = 1
            session_len: int | None = None
            eager_mode: bool = False
            enable_prefix_caching: bool = False
            max_batch_size: int | None = None

        @dataclass
        class ChatTemplateConfig:  # noqa: D101
            model_name: str = ""
            model_path: str | None = None

    @dataclass
    class Resp:
        generate_token_len: int
        input_token_len: int = 300
        text: str = ""

    calls = []

    class Pipe:
        def __init__(self, model, backend_config, trust_remote_code, log_level, chat_template_config):
            assert backend_config.eager_mode is True and backend_config.enable_prefix_caching is False
            assert backend_config.max_batch_size == 8 and chat_template_config.model_name == "hf"

        def __call__(self, prompts, gen_config):
            calls.append((prompts, gen_config))
            n = gen_config.max_new_tokens
            assert gen_config.ignore_eos is True
            return [Resp(n) for _ in prompts] if isinstance(prompts, list) else Resp(n)

    fake = types.SimpleNamespace(ChatTemplateConfig=ChatTemplateConfig, GenerationConfig=GenerationConfig,
                                 PytorchEngineConfig=PytorchEngineConfig, pipeline=Pipe)
    monkeypatch.setitem(__import__("sys").modules, "lmdeploy", fake)
    monkeypatch.setattr(serve, "need_cuda", lambda what: None)
    r = serve.serve_lmdeploy("/model", eager_mode=True, prefix_caching=False, new_tokens=32, concurrency=8)
    assert r["new_tokens"] == 32 and r["batch_requests"] == 8 and r["batch_tokens"] == 8 * 32
    assert r["throughput_tokens_per_s"] == pytest.approx(r["batch_tokens"] / r["batch_s"])
    full = [g for _, g in calls if g.max_new_tokens == 32]
    assert full and all(g.min_new_tokens == 32 for g in full)  # exactly NEW_TOKENS per request
    assert sum(1 for p, g in calls if g.max_new_tokens == 1) == 3  # TTFT: median of three
    assert any(isinstance(p, list) and len(p) == 8 for p, _ in calls)  # one call with all concurrent requests


# ---- measured results (docs/gpu) ------------------------------------------------------------------
def _train_file(folder, name, runs):
    import json
    (folder / name).write_text(json.dumps({"gpu": "NVIDIA H200", "versions": {}, "runs": runs}))


def _run(mode, zero, gpus, tok_s, peak=20.0):
    return {"mode": mode, "zero": zero, "gpus": gpus, "batch_per_gpu": 4, "s_per_iter": 1.0, "data_fraction": 0.01,
            "tokens_per_s_per_gpu": tok_s, "mfu": 0.1, "peak_memory_gib": peak, "lora_r": 128 if mode == "lora" else None,
            "dataset": {"max_tokens": 1847, "mean_tiles": 4.4}}


def test_training_results_scale_against_one_gpu_of_the_same_machine(tmp_path):
    _train_file(tmp_path, "bench-train-full-a-h200.json", [_run("full", 2, 1, 9999.0)])
    _train_file(tmp_path, "bench-train-full-b-h200x2.json", [_run("full", 2, 1, 4000.0), _run("full", 3, 2, 3000.0),
                                                            {"mode": "lora", "zero": 2, "error": "OOM"}])
    rows = measured.training_results(tmp_path)
    assert len(rows) == 3  # the failed run is left out
    z3 = next(r for r in rows if r["zero"] == 3)
    assert z3["machine"] == "h200x2" and z3["scaling_efficiency"] == pytest.approx(0.75)  # not against the h200 file
    assert all("scaling_efficiency" not in r for r in rows if r["gpus"] == 1)
    assert z3["estimate_error_pct"] == pytest.approx(100 * (z3["estimate_gib"] / 20.0 - 1))


def test_serving_results_compare_backends_within_one_run(tmp_path):
    import json
    rows = [{"row": "lmdeploy", "backend": "lmdeploy", "ttft_s": 0.05, "decode_tokens_per_s": 300.0,
             "decode_bound_tokens_per_s": 600.0, "fraction_of_bound": 0.5, "throughput_tokens_per_s": 3000.0},
            {"row": "transformers", "backend": "transformers", "ttft_s": 0.05, "decode_tokens_per_s": 20.0,
             "decode_bound_tokens_per_s": 600.0, "fraction_of_bound": 20 / 600},
            {"row": "lmdeploy-eager", "backend": "lmdeploy", "error": "timed out"}]
    (tmp_path / "bench-serve-x-h200.json").write_text(json.dumps({"gpu": "H200", "rows": rows}))
    out = measured.serving_results(tmp_path)
    assert [r["row"] for r in out] == ["lmdeploy", "transformers"]
    assert out[0]["x_transformers"] == pytest.approx(15.0) and out[1]["x_transformers"] is None
    assert out[0]["pct_of_bound"] == pytest.approx(50.0)


def test_the_estimator_is_within_15_percent_of_every_peak_measured_on_a_gpu():
    """The course's memory estimator, re-run now for the settings of each run kept in docs/gpu/."""
    rows = measured.training_results()
    assert rows, "docs/gpu/ holds no bench-train-*.json"
    assert {(r["mode"], r["gpus"]) for r in rows} >= {("lora", 1), ("full", 1), ("full", 2)}
    off = [(r["file"], r["mode"], round(r["estimate_error_pct"], 1)) for r in rows if abs(r["estimate_error_pct"]) > 15]
    assert not off, f"estimate more than 15 % from the measured peak: {off}"


def test_report_prints_both_tables_and_draws_the_figure(tmp_path, capsys):
    import matplotlib
    matplotlib.use("Agg")
    png = tmp_path / "build.png"
    assert bench_main(["report", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "Serving" in out and "Fine-tuning" in out and "lmdeploy" in out and "scaling" in out
    assert png.stat().st_size > 10_000
    with pytest.raises(ValueError, match="parts"):
        measured.measured_tables(parts=["speed"])


# ---- InternVL2-2B's shape and the lever runs --------------------------------------------------------------
def test_2b_config_has_the_published_shape_with_the_course_internlm2():
    from labsupport.model.tinymodel import parameter_shapes

    cfg = params.internvl2_2b_config()
    llm = cfg["llm_config"]
    assert llm["architectures"] == ["InternLM2ForCausalLM"] and cfg["template"] == "internlm2-chat"
    assert (llm["num_hidden_layers"], llm["hidden_size"], llm["num_attention_heads"], llm["num_key_value_heads"],
            llm["intermediate_size"], llm["vocab_size"]) == (24, 2048, 16, 8, 8192, 92553)
    shapes = parameter_shapes(cfg)  # the course's modeling code on the meta device: no memory
    assert "language_model.model.tok_embeddings.weight" in shapes and "language_model.output.weight" in shapes
    assert sum(math.prod(s) for s in shapes.values()) == count_parameters(cfg)["total"]
    assert count_parameters(cfg)["total"] == pytest.approx(family()["InternVL2-2B"]["hub_params"], rel=0.005)
    assert build.shape_name(cfg) == "InternVL2-2B" and build.shape_name(params.internvl2_4b_config()) == "InternVL2-4B"


def test_apply_levers_edits_only_what_it_names(tmp_path):
    from labsupport.train import xtuner_presets, xtuner_render

    s = xtuner_presets.preset("InternVL2-2B-full", model_path=str(tmp_path), max_iters=10, nproc=1, max_dynamic_patch=6,
                      fused_rmsnorm=False)  # XTuner's own InternVL_V1_5: the bench's levers start from it
    path = tmp_path / "config.py"
    path.write_text(xtuner_render.render_config(s))
    before = path.read_text()
    assert train.apply_levers(path) == [] and path.read_text() == before  # defaults: XTuner's own config
    changed = train.apply_levers(path, checkpointing=False, attention="eager", group_by_length=False)
    assert len(changed) == 2
    cfg = xtuner_render.load_config(path)
    assert cfg.model.type.__name__ == "LeverInternVL" and cfg.model.gradient_checkpointing is False
    assert cfg.model.llm_attn == "eager" and cfg.train_dataloader.sampler.type.__name__ == "DefaultSampler"
    with pytest.raises(RuntimeError, match="LengthGroupedSampler"):
        train.apply_levers(path, group_by_length=False)  # nothing left to change: say so


def test_levers_table_compares_each_row_with_its_base():
    runs = [{"row": "a", "lever": "baseline", "base": None, "batch_per_gpu": 4, "s_per_iter": 1.0, "data_fraction": 0.01,
             "tokens_per_s_per_gpu": 100.0, "mfu": 0.1, "peak_memory_gib": 10.0, "estimate_gib": 11.0},
            {"row": "b", "lever": "batch 16", "base": "a", "batch_per_gpu": 16, "s_per_iter": 2.0, "data_fraction": 0.01,
             "tokens_per_s_per_gpu": 250.0, "mfu": 0.25, "peak_memory_gib": 30.0, "estimate_gib": 31.0},
            {"row": "c", "lever": "checkpointing off", "base": "b", "error": "TrainingFailed: CUDA out of memory"}]
    text = train.levers_table({"peak_flops": 989e12, "runs": runs})
    assert "2.50" in text and "25.00" in text and "CUDA out of memory" in text


def test_levers_refuses_unknown_rows():
    with pytest.raises(ValueError, match="unknown lever rows"):
        train.levers("x", ["full-b4", "fastest"])


@pytest.mark.parametrize("name", list(train.LEVER_ROWS))
def test_every_lever_row_writes_a_config_that_mmengine_loads(name, tmp_path):
    from labsupport.train import xtuner_presets, xtuner_render

    spec = train.LEVER_ROWS[name]
    kw = {k: spec[k] for k in train._LEVER_KEYS if k in spec}
    data = xtuner_presets.DataSpec(str(tmp_path / "train.json"), str(tmp_path / "images"))
    s, path, notes = train.write_train_config(tmp_path / "config.py", str(tmp_path / "model"), spec["mode"], data, 12,
                                              spec["batch"], spec.get("zero", 2), **kw)
    cfg = xtuner_render.load_config(path)
    assert cfg.train_dataloader.batch_size == spec["batch"] and s.deepspeed == spec.get("zero", 2)
    assert cfg.optim_wrapper.accumulative_counts == spec.get("accumulative_counts", 1) == s.accumulative_counts
    levered = not spec.get("checkpointing", True) or spec.get("attention") or spec.get("amp") or spec.get("fused_rmsnorm")
    assert cfg.model.get("fused_rmsnorm", False) == spec.get("fused_rmsnorm", False)
    assert cfg.model.type.__name__ == ("LeverInternVL" if levered else "InternVL_V1_5")
    assert cfg.model.get("gradient_checkpointing", True) == spec.get("checkpointing", True)
    amp_or_ds = spec.get("zero", 2) or spec.get("amp")  # DeepSpeed replaces AmpOptimWrapper; without it plain or AMP
    assert cfg.optim_wrapper.type.__name__ == ("AmpOptimWrapper" if amp_or_ds else "OptimWrapper")
    if spec.get("amp"):  # no DeepSpeed: float32 master weights under bf16 autocast
        assert cfg.optim_wrapper.type.__name__ == "AmpOptimWrapper" and cfg.optim_wrapper.dtype == "bfloat16"
        assert cfg.model.dtype == "float32" and "optim_wrapper=AmpOptimWrapper(bfloat16)" in notes
    hooks = [h.type.__name__ for h in cfg.custom_hooks]
    assert ("ProfileSummaryHook" in hooks) == bool(spec.get("profile")) and "DatasetInfoHook" in hooks
    if spec.get("profile"):  # the summary lands beside the config, where train_mode reads it
        profiler = cfg.custom_hooks[-1]
        assert profiler.out_file == str(tmp_path / train.PROFILE_FILE) and profiler.wait + 1 + profiler.active <= 12
    assert spec["base"] is None or spec["base"] in train.LEVER_ROWS


def test_profile_table_reads_the_hooks_summary():
    row = {"row": "p", "profile": {"active_iters": 3, "wall_s_per_iter": 1.2, "gpu_busy_s_per_iter": 0.9,
                                   "kernels_per_iter": 9000.0, "cpu_ops_s_per_iter": 0.7,
                                   "forward_gpu_s_per_iter": {"vit.forward": 0.05, "llm.forward": 0.2},
                                   "top_ops": [{"op": "aten::mm", "gpu_s_per_iter": 0.45, "cpu_s_per_iter": 0.01,
                                                "calls_per_iter": 700.0}]}}
    text = train.profile_table(row)
    assert "MFU" not in text.splitlines()[0]  # no batch sizes recorded: no MFU claimed
    row["profile"].update(batch_per_iter={"samples": 16, "tokens": 20000, "padded_tokens": 21000, "tiles": 70},
                          mfu_wall=0.3, mfu_gpu_busy=0.4)
    assert "MFU 30.0 % of wall-clock time, 40.0 % of GPU-busy time" in train.profile_table(row)
    assert "(75 %)" in text and "9,000 kernels" in text and "100 µs each" in text and "ViT 0.050 s" in text
    assert "aten::mm" in text and "50.0" in text  # 0.45 of 0.9 s busy


def test_the_profile_hook_writes_its_summary(tmp_path):
    """mmengine's ProfilerHook with the course's summary, on a CPU: wall-clock per iteration, forward ranges, top ops."""
    import logging
    from types import SimpleNamespace

    import torch

    from labsupport.train.xtuner_shims import ProfileSummaryHook

    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_model, self.language_model = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)

    model = torch.nn.Module()
    model.model = Inner()
    runner = SimpleNamespace(model=model, max_iters=12, max_epochs=1, iter=0, logger=logging.getLogger("test"),
                             work_dir=str(tmp_path))
    hook = ProfileSummaryHook(str(tmp_path / "profile.json"), wait=2, active=3)
    hook.before_run(runner)
    for i in range(7):
        runner.iter = i
        inner = model.model
        inner.language_model(inner.vision_model(torch.randn(8, 32))).sum().backward()
        ids = torch.ones(2, 5 + i, dtype=torch.long)  # XTuner's collated batch: 2 samples, one padded token each
        mask = torch.ones_like(ids, dtype=torch.bool)
        mask[:, -1] = False
        hook.after_train_iter(runner, i, {"data": {"input_ids": ids, "attention_mask": mask,
                                                   "pixel_values": [torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 8, 8)]}})
    summary = json.loads((tmp_path / "profile.json").read_text())
    assert summary["active_iters"] == 3 and summary["wall_s_per_iter"] > 0
    assert set(summary["forward_gpu_s_per_iter"]) == {"vit.forward", "llm.forward"}
    assert any(o["op"] == "aten::addmm" and o["calls_per_iter"] == 2 for o in summary["top_ops"])
    # iterations 3-5 are active (wait 2, warm-up 1): lengths 8, 9, 10 -> padded 2 x 9 = 18, real 2 x 8 = 16 on average
    assert summary["batch_per_iter"] == {"samples": 2, "tokens": 16, "padded_tokens": 18, "tiles": 3}


def test_amp_needs_a_run_without_deepspeed(tmp_path):
    from labsupport.train import xtuner_presets

    data = xtuner_presets.DataSpec(str(tmp_path / "train.json"), str(tmp_path / "images"))
    with pytest.raises(ValueError, match="zero=0"):
        train.write_train_config(tmp_path / "c.py", str(tmp_path), "full", data, 12, 16, zero=2, amp=True)
