"""Deploy an InternVL2 checkpoint: one small chat interface shaped like LMDeploy's pipeline API.

    pipe = deploy.pipeline(model_dir, backend="auto")        # LMDeploy on a CUDA GPU, else transformers
    pipe(("What colour are the objects?", "plate.jpg")).text  # one query with an image
    pipe([("Colour?", img1), ("Shape?", img2)])               # a batch -> list of replies
    sess = pipe.chat(("What colour?", img))                   # a multi-turn session ...
    sess = pipe.chat("And how many are there?", session=sess) # ... that remembers the image and the answers
    sess.response.text, sess.history

Backends:
- "lmdeploy": `lmdeploy.pipeline` (PyTorch engine by default; TurboMind when asked and built). It needs CUDA.
- "transformers": the checkpoint's own remote-code `chat()` / `batch_chat()`; runs on a CPU.
- "auto": LMDeploy when CUDA and lmdeploy are there, else transformers; `pipe.reason` says why.

The chat template always comes from the checkpoint's tokenizer and is handed to LMDeploy explicitly
(`ChatTemplateConfig(model_name="hf", model_path=...)`), so it is never guessed from the folder name
(the cause of fine-tuned models that never stop, lmdeploy#2150, #1495, #2120).

Scripts that start a pipeline need an `if __name__ == "__main__":` guard (LMDeploy may spawn processes).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from labsupport.model.prompts import read_chat_template
from labsupport.model.prompts import render_prompt
from labsupport.core.paths import finetuned_dir, pick_device
from labsupport.core.tiling import load_image, open_image, tile_batches
from labsupport.datasets.plates import QUESTIONS, answer_matches, build_course_task
from labsupport.model.tinymodel import resolve_model
from labsupport.train.training_outcome import skipped_training
from labsupport.serve import awq

BACKENDS = ("auto", "lmdeploy", "transformers")
ENGINES = ("pytorch", "turbomind", "auto")

# ---- the artifacts this notebook reads: the ONE place to change their paths ------------------------
# the fine-tuned model: ARTIFACTS/models/<model name>-finetuned, written by notebook 05 (labsupport.core.paths.finetuned_dir)
COURSE_TASK = "data/plates"                           # under ARTIFACTS, built by labsupport.datasets


def base_model_dir(model_path: str = "tiny", artifacts: str | os.PathLike | None = None) -> Path:
    """The base model folder for MODEL_PATH ("tiny" builds the miniature model under ARTIFACTS; else a checkpoint folder)."""

    return Path(resolve_model(model_path, artifacts))


def finetuned_model_dir(artifacts: str | os.PathLike, base: str | os.PathLike,
                        model_path: str = "tiny") -> tuple[Path, str]:
    """Notebook 05's converted fine-tune of MODEL_PATH, or BASE when it is missing or notebook 04 skipped training, with a
    sentence saying which and why."""


    candidate = finetuned_dir(artifacts, model_path)
    skipped = skipped_training(artifacts, model_path)
    if skipped:  # 04's last run for this model trained nothing: an older folder would not be this run's
        return Path(base), (f"notebook 04 did not train this model ({skipped}); the base model {base} answers in "
                            "both columns, so nothing fine-tuned is compared here")
    if (candidate / "config.json").is_file():
        return candidate.resolve(), f"fine-tuned model from notebook 05: {candidate}"
    return Path(base), (f"no fine-tuned model at {candidate} (run notebook 05 first); "
                        f"using the base model {base} in its place, so both columns will agree")


def trained_task(artifacts: str | os.PathLike, base: str | os.PathLike) -> tuple[Path, int, str]:
    """(held-out json, tiles per image, why) of the task notebook 04 trained on, as notebook 05 recorded it.

    Without notebook 05's record: the course task's default build and the base model's own max_dynamic_patch.
    """
    record = Path(artifacts) / "results" / "before_after.json"
    if record.is_file():
        data = json.loads(record.read_text(encoding="utf-8"))
        training = data.get("training") or {}
        heldout = training.get("heldout") or data.get("heldout")
        if heldout and Path(heldout).is_file() and training.get("max_dynamic_patch"):
            return Path(heldout), int(training["max_dynamic_patch"]), f"the held-out split and tiling of the run in {record}"

    paths = build_course_task(Path(artifacts) / COURSE_TASK, progress=False)
    tiles = int(json.loads((Path(base) / "config.json").read_text(encoding="utf-8")).get("max_dynamic_patch", 12))
    return paths["heldout"], tiles, f"no {record} (run notebooks 04-05 first): the default course task, the model's own tiling"


# ---- generation settings -------------------------------------------------------------------------
@dataclass
class GenSettings:
    """Generation settings shared by both backends (temperature 0 = greedy, the same answer every time)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature={self.temperature} is outside [0, 2]: 0 is greedy, 0.7 is usual for chat")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]: 1.0 keeps every token, 0.9 the likeliest 90 %")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be at least 1")

    @property
    def sampling(self) -> bool:
        """True when tokens are sampled (temperature > 0) instead of picked greedily."""
        return self.temperature > 0

    def to_transformers(self) -> dict:
        """The `generation_config` dict the model's chat()/batch_chat() pass to `generate`."""
        cfg: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.sampling,
                               "repetition_penalty": self.repetition_penalty}
        if self.sampling:
            cfg.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:  # transformers warns when sampling knobs are set for greedy decoding
            cfg.update(temperature=None, top_p=None, top_k=None)
        return cfg

    def to_lmdeploy(self) -> "lmdeploy.GenerationConfig":
        """The same settings as an `lmdeploy.GenerationConfig`."""
        from lmdeploy import GenerationConfig

        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=self.sampling,
                                temperature=self.temperature if self.sampling else 1.0, top_p=self.top_p,
                                top_k=self.top_k, repetition_penalty=self.repetition_penalty,
                                random_seed=self.seed)


