"""A CPU stand-in with the call shape of LMDeploy's `pipeline`, for machines without a CUDA GPU.

LMDeploy's engines need CUDA (on a CPU `lmdeploy.pipeline()` stops with "PyTorch check failed"). Notebook 06
writes its cells against LMDeploy's own API and, when no GPU is visible, swaps `pipeline` for `cpu_pipeline`:

    from lmdeploy import pipeline, GenerationConfig, PytorchEngineConfig, ChatTemplateConfig
    if not lmdeploy_cpu.lmdeploy_can_run():
        pipeline = lmdeploy_cpu.cpu_pipeline                 # same arguments, same return types
    pipe = pipeline(model_dir, backend_config=PytorchEngineConfig(tp=1), chat_template_config=ChatTemplateConfig(...))
    pipe(messages, gen_config=GenerationConfig(max_new_tokens=16)).text
    pipe.chat(...), pipe.stream_infer(...), pipe([...])      # session, streaming, batch
    lmdeploy_cpu.which(pipe)                                 # says which one ran

Behind the stand-in is the checkpoint's own remote-code `chat()` / `batch_chat()` through transformers
(labsupport.serve.deploy's transformers backend), with the tiles per image each message asks for
(`max_dynamic_patch`, as LMDeploy's InternVL reads it). `serve_openai` answers OpenAI chat completions
on 127.0.0.1 with it, in place of `lmdeploy serve api_server`.
"""
from __future__ import annotations

import base64
import io
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from labsupport.serve.deploy import GenSettings
from labsupport.serve.openai_cpu import serve_openai  # noqa: F401 - notebook 06 calls lmdeploy_cpu.serve_openai
from labsupport.core.envs import venv_python
from labsupport.core.paths import repo_root
from labsupport.model.prompts import read_chat_template
from labsupport.serve import deploy  # deploy.X at call time: tests and notebooks may swap these checks
from labsupport.serve.deploy import _Transformers
from labsupport.serve.awq import awq_config


def lmdeploy_can_run() -> bool:
    """True when LMDeploy's engines can run here (lmdeploy installed and a CUDA GPU visible)."""

    return bool(deploy.lmdeploy_version()) and deploy.cuda_available()


@dataclass
class Response:
    """What LMDeploy's pipeline returns per prompt (the fields the course reads)."""

    text: str
    generate_token_len: int = 0
    finish_reason: str | None = "stop"
    index: int = 0


@dataclass
class Session:
    """A `pipe.chat` conversation: (prompt, answer) pairs and the last response, as in LMDeploy."""

    history: list = field(default_factory=list)
    response: Response | None = None
    _state: dict = field(default_factory=dict, repr=False)


def _image_of(item: dict):
    """The PIL image and its max_dynamic_patch (or None) in one OpenAI/LMDeploy content item."""
    from PIL import Image

    if item.get("type") == "image_data":
        data = item["image_data"]
        return data["data"], data.get("max_dynamic_patch")
    spec = item.get("image_url")
    url, tiles = (spec["url"], spec.get("max_dynamic_patch")) if isinstance(spec, dict) else (spec, None)
    if url.startswith("data:"):
        return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"), tiles
    return url, tiles  # a path (the endpoint hands checked images over as files)


def parse_prompt(prompt) -> tuple[str, Any, int | None]:
    """(question, image or None, max_dynamic_patch or None) from a str, a (text, image) pair or OpenAI-style messages."""
    if isinstance(prompt, str):
        return prompt, None, None
    if isinstance(prompt, tuple) and len(prompt) == 2:
        return prompt[0], prompt[1], None
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        content = prompt[-1]["content"]
        if isinstance(content, str):
            return content, None, None
        text = " ".join(c["text"] for c in content if c.get("type") == "text")
        images = [_image_of(c) for c in content if c.get("type") in ("image_data", "image_url")]
        image, tiles = images[0] if images else (None, None)
        return text, image, tiles
    raise TypeError(f"a prompt is a str, a (text, image) pair or a list of OpenAI-style messages, not {prompt!r:.80}")


def system_of(prompt) -> str | None:
    """The system message of OpenAI-style messages (what LMDeploy 0.18's HFChatTemplate renders), else None."""
    if isinstance(prompt, list):
        for m in prompt:
            if isinstance(m, dict) and m.get("role") == "system":
                content = m.get("content")
                return content if isinstance(content, str) else " ".join(c.get("text", "") for c in content)
    return None


