"""Tests of labsupport.serve.deploy and the demo's request handling (course env; LMDeploy's side in the deploy env)."""
import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from labsupport.model import prompts
from labsupport.serve import demo_app, deploy, endpoint
from labsupport.datasets.plates import draw_plate
from labsupport.core import tiling
from labsupport.core.paths import repo_root
from labsupport.model.tinymodel import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "internvl2-tiny", seed=0)


@pytest.fixture(scope="module")
def pipe(tiny):
    return deploy.pipeline(tiny, backend="transformers", gen=deploy.GenSettings(max_new_tokens=4), max_tiles=1)


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "plate.jpg"
    draw_plate("red", "circle", 3, size=(512, 384), seed=1).save(path)
    return path


# ---- generation settings and backend choice -------------------------------------------------------
def test_gen_settings_greedy_and_sampling():
    greedy = deploy.GenSettings(max_new_tokens=5).to_transformers()
    assert greedy["do_sample"] is False and greedy["max_new_tokens"] == 5 and greedy["temperature"] is None
    sampled = deploy.GenSettings(temperature=0.7, top_p=0.9, top_k=20).to_transformers()
    assert sampled["do_sample"] is True and (sampled["temperature"], sampled["top_p"], sampled["top_k"]) == (0.7, 0.9, 20)


@pytest.mark.parametrize("kwargs, word", [({"temperature": 2.5}, "temperature"), ({"top_p": 0.0}, "top_p"),
                                          ({"max_new_tokens": 0}, "max_new_tokens")])
def test_gen_settings_reject_bad_values(kwargs, word):
    with pytest.raises(ValueError, match=word):
        deploy.GenSettings(**kwargs)


def test_choose_backend(monkeypatch):
    monkeypatch.setattr(deploy, "cuda_available", lambda: False)
    monkeypatch.setattr(deploy, "lmdeploy_version", lambda: "0.18.0")
    assert deploy.choose_backend("auto")[0] == "transformers"
    assert "no CUDA GPU" in deploy.choose_backend("auto")[1]
    with pytest.raises(RuntimeError, match="BACKEND='lmdeploy' cannot run here: no CUDA GPU"):
        deploy.choose_backend("lmdeploy")
    monkeypatch.setattr(deploy, "cuda_available", lambda: True)
    assert deploy.choose_backend("auto")[0] == "lmdeploy"
    assert deploy.choose_backend("transformers")[0] == "transformers"
    monkeypatch.setattr(deploy, "lmdeploy_version", lambda: None)
    assert "not installed" in deploy.choose_backend("auto")[1]
    with pytest.raises(ValueError, match="choose one of"):
        deploy.choose_backend("vllm")


# ---- chat template and prompts ---------------------------------------------------------------------
def test_read_chat_template(tiny, tmp_path):
    assert "<|im_start|>assistant" in prompts.read_chat_template(tiny)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(ValueError, match="no chat template"):
        prompts.read_chat_template(bare)
    (bare / "chat_template.jinja").write_text("{{ messages }}")
    assert prompts.read_chat_template(bare) == "{{ messages }}"


def test_tokenizer_template_matches_the_models_own_template(pipe, tiny):
    history = [("What colour are the objects on the plate?", "red")]
    for hist in ([], history):
        jinja = prompts.render_prompt(pipe.tokenizer, "How many?", hist)
        assert jinja == prompts.model_prompt(tiny, "How many?", hist)
        assert jinja.count(prompts.IMAGE_PLACEHOLDER) == 1 and jinja.endswith("<|im_start|>assistant\n")
    assert prompts.IMAGE_PLACEHOLDER not in prompts.render_prompt(pipe.tokenizer, "hi", image=False)


def test_split_accepts_both_orders(plate):
    img = Image.open(plate)
    assert deploy._split("hi") == ("hi", None)
    assert deploy._split(("q?", img)) == ("q?", img)
    assert deploy._split((img, "q?")) == ("q?", img)
    assert deploy._split((str(plate), "q?")) == ("q?", str(plate))
    with pytest.raises(TypeError):
        deploy._split(42)


# ---- the transformers backend ----------------------------------------------------------------------
def test_single_batch_and_greedy_determinism(pipe, plate):
    reply = pipe(("What colour?", str(plate)))
    assert isinstance(reply, deploy.Reply) and reply.backend == "transformers" and reply.text.strip()
    assert pipe.ask("What colour?", plate) == reply.text  # greedy: same question, same answer
    replies = pipe([("What colour?", str(plate)), ("What shape?", Image.open(plate)), "Hello"])
    assert len(replies) == 3 and all(isinstance(r.text, str) for r in replies)
    assert len(pipe.batch([("a?", plate), ("b?", plate)])) == 2