@dataclass
class Reply:
    """One answer: its text, how long it took, and which backend produced it (`.text` as in LMDeploy's Response)."""

    text: str
    seconds: float
    backend: str


# ---- choosing a backend --------------------------------------------------------------------------
def cuda_available() -> bool:
    """True when torch sees a CUDA GPU."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def lmdeploy_version() -> str | None:
    """The installed lmdeploy version, or None (found without importing it: the import takes seconds)."""
    from importlib import metadata

    try:
        return metadata.version("lmdeploy")
    except metadata.PackageNotFoundError:
        return None


def choose_backend(backend: str = "auto") -> tuple[str, str]:
    """Resolve BACKEND to "lmdeploy" or "transformers" and say why; raises when "lmdeploy" cannot run here."""
    if backend not in BACKENDS:
        raise ValueError(f"BACKEND={backend!r}: choose one of {BACKENDS}")
    version, cuda = lmdeploy_version(), cuda_available()
    if backend == "transformers":
        return "transformers", "BACKEND='transformers' asked for the model's own chat() through transformers"
    if version and cuda:
        return "lmdeploy", f"lmdeploy {version} is installed and a CUDA GPU is visible"
    missing = "no CUDA GPU is visible" if not cuda else "lmdeploy is not installed in this environment"
    if backend == "lmdeploy":
        raise RuntimeError(f"BACKEND='lmdeploy' cannot run here: {missing}. LMDeploy's engines need an NVIDIA GPU; "
                           "use BACKEND='auto' or 'transformers' on this machine (the kernel internvl-deploy "
                           "has lmdeploy 0.18 installed).")
    return "transformers", f"{missing}, and LMDeploy's engines need one: falling back to the model's own chat()"


def chat_template_config(model_dir: str | os.PathLike) -> "lmdeploy.ChatTemplateConfig":
    """LMDeploy's ChatTemplateConfig that uses the checkpoint's own tokenizer template ("hf"), never a name guess."""
    from lmdeploy import ChatTemplateConfig

    read_chat_template(model_dir)  # fail early, with the fix, when the tokenizer has no template
    return ChatTemplateConfig(model_name="hf", model_path=str(model_dir))


def engine_config(model_dir: str | os.PathLike, engine: str = "pytorch", cache_max_entry_count: float = 0.4,
                  session_len: int | None = None) -> "lmdeploy.PytorchEngineConfig | lmdeploy.TurbomindEngineConfig":
    """LMDeploy's engine config: PytorchEngineConfig, or TurbomindEngineConfig ("auto": TurboMind when it supports the model)."""
    from lmdeploy import PytorchEngineConfig, TurbomindEngineConfig

    if engine not in ENGINES:
        raise ValueError(f"ENGINE={engine!r}: choose one of {ENGINES}")
    if engine == "auto":
        from lmdeploy.archs import autoget_backend

        engine = autoget_backend(str(model_dir), trust_remote_code=True)
    cls = TurbomindEngineConfig if engine == "turbomind" else PytorchEngineConfig
    return cls(tp=1, session_len=session_len, cache_max_entry_count=cache_max_entry_count)