def gen_settings(gen_config) -> "GenSettings":
    """labsupport.serve.deploy.GenSettings from an lmdeploy.GenerationConfig (or None: greedy, 64 tokens)."""

    if gen_config is None:
        return GenSettings()
    if isinstance(gen_config, GenSettings):
        return gen_config
    sampling = bool(getattr(gen_config, "do_sample", False)) and gen_config.temperature > 0
    return GenSettings(max_new_tokens=gen_config.max_new_tokens, temperature=gen_config.temperature if sampling else 0.0,
                       top_p=gen_config.top_p, top_k=gen_config.top_k or 50,
                       repetition_penalty=gen_config.repetition_penalty, seed=gen_config.random_seed)


class _CourseEnvWorker:
    """The model's chat() run by the course env's Python in a child process (JSON lines over stdin/stdout): the one way
    the deploy env answers with remote code it cannot run itself (deploy.remote_llm_generates says when)."""

    def __init__(self, model_path: Path, device: str, tiles: int):
        import subprocess
        import sys


        python = venv_python("internvl-course")
        if not python.exists():
            raise FileNotFoundError(f"{python} is missing: build the course env (make env) to chat with this checkpoint "
                                    "on a CPU, or use a GPU with LMDeploy")
        import os

        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo_root()), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([str(python), "-m", "labsupport.serve.lmdeploy_cpu", str(model_path), device, str(tiles)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env)
        self.max_tiles = tiles
        self.system = None  # the system message of the request being answered (None: the model's own default)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=True)
        del sys

    def _ask(self, **request):
        request["tiles"] = self.max_tiles
        request["system"] = self.system
        self.proc.stdin.write(json.dumps(request, default=str) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the course-env worker stopped: run the same question in notebook 05's kernel to see why")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the course-env worker failed: {reply['error']}")
        self.last_history = reply.get("history")
        return reply["answers"]

    @staticmethod
    def _path(image):
        if image is None or isinstance(image, (str, Path)):
            return None if image is None else str(image)
        import tempfile

        tmp = tempfile.NamedTemporaryFile(suffix=".png", delete=False)
        image.save(tmp.name)
        return tmp.name

    def one(self, question, image, gen):
        return self._ask(queries=[[question, self._path(image)]], gen=gen.__dict__)[0]

    def many(self, queries, gen):
        return self._ask(queries=[[q, self._path(img)] for q, img in queries], gen=gen.__dict__)

    def turn(self, state, question, image, gen):
        """One chat turn; STATE keeps the image and the model-side history the worker returns."""
        if image is not None:
            state["image"] = self._path(image)
        answer = self._ask(queries=[[question, state.get("image")]], history=state.get("history") or [],
                           chat=True, gen=gen.__dict__)[0]
        state["history"] = self.last_history
        return answer

    def close(self):
        """Stop the worker: end of input, then terminate if it lingers."""
        import subprocess

        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def _worker(model_path: str, device: str, tiles: str) -> None:
    """The course-env side of _CourseEnvWorker: answer JSON-line requests with the model's chat()/batch_chat()."""
    import sys


    replies = sys.stdout  # the protocol's channel: one JSON line per request, nothing else
    sys.stdout = sys.stderr  # what the model's code prints (the official InternLM2 prints its attention fallback) goes aside
    model = _Transformers(Path(model_path), device, int(tiles))
    for line in sys.stdin:
        try:
            req = json.loads(line)
            model.max_tiles = int(req.get("tiles") or tiles)
            model.system = req.get("system")
            gen = GenSettings(**req.get("gen", {}))
            queries = [(q, img) for q, img in req["queries"]]
            if req.get("chat"):  # a session turn: the model's own history, returned to the parent
                state = {"history": [tuple(t) for t in req.get("history") or []] or None}
                if state["history"] and queries[0][1]:
                    state["pixels"] = model.pixels(queries[0][1])
                    image = None
                else:
                    image = queries[0][1]
                answer = model.turn(state, queries[0][0], image, gen)
                print(json.dumps({"answers": [answer], "history": [list(t) for t in state["history"]]}), file=replies, flush=True)
                continue
            answers = model.many(queries, gen) if len(queries) > 1 else [model.one(*queries[0], gen)]
            print(json.dumps({"answers": list(answers)}), file=replies, flush=True)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it for the learner
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), file=replies, flush=True)


