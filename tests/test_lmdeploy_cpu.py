"""Tests of labsupport.serve.lmdeploy_cpu (the CPU stand-in with LMDeploy's call shape) and notebook 06's helpers in deploy."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from labsupport.model import prompts
from labsupport.serve import deploy, endpoint, lmdeploy_cpu
from labsupport.datasets.plates import build_course_task, draw_plate
from labsupport.datasets.formats import load_records
from labsupport.model.tinymodel import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "internvl2-tiny", seed=0)


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> Image.Image:
    return draw_plate("red", "circle", 3, size=(512, 384), seed=1)


def _msg(question, image, tiles=1):
    return [{"role": "user", "content": [{"type": "image_data", "image_data": {"data": image, "max_dynamic_patch": tiles}},
                                         {"type": "text", "text": question}]}]


def test_parse_prompt_reads_every_lmdeploy_prompt_form(plate):
    assert lmdeploy_cpu.parse_prompt("hi") == ("hi", None, None)
    assert lmdeploy_cpu.parse_prompt(("Q?", plate)) == ("Q?", plate, None)
    q, img, tiles = lmdeploy_cpu.parse_prompt(_msg("Colour?", plate, 2))
    assert (q, img, tiles) == ("Colour?", plate, 2)
    q, img, tiles = lmdeploy_cpu.parse_prompt(endpoint.openai_messages("Colour?", plate, 1))
    assert q == "Colour?" and img.size == plate.size and tiles == 1
    with pytest.raises(TypeError):
        lmdeploy_cpu.parse_prompt(42)


def test_the_stand_in_stops_like_lmdeploy_without_trust_remote_code(tiny):
    """lmdeploy.pipeline defaults to trust_remote_code=False, and its engine check then cannot read an InternVL2 config."""
    with pytest.raises(ValueError, match="trust_remote_code=True") as err:
        lmdeploy_cpu.cpu_pipeline(tiny, backend_config=None, chat_template_config=None)
    assert str(tiny) in str(err.value)
    lmdeploy_cpu.check_engine_config(tiny, trust_remote_code=True)


def test_gen_settings_follow_lmdeploys_generation_config():
    greedy = lmdeploy_cpu.gen_settings(SimpleNamespace(max_new_tokens=5, do_sample=False, temperature=0.8, top_p=1.0,
                                                       top_k=0, repetition_penalty=1.0, random_seed=None))
    assert greedy.max_new_tokens == 5 and not greedy.sampling
    sampled = lmdeploy_cpu.gen_settings(SimpleNamespace(max_new_tokens=9, do_sample=True, temperature=0.9, top_p=0.9,
                                                        top_k=40, repetition_penalty=1.0, random_seed=3))
    assert sampled.sampling and sampled.seed == 3 and sampled.top_p == 0.9
    assert lmdeploy_cpu.gen_settings(None).max_new_tokens == 64


def test_the_stand_in_has_lmdeploys_call_shape_and_serves_openai(tiny, plate):
    pipe = lmdeploy_cpu.cpu_pipeline(tiny, backend_config=None, chat_template_config=None, trust_remote_code=True)
    assert "stood in for lmdeploy.pipeline" in lmdeploy_cpu.which(pipe)
    gen = SimpleNamespace(max_new_tokens=4, do_sample=False, temperature=1.0, top_p=1.0, top_k=0,
                          repetition_penalty=1.0, random_seed=None)
    one = pipe(_msg("Colour?", plate), gen_config=gen)
    assert isinstance(one.text, str) and one.text
    many = pipe([_msg("Colour?", plate), _msg("Shape?", plate)], gen_config=gen)
    assert [r.index for r in many] == [0, 1] and many[0].text == one.text  # batching does not change a greedy answer
    sess = pipe.chat(_msg("Colour?", plate), gen_config=gen)
    sess = pipe.chat("How many?", session=sess, gen_config=gen)
    assert len(sess.history) == 2 and sess.response.text
    pieces = list(pipe.stream_infer([_msg("Colour?", plate)], gen_config=gen))
    assert "".join(p.text for p in pieces).strip() == one.text.strip() and pieces[-1].finish_reason == "stop"
    server = lmdeploy_cpu.serve_openai(pipe, 0)
    port = server.server_address[1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models") as resp:
            assert json.load(resp)["data"][0]["id"]
        body = json.dumps({"model": "m", "messages": endpoint.openai_messages("Colour?", plate, 1), "max_tokens": 4}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as resp:
            assert json.load(resp)["choices"][0]["message"]["content"]
    finally:
        server.shutdown()
    assert server.server_address[0] == "127.0.0.1"
    pipe.close()


def test_engines_follow_the_llm_layout(tiny):
    assert deploy.engines_for("Phi3ForCausalLM") == ["pytorch"]
    assert deploy.engines_for("InternLM2ForCausalLM") == ["pytorch", "turbomind"]
    assert deploy.engines_for(deploy.INTERNVL2_LLMS["1B"]) == ["pytorch", "turbomind"]
    assert deploy.llm_layout(tiny) in deploy.INTERNVL2_LLMS.values()


def test_spread_asks_every_kind_and_language(tmp_path):
    task = build_course_task(tmp_path / "plates", n_train=12, n_heldout=24, progress=False)
    picked = deploy.spread(load_records(task["heldout"]), 12)
    assert len(picked) == 12 and len({(r["meta"]["kind"], r["meta"]["lang"]) for r in picked}) == 6
    rows = deploy.side_by_side(picked[:2], ["x", "y"], [picked[0]["meta"]["answer"], "z"])
    assert [r["fine-tuned_ok"] for r in rows] == [True, False] and "✓" in deploy.side_by_side_text(rows)
    assert deploy.task_question("count", "en") == picked[0]["conversations"][0]["value"].replace("<image>\n", "") \
        or deploy.task_question("count", "en").startswith("How many")


def test_trained_task_reads_notebook_05s_record_and_falls_back(tmp_path, tiny):
    heldout, tiles, why = deploy.trained_task(tmp_path, tiny)
    assert heldout.is_file() and tiles == json.loads((tiny / "config.json").read_text())["max_dynamic_patch"]
    assert "run notebooks 04-05" in why
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "before_after.json").write_text(json.dumps(
        {"training": {"heldout": str(heldout), "max_dynamic_patch": 1}}))
    assert deploy.trained_task(tmp_path, tiny)[:2] == (heldout, 1)


def test_remote_code_for_old_transformers_is_answered_by_the_course_env(tiny, plate, tmp_path, monkeypatch):
    import transformers

    old = tmp_path / "old-code"
    old.mkdir()
    (old / "config.json").write_text((tiny / "config.json").read_text())
    (old / "modeling_internlm2.py").write_text("class InternLM2ForCausalLM(PreTrainedModel): ...\n")
    monkeypatch.setattr(transformers, "__version__", "5.23.0")
    generates, why = deploy.remote_llm_generates(old)   # the one test the CPU pipeline asks
    assert not generates and "course env" in why
    assert deploy.remote_llm_generates(tiny)[0]         # the course's own code inherits GenerationMixin
    monkeypatch.setattr(deploy, "remote_llm_generates", lambda path: (False, "forced for the test"))
    pipe = lmdeploy_cpu.cpu_pipeline(tiny, trust_remote_code=True)
    gen = deploy.GenSettings(max_new_tokens=4)
    try:
        assert "forced for the test" in lmdeploy_cpu.which(pipe)
        one = pipe(_msg("Colour?", plate), gen_config=gen).text
        assert one and [r.text for r in pipe([_msg("Colour?", plate)] * 2, gen_config=gen)] == [one, one]
        sess = pipe.chat(_msg("Colour?", plate), gen_config=gen)
        assert pipe.chat("How many?", session=sess, gen_config=gen).response.text
        assert "".join(r.text for r in pipe.stream_infer([_msg("Colour?", plate)], gen_config=gen)) == one
    finally:
        pipe.close()


def test_show_prompts_lays_the_three_prompts_side_by_side(tiny):
    table = prompts.show_prompts(tiny, "What colour are the objects on the plate? Answer with one colour.").data
    assert "XTuner" in table and "LMDeploy" in table


def test_the_course_env_worker_answers_official_code_that_prints_to_stdout(plate, monkeypatch):
    """The published InternLM2 code prints its attention fallback on import: the worker's replies must stay parseable."""
    import transformers

    from labsupport.model import official

    two_b = official.available().get("2B")
    if two_b is None:
        pytest.skip("no official-format InternVL2-2B folder: build it with `python -m labsupport.model.official 2B`")
    monkeypatch.setattr(transformers, "__version__", "5.23.0")  # what the deploy env has: the worker answers
    pipe = lmdeploy_cpu.cpu_pipeline(two_b, trust_remote_code=True)
    try:
        assert "course env" in lmdeploy_cpu.which(pipe)
        assert isinstance(pipe(_msg("Colour?", plate), gen_config=deploy.GenSettings(max_new_tokens=3)).text, str)
    finally:
        pipe.close()