# ---- images --------------------------------------------------------------------------------------
def as_image(image) -> "PIL.Image.Image":
    """A PIL RGB image from a PIL image or a path (raises a learner-readable error for non-images)."""

    return open_image(image)


def _split(query) -> tuple[str, Any]:
    """(question, image or None) from a str or a (question, image) / (image, question) pair."""
    if isinstance(query, str):
        return query, None
    if isinstance(query, tuple) and len(query) == 2:
        a, b = query
        return (a, b) if isinstance(a, str) and not _looks_like_image_path(a) else (b, a)
    raise TypeError(f"a query is a str or a (question, image) pair, not {type(query).__name__}: {query!r:.80}")


def _same_image(a, b) -> bool:
    """True when A and B are the same object or the same file path."""
    if a is b:
        return True
    if isinstance(a, (str, os.PathLike)) and isinstance(b, (str, os.PathLike)):
        return Path(a).resolve() == Path(b).resolve()
    return False


def _looks_like_image_path(text: str) -> bool:
    """True when TEXT is the path of an existing file with an image suffix."""
    return Path(text).suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"} and Path(text).exists()


# ---- backends ------------------------------------------------------------------------------------
class _Transformers:
    """The checkpoint's remote-code chat()/batch_chat() through transformers."""

    name = "transformers"

    def __init__(self, model_dir: Path, device: str, max_tiles: int):
        import torch
        import transformers
        from transformers import AutoModel, AutoTokenizer

        self.device = device
        self.dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
        dtype_arg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"  # renamed in 5.0

        if awq.is_awq(model_dir):  # transformers would load AWQ's packed tensors as nothing: dequantize them
            self.model = awq.load_dequantized(model_dir, self.dtype)
        else:
            self.model = AutoModel.from_pretrained(model_dir, trust_remote_code=True, **{dtype_arg: self.dtype})
        self.model = self.model.eval().to(device)
        self.max_tiles = max_tiles
        self.default_system = getattr(self.model, "system_message", None)  # conversation.py's, as chat() uses it
        self.system = None  # a request's system message; None keeps default_system

    def apply_system(self) -> None:
        """Set the model's system_message (what chat() and batch_chat() put first) to SYSTEM, or back to its default."""
        if self.default_system is not None or self.system is not None:
            self.model.system_message = self.default_system if self.system is None else self.system

    def pixels(self, image) -> "torch.Tensor":
        """IMAGE tiled and normalised as InternVL2's chat does, on the model's device and dtype."""

        return load_image(as_image(image), max_num=self.max_tiles).to(self.device, self.dtype)

    def _seed(self, gen: GenSettings) -> None:
        if gen.seed is not None:
            import torch

            torch.manual_seed(gen.seed)

    def one(self, question: str, image, gen: GenSettings) -> str:
        """One answer through the model's chat()."""
        self._seed(gen)
        self.apply_system()
        pv = self.pixels(image) if image is not None else None
        return self.model.chat(self.tokenizer, pv, question, gen.to_transformers())

    def many(self, queries: list[tuple[str, Any]], gen: GenSettings) -> list[str]:
        """Answers through batch_chat() when every query has an image, else one chat() each."""
        if not queries or any(img is None for _, img in queries):  # batch_chat expects an image per question
            return [self.one(q, img, gen) for q, img in queries]
        import torch

        self._seed(gen)
        self.apply_system()
        pvs = [self.pixels(img) for _, img in queries]
        answers = []
        for group in tile_batches([len(p) for p in pvs]):   # a few questions per call: see tiling.MAX_BATCH_TILES
            answers += self.model.batch_chat(self.tokenizer, torch.cat([pvs[i] for i in group]), [queries[i][0] for i in group],
                                             gen.to_transformers(), num_patches_list=[len(pvs[i]) for i in group])
        return answers

    def turn(self, state: dict, question: str, image, gen: GenSettings) -> str:
        """One chat turn; STATE keeps the model-side history and the image's pixels."""
        self._seed(gen)
        self.apply_system()
        if image is not None:
            state["pixels"] = self.pixels(image)
            if state.get("history"):  # an image arriving after text-only turns: say where it goes
                question = "<image>\n" + question
        answer, state["history"] = self.model.chat(self.tokenizer, state.get("pixels"), question,
                                                   gen.to_transformers(), history=state.get("history") or None,
                                                   return_history=True)
        return answer

    def close(self) -> None:
        """Drop the model."""
        self.model = None