def check_engine_config(model_path: str | Path, trust_remote_code: bool = False) -> None:
    """Read MODEL_PATH's config as LMDeploy's PyTorch engine checks it before loading; raise ValueError with the fix if it would stop."""
    model_path = Path(model_path)
    try:
        from lmdeploy.hf_configs import config_from_pretrained
        from lmdeploy.pytorch.config import ModelConfig
    except ImportError:  # no lmdeploy here: apply the rule its config check follows (below)
        config_from_pretrained = None
    if config_from_pretrained is None:
        config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
        if config.get("auto_map") and not trust_remote_code:
            raise ValueError(_REMOTE_CODE_FIX.format(path=model_path, why="its config class is remote code"))
        return
    try:  # device_type "cpu": the same reading, without asking for a CUDA driver
        ModelConfig.from_hf_config(config_from_pretrained(str(model_path), trust_remote_code=trust_remote_code),
                                   model_path=str(model_path), dtype="auto", device_type="cpu")
    except Exception as exc:  # LMDeploy's engine logs this and exits; here the learner gets the reason and the fix
        fix = _REMOTE_CODE_FIX if not trust_remote_code else "LMDeploy cannot read {path}/config.json ({why})"
        raise ValueError(fix.format(path=model_path, why=f"{type(exc).__name__}: {exc}")) from exc


_REMOTE_CODE_FIX = ("LMDeploy's engine check cannot read {path}/config.json without the folder's own code ({why}): "
                    "pass trust_remote_code=True to pipeline() (`--trust-remote-code` for lmdeploy serve/chat)")