def test_the_stand_in_has_its_own_server_command(tiny, plate, tmp_path):
    # `python -m labsupport.serve.lmdeploy_cpu serve MODEL --port N`: notebook 06's CPU counterpart of `lmdeploy serve api_server`
    import os
    import subprocess
    import sys

    from labsupport.core.paths import repo_root
    from labsupport.serve import demo_app

    port = demo_app.free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo_root()), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "labsupport.serve.lmdeploy_cpu", "serve", str(tiny), "--port", str(port),
                             "--model-name", "tiny-served", "--tiles", "1"], stdout=open(tmp_path / "log", "w"),
                            stderr=subprocess.STDOUT, env=env)
    try:
        endpoint.wait_until_healthy(f"http://127.0.0.1:{port}", proc.pid, timeout=300, log_path=tmp_path / "log")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30) as resp:
            assert json.loads(resp.read())["data"][0]["id"] == "tiny-served"
        body = json.dumps({"messages": endpoint.openai_messages("What colour?", plate, 1), "max_tokens": 4}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            assert isinstance(json.loads(resp.read())["choices"][0]["message"]["content"], str)
    finally:
        proc.terminate()   # `kill PID`: the server shuts down cleanly
        assert proc.wait(timeout=60) == 0


def test_the_stand_in_serves_the_system_message_it_is_sent(tiny, plate):
    """LMDeploy 0.18 renders a request's system message (its hf template ignores meta_instruction); so does the stand-in."""
    pipe = lmdeploy_cpu.cpu_pipeline(tiny, trust_remote_code=True)
    model = pipe._model.model
    default = model.system_message
    seen = []
    real_chat = model.chat

    def chat(*args, **kwargs):
        seen.append(model.system_message)
        return real_chat(*args, **kwargs)

    model.chat = chat
    gen = SimpleNamespace(max_new_tokens=2, do_sample=False, temperature=1.0, top_p=1.0, top_k=0,
                          repetition_penalty=1.0, random_seed=None)
    system = [{"role": "system", "content": "Answer in one word."}]
    pipe(system + _msg("Colour?", plate), gen_config=gen)
    pipe(_msg("Colour?", plate), gen_config=gen)   # no system message: the model's own default again
    sess = pipe.chat(system + _msg("Colour?", plate), gen_config=gen)
    pipe.chat("How many?", session=sess, gen_config=gen)   # the session keeps its first turn's system message
    assert seen == ["Answer in one word.", default, "Answer in one word.", "Answer in one word."], seen
    assert lmdeploy_cpu.system_of(system + _msg("q", plate)) == "Answer in one word."
    assert lmdeploy_cpu.system_of(_msg("q", plate)) is None and lmdeploy_cpu.system_of("q") is None
    pipe.close()