def test_tile_batches_cap_the_tiles_of_one_batch_chat_call():
    # 12-tile questions (a checkpoint asked with its own max_dynamic_patch) go one per call; small ones share a call
    assert tiling.tile_batches([12, 12, 12], 16) == [[0], [1], [2]]
    assert tiling.tile_batches([1] * 20, 16) == [list(range(16)), list(range(16, 20))]
    assert tiling.tile_batches([20, 1, 1], 16) == [[0], [1, 2]]   # a question over the budget goes alone, never dropped
    assert tiling.tile_batches([]) == []


def test_batched_answers_equal_one_by_one(pipe, plate, monkeypatch):
    # more questions than one call may carry: the answers come back in order, the same as asked one at a time
    monkeypatch.setattr(tiling, "MAX_BATCH_TILES", 2)
    questions = ["What colour?", "What shape?", "How many?"]
    together = [r.text for r in pipe([(q, str(plate)) for q in questions])]
    assert together == [pipe.ask(q, plate) for q in questions]


def test_session_keeps_context_and_one_image(pipe, plate, tmp_path):
    sess = pipe.chat(("What colour?", str(plate)))
    sess = pipe.chat("How many?", session=sess)
    assert [q for q, _ in sess.history] == ["What colour?", "How many?"]
    assert sess.context_turns() == 2 and sess.context_has_image()
    assert sess.response.text == sess.history[-1][1]
    sess.ask("And the shape?", image=str(plate))  # the same image again is fine
    other = tmp_path / "other.png"
    Image.new("RGB", (64, 64), "white").save(other)
    with pytest.raises(ValueError, match="one image per conversation"):
        sess.ask("And this one?", image=str(other))
    text_only = pipe.session()
    text_only.ask("Hello")
    assert text_only.context_turns() == 1 and not text_only.context_has_image()


def test_pipeline_refuses_a_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        deploy.pipeline(tmp_path, backend="transformers")


def test_finetuned_model_dir_falls_back_with_a_reason(tmp_path, tiny):
    path, why = deploy.finetuned_model_dir(tmp_path, tiny)
    assert path == Path(tiny) and "run notebook 05" in why
    target = tmp_path / "models" / "internvl2-tiny-finetuned"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    assert deploy.finetuned_model_dir(tmp_path, tiny)[0] == target.resolve()
    real = tmp_path / "models" / "InternVL2-2B-finetuned"
    real.mkdir(parents=True)
    (real / "config.json").write_text("{}")
    assert deploy.finetuned_model_dir(tmp_path, tiny, "/data/InternVL2-2B")[0] == real.resolve()


# ---- serving helpers -------------------------------------------------------------------------------
def test_openai_messages_put_the_image_first_as_a_data_url(plate):
    (msg,) = endpoint.openai_messages("What colour?", plate)
    image_part, text_part = msg["content"]
    assert text_part == {"type": "text", "text": "What colour?"}
    header, data = image_part["image_url"]["url"].split(",", 1)
    assert header == "data:image/jpeg;base64"
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (512, 384)
    assert endpoint.openai_messages("hi") == [{"role": "user", "content": "hi"}]


def test_api_server_command_is_local_and_names_the_template(tiny, tmp_path):
    cmd = endpoint.api_server_command(tiny, 23999, model_name="m")
    assert cmd[1:5] == ["-m", "lmdeploy", "serve", "api_server"]
    for flag, value in (("--server-name", "127.0.0.1"), ("--server-port", "23999"), ("--chat-template", "hf"),
                        ("--backend", "pytorch"), ("--model-name", "m")):
        assert cmd[cmd.index(flag) + 1] == value
    assert "--trust-remote-code" in cmd
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match="no chat template"):
        endpoint.api_server_command(tmp_path, 23999)


def test_server_start_health_stop(tmp_path):
    port = demo_app.free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    proc = endpoint.start_server(cmd, tmp_path / "server.log")
    try:
        waited = endpoint.wait_until_healthy(f"http://127.0.0.1:{port}", proc, timeout=60, path="/")
        assert 0 <= waited < 60
    finally:
        endpoint.stop_server(proc, timeout=10)
    assert proc.poll() is not None
    dying = endpoint.start_server([sys.executable, "-c", "print('boom', flush=True); raise SystemExit(3)"],
                                tmp_path / "dying.log")
    with pytest.raises(RuntimeError, match="(?s)exited with code 3.*boom"):
        endpoint.wait_until_healthy("http://127.0.0.1:9", dying, timeout=60, log_path=tmp_path / "dying.log")