class CPUPipeline:
    """LMDeploy's pipeline call shape on a CPU: __call__ (one prompt or a batch), chat, stream_infer, close."""

    def __init__(self, model_path: str | Path, backend_config=None, chat_template_config=None, device: str = "cpu",
                 max_dynamic_patch: int | None = None, trust_remote_code: bool = False, **_ignored):

        self.model_path = Path(model_path)
        check_engine_config(self.model_path, trust_remote_code)  # LMDeploy's default is False, as in lmdeploy.pipeline
        config = json.loads((self.model_path / "config.json").read_text(encoding="utf-8"))
        self.default_tiles = int(max_dynamic_patch or config.get("max_dynamic_patch", 12))
        read_chat_template(self.model_path)  # the template LMDeploy would use must exist (raises with the fix)
        self.backend_config, self.chat_template_config = backend_config, chat_template_config
        import transformers

        generates, why = deploy.remote_llm_generates(self.model_path)
        if not generates:  # published InternLM2/Phi-3 code under transformers >= 4.50: the course env answers
            self._model = _CourseEnvWorker(self.model_path, device, self.default_tiles)
            self.ran = f"labsupport.serve.lmdeploy_cpu.cpu_pipeline: no CUDA GPU; {why}: the course env answered, in a subprocess"
        else:
            self._model = _Transformers(self.model_path, device, self.default_tiles)
            self.ran = (f"labsupport.serve.lmdeploy_cpu.cpu_pipeline: no CUDA GPU, so the model's own chat() through "
                        f"transformers {transformers.__version__} on the CPU stood in for lmdeploy.pipeline")

        awq = awq_config(self.model_path)
        if awq:  # the stand-in has no 4-bit kernels: it computes with the weights the packed ones stand for
            self.ran += (f"; its AWQ {awq['bits']}-bit weights (group {awq['group_size']}) were dequantized to "
                         "float (labsupport.serve.awq.load_dequantized)")

    def _one(self, prompt, gen) -> Response:
        question, image, tiles = parse_prompt(prompt)
        self._model.system = system_of(prompt)
        self._model.max_tiles = int(tiles or self.default_tiles)
        text = self._model.one(question, image, gen)
        return Response(text, len(self._model.tokenizer(text, add_special_tokens=False).input_ids))

    def __call__(self, prompts, gen_config=None, **_ignored):
        """One prompt -> Response; a list of prompts -> list of Response (batched through batch_chat when it can)."""
        gen = gen_settings(gen_config)
        if isinstance(prompts, list) and prompts and not isinstance(prompts[0], dict):
            parsed = [parse_prompt(p) for p in prompts]
            tiles = {t for _, _, t in parsed}
            systems = {system_of(p) for p in prompts}
            if len(tiles) == 1 and len(systems) == 1:  # one tiling and system prompt for the batch: one batch_chat call
                self._model.system = systems.pop()
                self._model.max_tiles = int(tiles.pop() or self.default_tiles)
                texts = self._model.many([(q, img) for q, img, _ in parsed], gen)
                return [Response(t, index=i) for i, t in enumerate(texts)]
            return [self._one(p, gen) for p in prompts]
        return self._one(prompts, gen)

    batch_infer = __call__

    def chat(self, prompt, session: Session | None = None, gen_config=None, **_ignored) -> Session:
        """One turn of a multi-turn conversation (the session keeps the image and the earlier turns)."""
        session = session or Session()
        question, image, tiles = parse_prompt(prompt)
        if image is not None:
            self._model.max_tiles = int(tiles or self.default_tiles)
        if not session.history:  # the first turn's system message holds for the session, as in LMDeploy
            session._state["system"] = system_of(prompt)
        self._model.system = session._state.get("system")
        text = self._model.turn(session._state, question, image, gen_settings(gen_config))
        session.history.append((prompt, text))
        session.response = Response(text)
        return session

    def stream_infer(self, prompts, gen_config=None, **_ignored) -> Iterator[Response]:
        """Yield Response pieces as the tokens come (transformers' TextIteratorStreamer behind the model's chat())."""
        from transformers import TextIteratorStreamer

        if isinstance(self._model, _CourseEnvWorker):  # a child process answers whole: one piece, then the end
            yield Response(self(prompts[0] if isinstance(prompts, list) and prompts and not isinstance(prompts[0], dict)
                                else prompts, gen_config).text, finish_reason=None)
            yield Response("", finish_reason="stop")
            return
        question, image, tiles = parse_prompt(prompts[0] if isinstance(prompts, list) and prompts
                                              and not isinstance(prompts[0], dict) else prompts)
        self._model.max_tiles = int(tiles or self.default_tiles)
        self._model.system = system_of(prompts[0] if isinstance(prompts, list) and prompts
                                       and not isinstance(prompts[0], dict) else prompts)
        self._model.apply_system()
        gen = gen_settings(gen_config)
        streamer = TextIteratorStreamer(self._model.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(gen.to_transformers(), streamer=streamer)
        pixels = self._model.pixels(image) if image is not None else None
        worker = threading.Thread(target=self._model.model.chat, args=(self._model.tokenizer, pixels, question, kwargs))
        worker.start()
        for piece in streamer:
            if piece:
                yield Response(piece, finish_reason=None)
        worker.join()
        yield Response("", finish_reason="stop")

    def close(self) -> None:
        """Free the model."""
        self._model.close()


def cpu_pipeline(model_path: str | Path, backend_config=None, chat_template_config=None, **kwargs) -> CPUPipeline:
    """`lmdeploy.pipeline`'s signature on a CPU: the model's own chat() behind LMDeploy's call shape."""
    return CPUPipeline(model_path, backend_config=backend_config, chat_template_config=chat_template_config, **kwargs)


def which(pipe) -> str:
    """One sentence: which pipeline answered (LMDeploy's engine, or the CPU stand-in and why)."""
    if isinstance(pipe, CPUPipeline):
        return pipe.ran
    engine = type(getattr(pipe, "backend_config", None)).__name__
    return f"lmdeploy.pipeline ({engine}) on a CUDA GPU"


def serve_main(argv: list[str]) -> None:
    """`python -m labsupport.serve.lmdeploy_cpu serve MODEL --port N`: the stand-in's own OpenAI-compatible server,
    the CPU counterpart of `lmdeploy serve api_server MODEL --server-port N` (runs until SIGTERM or Ctrl-C)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m labsupport.serve.lmdeploy_cpu serve", description=serve_main.__doc__)
    parser.add_argument("model", help="an InternVL2 checkpoint folder")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--model-name", default="internvl2", help="the id GET /v1/models reports")
    parser.add_argument("--tiles", type=int, default=None, help="max_dynamic_patch when a request names none")
    args = parser.parse_args(argv)
    pipe = cpu_pipeline(args.model, max_dynamic_patch=args.tiles, trust_remote_code=True)
    server = serve_openai(pipe, args.port, model_name=args.model_name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # `kill PID`: shut down cleanly, the worker with it
    print(f"serving {args.model} as {args.model_name!r} on http://127.0.0.1:{args.port}/v1 ({pipe.ran})", flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        pipe.close()


if __name__ == "__main__":  # `serve MODEL --port N` (see serve_main); else the course-env worker: MODEL DEVICE TILES
    import sys as _sys

    if _sys.argv[1:2] == ["serve"]:
        serve_main(_sys.argv[2:])
    else:
        _worker(*_sys.argv[1:4])