class _LMDeploy:
    """LMDeploy's pipeline with the checkpoint's chat template passed explicitly."""

    name = "lmdeploy"

    def __init__(self, model_dir: Path, engine: str, cache_max_entry_count: float, session_len: int | None,
                 max_tiles: int):
        from lmdeploy import pipeline

        self.max_tiles = max_tiles
        self.backend_config = engine_config(model_dir, engine, cache_max_entry_count, session_len)
        self.template = chat_template_config(model_dir)
        self.pipe = pipeline(str(model_dir), backend_config=self.backend_config,
                             chat_template_config=self.template, trust_remote_code=True, log_level="ERROR")
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)

    def message(self, question: str, image) -> list[dict]:
        """An OpenAI-style user message, image FIRST so the prompt reads like the training data ("<img>...</img>\\nQ")."""
        if image is None:
            return [{"role": "user", "content": question}]
        picture = {"data": as_image(image), "max_dynamic_patch": self.max_tiles}  # LMDeploy's InternVL reads this
        return [{"role": "user", "content": [{"type": "image_data", "image_data": picture},
                                             {"type": "text", "text": question}]}]

    def one(self, question: str, image, gen: GenSettings) -> str:
        """One answer through the pipeline."""
        return self.pipe(self.message(question, image), gen_config=gen.to_lmdeploy()).text

    def many(self, queries: list[tuple[str, Any]], gen: GenSettings) -> list[str]:
        """Answers to a batch in one pipeline call (LMDeploy schedules them together)."""
        replies = self.pipe([self.message(q, img) for q, img in queries], gen_config=gen.to_lmdeploy())
        return [r.text for r in replies]

    def turn(self, state: dict, question: str, image, gen: GenSettings) -> str:
        """One chat turn through pipe.chat; STATE keeps LMDeploy's Session."""
        prompt = self.message(question, image) if image is not None else question
        state["session"] = self.pipe.chat(prompt, session=state.get("session"), gen_config=gen.to_lmdeploy())
        return state["session"].response.text

    def close(self) -> None:
        """Stop the engine and its event-loop thread."""
        self.pipe.close()