def test_wait_until_healthy_takes_a_background_process_id(tmp_path):
    # notebook 06 starts the server with `!... & echo $! > PID`: only the process id comes back
    import os
    import subprocess

    port = demo_app.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert endpoint.wait_until_healthy(f"http://127.0.0.1:{port}", proc.pid, timeout=60, path="/") < 60
    finally:
        proc.kill()
        proc.wait()
    assert not endpoint._alive(proc.pid)
    gone = subprocess.Popen([sys.executable, "-c", "raise SystemExit(2)"])
    gone.wait()
    with pytest.raises(RuntimeError, match="exited with code"):
        endpoint.wait_until_healthy("http://127.0.0.1:9", gone.pid, timeout=30, log_path=None)
    assert os.getpid() and endpoint._alive(os.getpid())


def test_cpu_server_support(tiny, tmp_path):
    ok, reason = endpoint.cpu_server_support(tiny)
    assert not ok and "InternVLChatModel" in reason
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    assert endpoint.cpu_server_support(tmp_path)[0]


# ---- the demo's request handling (no gradio needed) -----------------------------------------------
def test_check_image(plate, tmp_path):
    assert demo_app.check_image(plate) is None
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    message = demo_app.check_image(notes)
    assert "notes.txt" in message and "not an image" in message and "JPG" in message


def test_respond_flow(pipe, plate, tmp_path):
    models = demo_app.DemoModels({"base": pipe, "fine-tuned": pipe})
    gen = deploy.GenSettings(max_new_tokens=3)
    notes = tmp_path / "notes.pdf"
    notes.write_bytes(b"%PDF-1.4 not an image")
    history, state = demo_app.respond({"text": "what is this?", "files": [str(notes)]}, [], "base", {}, models, gen)
    assert "not an image" in history[-1]["content"] and "session" not in state
    history, state = demo_app.respond({"text": "What colour?", "files": [str(plate)]}, history, "base", state,
                                      models, gen)
    assert history[-3]["content"] == {"path": str(plate)} and history[-2]["content"] == "What colour?"
    assert history[-1]["role"] == "assistant" and state["session"].context_turns() == 1
    history, state = demo_app.respond({"text": "How many?", "files": []}, history, "base", state, models, gen)
    assert state["session"].context_turns() == 2
    history, state = demo_app.respond({"text": "How many?", "files": []}, history, "fine-tuned", state, models, gen)
    assert any("switched to the fine-tuned model" in str(m["content"]) for m in history)
    assert state["session"].context_turns() == 1 and state["session"].context_has_image()


def test_course_examples_come_from_the_heldout_split(artifacts):
    examples = demo_app.course_examples(artifacts, n=4)
    assert len(examples) == 4 and len({q for _, q in examples}) == 4
    assert all(Path(img).is_file() and "heldout" in Path(img).name for img, _ in examples)


# ---- LMDeploy's side, in the deploy environment ---------------------------------------------------
DEPLOY_SCRIPT = r"""
import sys
from labsupport.model import prompts
from labsupport.serve import deploy, endpoint
from transformers import AutoTokenizer
model = sys.argv[1]
tok = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
template = deploy.chat_template_config(model).chat_template(trust_remote_code=True)
assert type(template).__name__ == "HFChatTemplate", type(template)
messages = [{"role": "user", "content": prompts.IMAGE_PLACEHOLDER + "What colour?"},
            {"role": "assistant", "content": "red"}, {"role": "user", "content": "How many?"}]
assert template.messages2prompt(messages) == prompts.render_prompt(tok, "How many?", [("What colour?", "red")])
assert prompts.guessed_template("work_dirs/llava-v1.5-7b-finetune") != "hf"
g = deploy.GenSettings(max_new_tokens=7, temperature=0.5, top_p=0.8, seed=3).to_lmdeploy()
assert (g.max_new_tokens, g.do_sample, g.temperature, g.top_p, g.random_seed) == (7, True, 0.5, 0.8, 3)
assert deploy.GenSettings().to_lmdeploy().do_sample is False
assert type(deploy.engine_config(model)).__name__ == "PytorchEngineConfig"
assert type(deploy.engine_config(model, "turbomind")).__name__ == "TurbomindEngineConfig"
assert not endpoint.cpu_server_support(model)[0]
pipe = deploy.pipeline(model, backend="auto", gen=deploy.GenSettings(max_new_tokens=3), max_tiles=1)
assert pipe.backend == "transformers", pipe.reason  # no CUDA on the test machines
assert isinstance(pipe.ask("What colour?", deploy.as_image(sys.argv[2])), str)
from labsupport.serve import lmdeploy_cpu
lmdeploy_cpu.check_engine_config(model, trust_remote_code=True)   # LMDeploy's own config reading passes
try:  # lmdeploy.pipeline's default: the engine check on the GPU stopped with 'dict' ... 'hidden_size'
    lmdeploy_cpu.check_engine_config(model)
    raise SystemExit("LMDeploy read an InternVL2 config without trust_remote_code")
except ValueError as exc:
    assert "trust_remote_code=True" in str(exc) and "hidden_size" in str(exc), exc
print("DEPLOY-OK")
"""


