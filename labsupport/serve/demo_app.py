"""A gradio chat demo for the course models: upload an image, ask about it, switch base / fine-tuned.

    python -m labsupport.serve.demo_app                       # base = tiny, fine-tuned = notebook 05's model if any
    python -m labsupport.serve.demo_app --base ./InternVL2-2B --finetuned ./my-finetune --port 7860

It listens on 127.0.0.1 only (pass --host 0.0.0.0 to share it on your network, knowingly), limits
uploads to --max-file-size, answers a non-image upload, a decompression bomb, an image over MAX_PIXELS
or a question over MAX_PROMPT_CHARS with a message instead of an error, downscales large images, and
offers quick-pick examples from the course task. The model answers through labsupport.serve.deploy
(LMDeploy on a CUDA GPU, else the model's own chat()).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path
from typing import Any

from labsupport.serve import deploy
from labsupport.core.paths import artifacts_dir
from labsupport.datasets.formats import load_records
from labsupport.datasets.learner import read_training_data

MODEL_CHOICES = ("base", "fine-tuned")
IMAGE_HELP = "Please upload a picture (JPG, PNG or WebP)."
MAX_PIXELS = 40_000_000   # larger uploads are refused before decoding (a 150 MP PNG would take ~0.5 GB to decode)
MAX_SIDE = 2048           # larger images are downscaled first: 6 tiles of 448 px never need more
MAX_PROMPT_CHARS = 2000   # a longer question is refused: it would hold the single queue for everyone
MAX_BODY_BYTES = 1024 * 1024  # a queue/API request body; uploads are limited by --max-file-size instead


class BodyLimit:
    """ASGI middleware: a request body over LIMIT bytes (by its Content-Length) gets 413 before gradio reads or logs
    it, a POST without a length 411; uploads (limited by gradio's max_file_size) pass."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES, exempt: tuple[str, ...] = ("/upload",)):
        self.app, self.limit, self.exempt = app, limit, exempt

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Refuse an oversized body, else hand the request to gradio."""
        if scope.get("type") != "http" or scope.get("path", "").rstrip("/").endswith(self.exempt):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            return await self._refuse(send, 411, "send a Content-Length header")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            drained = 0  # read (never kept) so the client reads the 413 instead of a broken pipe
            while drained <= 64 * self.limit:
                message = await receive()
                drained += len(message.get("body", b""))
                if message.get("type") != "http.request" or not message.get("more_body"):
                    break
            return await self._refuse(send, 413, f"a request body of {length.decode(errors='replace')[:20]} bytes; "
                                                 f"this demo takes up to {self.limit:,}")
        return await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(send: Any, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on HOST right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def prepare_image(path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> tuple[str | None, str | None]:
    """(path the model should read, None) for a usable upload, or (None, a sentence for the user saying what is wrong).

    Never decodes more than MAX_PIXELS: a decompression bomb or a huge scan is refused from its header. An image
    with a side above MAX_SIDE is downscaled (upright, per its EXIF orientation) into OUT_DIR (a temporary folder).
    """
    import tempfile
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    name = Path(path).name
    kind = Path(path).suffix.lstrip(".").upper() or "this"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    return None, (f"\u201c{name}\u201d is {w}\u00d7{h} pixels ({w * h / 1e6:.0f} megapixels); this demo takes "
                                  f"images up to {MAX_PIXELS / 1e6:.0f} megapixels. Please upload a smaller copy.")
                if max(w, h) <= MAX_SIDE:
                    img.verify()
                    return str(path), None
                img.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a reduced size right away
                small = ImageOps.exif_transpose(img).convert("RGB")
                small.thumbnail((MAX_SIDE, MAX_SIDE))
    except Image.DecompressionBombError:
        return None, (f"\u201c{name}\u201d claims more pixels than is safe to decode (a decompression bomb?). "
                      f"{IMAGE_HELP}")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return None, f"\u201c{name}\u201d is not an image I can read ({kind} file: {type(exc).__name__}). {IMAGE_HELP}"
    folder = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="internvl-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / (Path(path).stem + "-small.png")
    small.save(out)
    return str(out), None


def check_image(path: str | os.PathLike) -> str | None:
    """None when PATH is an image the demo can use, else a sentence for the user saying what is wrong."""
    return prepare_image(path)[1]


def check_prompt(text: str) -> str | None:
    """None when TEXT is a question the demo takes, else a sentence saying why not."""
    if len(text) > MAX_PROMPT_CHARS:
        return (f"Your message is {len(text):,} characters long; this demo answers questions up to "
                f"{MAX_PROMPT_CHARS:,} characters. Please shorten it.")
    return None


def course_examples(artifacts: str | os.PathLike | None = None, n: int = 4) -> list[tuple[str, str]]:
    """N (image path, question) quick-picks from the held-out split 04 trained for (mixed plates kinds and languages;
    the first N of a learner's own data, whose images lie under its IMAGE_FOLDER)."""

    art = Path(artifacts_dir(artifacts))
    trained = read_training_data(art)   # notebook 04's record: the learner's split and image folder
    if trained and trained.get("heldout") and Path(trained["heldout"]).is_file():
        heldout = Path(trained["heldout"])
        folder = Path(trained.get("image_folder") or heldout.parent)
    else:
        heldout, _, _ = deploy.trained_task(art, deploy.base_model_dir("tiny", art))  # what the model was trained on
        folder = Path(heldout).parent
    picked, seen = [], set()
    for rec in load_records(heldout):  # plates: one per (kind, language) until N; other data: the first N with an image
        image = rec.get("image")
        image = image[0] if isinstance(image, list) and image else image
        if not isinstance(image, str):
            continue
        meta = rec.get("meta") or {}
        key = (meta.get("kind"), meta.get("lang")) if meta else len(picked)
        if key in seen:
            continue
        seen.add(key)
        question = rec["conversations"][0]["value"].replace("<image>", "").strip()
        picked.append((str(folder / image), question))
        if len(picked) == n:
            break
    return picked


class DemoModels:
    """The demo's two models, loaded on first use (a ChatPipeline may also be handed in ready-made)."""

    def __init__(self, models: dict[str, Any], backend: str = "auto", max_tiles: int | None = None,
                 system: str | None = None):
        self.sources = dict(models)
        self.backend = backend
        self.max_tiles = max_tiles
        self.system = system  # the system prompt training used; None keeps each model's own default
        self.loaded: dict[str, deploy.ChatPipeline] = {k: v for k, v in models.items()
                                                       if isinstance(v, deploy.ChatPipeline)}

    def get(self, name: str) -> deploy.ChatPipeline:
        """The pipeline for NAME ("base" / "fine-tuned"), loading it if needed."""
        if name not in self.loaded:
            self.loaded[name] = deploy.pipeline(self.sources[name], backend=self.backend, name=name,
                                                max_tiles=self.max_tiles)
            if self.system is not None and hasattr(self.loaded[name]._backend, "apply_system"):
                self.loaded[name]._backend.system = self.system  # chat() uses it (model.system_message)
            print(f"[demo] {self.loaded[name].describe()}", flush=True)
        return self.loaded[name]


def respond(message: dict, history: list, model_name: str, state: dict, models: DemoModels,
            gen: deploy.GenSettings) -> tuple[list, dict]:
    """One user action: MESSAGE {"text", "files"} -> the updated chat HISTORY and STATE (image, session, model)."""
    history = list(history or [])
    state = dict(state or {})
    text = (message or {}).get("text", "").strip()
    files = (message or {}).get("files") or []
    new_image = None
    for f in files:
        path = f if isinstance(f, str) else (f.get("path") or f.get("name"))
        usable, problem = prepare_image(path)
        if problem:
            history += [{"role": "user", "content": f"Attached file: {Path(path).name}"},
                        {"role": "assistant", "content": problem}]
            return history, state
        new_image = usable
    if new_image:
        state.update(image=new_image, session=None)  # a new image starts a new conversation
        history.append({"role": "user", "content": {"path": new_image}})
    if state.get("model") != model_name:
        if state.get("session") is not None:
            history.append({"role": "assistant", "content": f"(switched to the {model_name} model: new conversation "
                                                             "about the same image)"})
        state.update(model=model_name, session=None)
    if not text:
        if new_image:
            history.append({"role": "assistant", "content": "Got the image. Ask me something about it."})
        return history, state
    too_long = check_prompt(text)
    if too_long:
        history += [{"role": "user", "content": text[:200] + "\u2026"}, {"role": "assistant", "content": too_long}]
        return history, state
    history.append({"role": "user", "content": text})
    try:
        pipe = models.get(model_name)
        session = state.get("session")
        if session is None:
            session = pipe.session()
            answer = session.ask(text, image=state.get("image"), gen=gen)
        else:
            answer = session.ask(text, gen=gen)
        state["session"] = session
    except Exception as exc:  # show the learner what went wrong instead of a spinning wheel
        answer = f"Sorry, the model failed: {type(exc).__name__}: {exc}"
    history.append({"role": "assistant", "content": answer or "(empty answer)"})
    return history, state


def build_demo(models: dict[str, Any], backend: str = "auto", examples: list[tuple[str, str]] | None = None,
               gen: deploy.GenSettings | None = None, default_model: str = "fine-tuned",
               max_tiles: int | None = None, title: str = "InternVL2 course demo", system: str | None = None,
               intro: str = "Attach an image with the clip, ask about it, then switch the model to compare the base "
                            "and the fine-tuned checkpoint.",
               placeholder: str = "Ask about the image (attach one with the clip)…") -> "gradio.Blocks":
    """The gradio Blocks app: chat with history, image upload, quick-picks, base/fine-tuned switch, sampling knobs."""
    import gradio as gr

    store = DemoModels(models, backend, max_tiles, system)
    gen = gen or deploy.GenSettings()
    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## {title}\n{intro}")
        with gr.Row():
            model = gr.Radio(list(MODEL_CHOICES), value=default_model, label="Model", elem_id="model-switch")
            temperature = gr.Slider(0.0, 1.5, value=gen.temperature, step=0.05, label="temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1.0, value=gen.top_p, step=0.05, label="top_p")
            max_new = gr.Slider(1, 512, value=gen.max_new_tokens, step=1, label="max_new_tokens")
        chatbot = gr.Chatbot(label="Chat", height=420, elem_id="chat")
        box = gr.MultimodalTextbox(file_types=None, file_count="single", sources=["upload"], elem_id="ask",
                                   placeholder=placeholder, show_label=False)
        state = gr.State({})
        clear = gr.Button("New conversation")
        if examples:
            gr.Examples([[{"text": q, "files": [img]}] for img, q in examples], inputs=[box],
                        label="Quick picks from the course task")

        def on_submit(message, history, model_name, st, t, p, m):
            """Gradio callback: the sliders' values become GenSettings, then respond()."""
            settings = deploy.GenSettings(max_new_tokens=int(m), temperature=float(t), top_p=float(p), seed=gen.seed)
            history, st = respond(message, history, model_name, st, store, settings)
            return history, st, gr.MultimodalTextbox(value=None)

        box.submit(on_submit, [box, chatbot, model, state, temperature, top_p, max_new], [chatbot, state, box])
        clear.click(lambda: ([], {}), None, [chatbot, state])
    demo.labsupport_models = store  # the notebook reads the loaded pipelines from here
    return demo


def main(argv: list[str] | None = None) -> None:
    """Command line: start the demo and serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="tiny", help='base model: "tiny" or a checkpoint folder')
    parser.add_argument("--finetuned", default="", help="fine-tuned model folder (default: notebook 05's, else the base)")
    parser.add_argument("--backend", default="auto", choices=deploy.BACKENDS)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1 = this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-file-size", default="5mb", help='upload limit, e.g. "5mb"')
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-tiles", type=int, default=6, help="most 448px tiles per image (training used 6)")
    parser.add_argument("--artifacts", default="", help="artifacts folder (default: artifacts/ at the repo root)")
    parser.add_argument("--no-examples", action="store_true", help="skip the quick-pick examples")
    parser.add_argument("--system", default=None, help="system prompt (default: each model's own; 06 passes training's)")
    args = parser.parse_args(argv)


    artifacts = artifacts_dir(args.artifacts)
    base = deploy.base_model_dir(args.base, artifacts)
    if args.finetuned:
        finetuned, why = Path(args.finetuned), f"fine-tuned model given on the command line: {args.finetuned}"
    else:
        finetuned, why = deploy.finetuned_model_dir(artifacts, base, args.base)
    print(f"[demo] base: {base}\n[demo] {why}", flush=True)
    examples = [] if args.no_examples else course_examples(artifacts)
    demo = build_demo({"base": base, "fine-tuned": finetuned}, backend=args.backend, examples=examples,
                      gen=deploy.GenSettings(max_new_tokens=args.max_new_tokens), max_tiles=args.max_tiles,
                      system=args.system)
    from starlette.middleware import Middleware  # the deploy env's (gradio's) web stack; imported only to serve

    demo.queue().launch(server_name=args.host, server_port=args.port, max_file_size=args.max_file_size,
                        allowed_paths=[str(artifacts / deploy.COURSE_TASK)], footer_links=[],
                        app_kwargs={"middleware": [Middleware(BodyLimit)]})


if __name__ == "__main__":
    main()