# ---- the public interface ------------------------------------------------------------------------
@dataclass
class Session:
    """A multi-turn conversation about (at most) one image; `history` holds (question, answer) pairs."""

    pipe: "ChatPipeline"
    image: Any = None
    history: list[tuple[str, str]] = field(default_factory=list)
    response: Reply | None = None
    _state: dict = field(default_factory=dict, repr=False)

    def ask(self, question: str, image=None, gen: GenSettings | None = None) -> str:
        """Ask QUESTION (with IMAGE on the turn that introduces it); returns the answer and remembers both."""
        if image is not None and self.image is not None and not _same_image(image, self.image):
            raise ValueError("this session already has an image; InternVL2's chat keeps one image per conversation: "
                             "start a new one with pipe.session() (the demo does so when you upload a new image)")
        new_image = image if image is not None and self.image is None else None
        start = time.time()
        text = self.pipe._backend.turn(self._state, question, new_image, gen or self.pipe.gen)
        if new_image is not None:
            self.image = new_image
        self.history.append((question, text))
        self.response = Reply(text, round(time.time() - start, 3), self.pipe.backend)
        return text

    def context_turns(self) -> int:
        """How many turns the backend itself holds for this conversation (what the next answer is conditioned on)."""
        if "session" in self._state:  # LMDeploy's Session keeps (prompt, answer) pairs
            return len(self._state["session"].history)
        return len(self._state.get("history") or [])

    def context_has_image(self) -> bool:
        """True when the backend's copy of the conversation carries the image (pixels or an image message)."""
        if "session" in self._state:
            return any(isinstance(p, list) and "image_data" in json.dumps(p, default=str)
                       for p, _ in self._state["session"].history)
        return self._state.get("pixels") is not None and any("<image>" in q for q, _ in self._state.get("history") or [])


class ChatPipeline:
    """A chat interface to one checkpoint with the shape of LMDeploy's pipeline (see the module docstring)."""

    def __init__(self, model_dir: str | os.PathLike, backend: str = "auto", gen: GenSettings | None = None,
                 device: str = "auto", engine: str = "pytorch", name: str = "", max_tiles: int | None = None,
                 cache_max_entry_count: float = 0.4, session_len: int | None = None):
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.model_dir} has no config.json: point it at a checkpoint folder in the "
                                    "official InternVL2 format (the one notebook 05 writes, or a downloaded model)")
        self.name = name or self.model_dir.name
        self.backend, self.reason = choose_backend(backend)
        self.gen = gen or GenSettings()
        config = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
        self.max_tiles = max_tiles or int(config.get("max_dynamic_patch", 12))  # what LMDeploy uses too
        start = time.time()
        if self.backend == "lmdeploy":
            self._backend: Any = _LMDeploy(self.model_dir, engine, cache_max_entry_count, session_len, self.max_tiles)
        else:
            pass

            self._backend = _Transformers(self.model_dir, pick_device(device), self.max_tiles)
        self.load_seconds = round(time.time() - start, 2)

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer (its chat template is the one every backend uses)."""
        return self._backend.tokenizer

    def __call__(self, prompts, gen: GenSettings | None = None):
        """Like `lmdeploy.pipeline(...)(prompts)`: a str or (question, image) -> Reply; a list of them -> list of Reply."""
        gen = gen or self.gen
        start = time.time()
        if isinstance(prompts, list):
            queries = [_split(p) for p in prompts]
            texts = self._backend.many(queries, gen) if queries else []
            each = round((time.time() - start) / max(len(texts), 1), 3)
            return [Reply(t, each, self.backend) for t in texts]
        question, image = _split(prompts)
        text = self._backend.one(question, image, gen)
        return Reply(text, round(time.time() - start, 3), self.backend)

    def ask(self, question: str, image=None, gen: GenSettings | None = None) -> str:
        """One question (about IMAGE, a path or PIL image, if given) -> the answer text."""
        return self((question, image) if image is not None else question, gen).text

    def batch(self, queries: Sequence, gen: GenSettings | None = None) -> list[str]:
        """Answers to a list of str / (question, image) queries, in one batched call where the backend can."""
        return [r.text for r in self(list(queries), gen)]

    def session(self) -> Session:
        """A new, empty multi-turn session."""
        return Session(self)

    def chat(self, prompt, session: Session | None = None, gen: GenSettings | None = None) -> Session:
        """Like `lmdeploy` `pipe.chat`: one turn (a str or (question, image)) in SESSION (a new one if None); returns it."""
        session = session or self.session()
        question, image = _split(prompt)
        session.ask(question, image, gen)
        return session

    def prompt_for(self, question: str, history: Sequence[tuple[str, str]] = (), image: bool = True) -> str:
        """The prompt the checkpoint's chat template renders (what LMDeploy feeds its engine, before image tokens)."""
        return render_prompt(self.tokenizer, question, history, image)

    def describe(self) -> str:
        """One line: model, backend and why."""
        return f"{self.name}: backend {self.backend} ({self.reason}); loaded in {self.load_seconds:.1f} s"

    def close(self) -> None:
        """Free the model (LMDeploy: stop its engine and event-loop thread)."""
        self._backend.close()

    def __enter__(self) -> "ChatPipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pipeline(model_dir: str | os.PathLike, backend: str = "auto", **kwargs) -> ChatPipeline:
    """Open MODEL_DIR for chat with BACKEND ("auto" | "lmdeploy" | "transformers"); see ChatPipeline for options."""
    return ChatPipeline(model_dir, backend=backend, **kwargs)