@pytest.mark.deploy
def test_lmdeploy_side_in_deploy_env(tiny, plate):
    python = Path(os.environ.get("LABSUPPORT_DEPLOY_PYTHON", repo_root() / ".venvs/internvl-deploy/bin/python"))
    if not python.exists():
        pytest.skip(f"deploy env python {python} not found (set LABSUPPORT_DEPLOY_PYTHON)")
    env = dict(os.environ, PYTHONPATH=str(repo_root()))
    proc = subprocess.run([str(python), "-c", DEPLOY_SCRIPT, str(tiny), str(plate)], capture_output=True, text=True,
                          timeout=400, env=env)
    assert proc.returncode == 0 and "DEPLOY-OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_remote_llm_generates_reads_the_class_bases(tmp_path, tiny):
    assert deploy.remote_llm_generates(tiny, "5.23.0")[0]  # the course's own InternLM2 inherits GenerationMixin
    official = tmp_path / "official"
    official.mkdir()
    (official / "config.json").write_text(json.dumps({"llm_config": {"architectures": ["InternLM2ForCausalLM"]}}))
    (official / "modeling_internlm2.py").write_text("class InternLM2ForCausalLM(InternLM2PreTrainedModel):\n    pass\n")
    ok, why = deploy.remote_llm_generates(official, "5.23.0")
    assert not ok and "GenerationMixin" in why and "course env" in why
    assert deploy.remote_llm_generates(official, "4.48.0")[0]
    (official / "config.json").write_text(json.dumps({"llm_config": {"architectures": ["Qwen2ForCausalLM"]}}))
    assert deploy.remote_llm_generates(official, "5.23.0")[0]


def test_quiet_hides_what_a_checkpoints_own_code_logs(capsys):
    import logging
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        deploy.quiet()
        warnings.warn("Importing from timm.models.layers is deprecated, please import via timm.layers", FutureWarning)
    assert not seen and "hidden" in capsys.readouterr().out
    assert not logging.getLogger("transformers_modules.InternVL2-1B.modeling_intern_vit").isEnabledFor(logging.WARNING)


def test_accuracy_by_kind_counts_each_kind_apart():
    rows = [{"kind": "colour", "fine-tuned_ok": True}, {"kind": "colour", "fine-tuned_ok": False},
            {"kind": "shape", "fine-tuned_ok": True}]
    assert deploy.accuracy_by_kind(rows, "fine-tuned") == {"colour": 0.5, "shape": 1.0}


def test_the_demo_asks_with_the_system_prompt_it_is_given(monkeypatch):
    """notebook 06 starts the demo with --system (the training system prompt): chat() gets it as model.system_message."""
    from types import SimpleNamespace

    class Backend:
        system = None

        def apply_system(self):
            pass

    made = []
    monkeypatch.setattr(demo_app.deploy, "pipeline", lambda *a, **k: made.append(SimpleNamespace(
        _backend=Backend(), describe=lambda: "fake")) or made[-1])
    models = demo_app.DemoModels({"base": "b", "fine-tuned": "f"}, system="Be brief.")
    assert models.get("fine-tuned")._backend.system == "Be brief."
    plain = demo_app.DemoModels({"base": "b"})
    assert plain.get("base")._backend.system is None  # no --system: each model keeps its own default


def test_course_examples_follow_a_learners_own_split(tmp_path):
    """Own data (no plates meta, images under IMAGE_FOLDER, not beside the split) gives quick-picks, not a KeyError."""
    from PIL import Image
    from labsupport.datasets import learner

    (tmp_path / "pics").mkdir()
    records = []
    for i in range(40):   # 4 of them held out
        Image.new("RGB", (32, 32), (i * 6, 0, 0)).save(tmp_path / "pics" / f"d{i}.png")
        records.append({"id": f"r{i}", "image": f"pics/d{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\nWhat is shown, {i}?"}, {"from": "gpt", "value": str(i)}]})
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    art = tmp_path / "art"
    task = learner.split_own_data(data, artifacts=art)
    learner.write_training_data(art, task, scorer="exact", tiles=1, system=None)
    examples = demo_app.course_examples(art, n=3)
    assert len(examples) == 3 and all(Path(img).is_file() and Path(img).parent == tmp_path / "pics" for img, _ in examples)
    assert all(q.startswith("What is shown") for _, q in examples)