# ---- what notebook 06 shows -----------------------------------------------------------------------------------
# The LLM inside each InternVL2 size (config.json llm_config.architectures[0]).
INTERNVL2_LLMS = {"1B": "Qwen2ForCausalLM", "2B": "InternLM2ForCausalLM", "4B": "Phi3ForCausalLM",
                  "8B": "InternLM2ForCausalLM", "26B": "InternLM2ForCausalLM"}
# TurboMind implements these LLMs for InternVL2 (not Phi-3); the PyTorch engine serves every one.
TURBOMIND_LLMS = {"InternLM2ForCausalLM", "Qwen2ForCausalLM"}


def llm_layout(model_dir: str | os.PathLike) -> str:
    """The LLM class a checkpoint's config.json names (llm_config.architectures[0])."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return (cfg.get("llm_config", {}).get("architectures") or ["?"])[0]


def engines_for(layout: str) -> list[str]:
    """LMDeploy engines that serve an InternVL2 whose LLM is LAYOUT."""
    return ["pytorch"] + (["turbomind"] if layout in TURBOMIND_LLMS else [])


def task_question(kind: str, lang: str) -> str:
    """The course task's question for KIND in LANG, exactly as the model was trained on it."""

    return QUESTIONS[(kind, lang)]


def spread(records: Sequence[dict], n: int) -> list[dict]:
    """N records taken in turn from each (kind, language) group, so every question the model was trained on is asked."""
    groups: dict[tuple, list[dict]] = {}
    for rec in records:  # the learner's own records have no meta: one group
        meta = rec.get("meta") or {}
        groups.setdefault((meta.get("kind", "all"), meta.get("lang") or ""), []).append(rec)
    out, i = [], 0
    while len(out) < min(n, len(records)):
        for key in sorted(groups):
            if i < len(groups[key]) and len(out) < n:
                out.append(groups[key][i])
        i += 1
    return out


def accuracy_by_kind(rows: list[dict], column: str) -> dict[str, float]:
    """{question kind: share of side_by_side ROWS that COLUMN ("base" or "fine-tuned") answered correctly}."""
    kinds = sorted({r["kind"] for r in rows})
    return {k: sum(r[f"{column}_ok"] for r in rows if r["kind"] == k) / sum(r["kind"] == k for r in rows) for k in kinds}


def side_by_side(records: Sequence[dict], base: Sequence[str], tuned: Sequence[str]) -> list[dict]:
    """One row per record: question, reference, both answers and whether each is right."""

    return [{"id": r.get("id"), "kind": r["meta"]["kind"],
             "question": r["conversations"][0]["value"].replace("<image>", "").strip(),
             "reference": r["meta"]["answer"], "base": b, "fine-tuned": f,
             "base_ok": bool(answer_matches(b, r["meta"])), "fine-tuned_ok": bool(answer_matches(f, r["meta"]))}
            for r, b, f in zip(records, base, tuned)]


def side_by_side_text(rows: Sequence[dict]) -> str:
    """ROWS as a fixed-width table (question, reference, base, fine-tuned, ✓/✗)."""
    lines = [f"{'question':<46} {'reference':<9} {'base':<18} fine-tuned"]
    for r in rows:
        lines.append(f"{r['question'][:45]:<46} {r['reference']:<9} {r['base'][:16]!r:<18} {r['fine-tuned'][:20]!r} "
                     f"{'✓' if r['fine-tuned_ok'] else '✗'}")
    return "\n".join(lines)


def quiet() -> None:
    """Hide progress bars and library warnings a learner cannot act on in a notebook (says so once)."""
    import logging
    import warnings

    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass  # transformers is optional for the helpers that do not load models
    for pattern in (r".*torch_dtype.*deprecated.*", r".*generation flags are not valid.*", r".*TypedStorage.*",
                    r".*`do_sample` is set to `False`.*", r".*Setting `pad_token_id`.*", r".*`rope_scaling` is deprecated.*",
                    r".*Importing from timm.models.layers is deprecated.*"):
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lmdeploy").setLevel(logging.ERROR)
    logging.getLogger("transformers_modules").setLevel(logging.ERROR)  # a checkpoint's own code (flash-attn missing ...)
    print("note: progress bars and warnings from inside the libraries that you cannot act on are hidden")

def remote_llm_generates(model_dir: str | os.PathLike, transformers_version: str | None = None) -> tuple[bool, str]:
    """Whether the checkpoint's remote-code LLM can generate() under TRANSFORMERS_VERSION (default: this env's), and why.

    transformers >= 4.50 gives generate() only to classes that inherit GenerationMixin; the published InternLM2 and
    Phi-3 files of InternVL2-2B/4B/8B inherit PreTrainedModel alone, so their chat() fails there ("object has no
    attribute 'generate'"), while transformers 4.48 (the course env) still runs them. LLMs built into transformers
    (InternVL2-1B's Qwen2) and the course's own InternLM2 generate everywhere.
    """
    import re

    from packaging.version import Version

    if transformers_version is None:
        import transformers

        transformers_version = transformers.__version__
    model_dir = Path(model_dir)
    llm = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("llm_config", {})
    arch = (llm.get("architectures") or ["?"])[0]
    module = {"InternLM2ForCausalLM": "modeling_internlm2.py", "Phi3ForCausalLM": "modeling_phi3.py"}.get(arch)
    source = model_dir / module if module else None
    if source is None or not source.is_file():
        return True, f"{arch} comes from transformers itself (or the course's own code): generate() works"
    match = re.search(rf"^class {arch}\(([^)]*)\)", source.read_text(encoding="utf-8"), flags=re.M)
    bases = match.group(1) if match else ""
    if "GenerationMixin" in bases or Version(transformers_version) < Version("4.50"):
        return True, f"{source.name}'s {arch}({bases}) can generate() under transformers {transformers_version}"
    return False, (f"{source.name}'s {arch}({bases}) does not inherit GenerationMixin, which transformers >= 4.50 needs "
                   f"for generate() (this env has {transformers_version}): run chat() in the course env "
                   "(transformers 4.48), or serve with LMDeploy on a GPU")
