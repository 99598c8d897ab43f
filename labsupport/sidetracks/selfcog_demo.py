"""A gradio chat demo for notebook 08's self-cognition model: notebook 06's demo app with a text-only chat model.

    .venvs/internvl-deploy/bin/python -m labsupport.sidetracks.selfcog_demo                  # base vs notebook 08's merged model
    .venvs/internvl-deploy/bin/python -m labsupport.sidetracks.selfcog_demo --model ./merged --port 7861

It reuses labsupport.serve.demo_app (layout, history, base/fine-tuned switch, 127.0.0.1 only): TextChatPipeline gives
the InternLM2 chat model the ChatPipeline shape the app talks to, answering through labsupport.model.chatllm (the
prompt XTuner trained with). An uploaded image gets a message: this model reads text only.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from labsupport.model import chatllm
from labsupport.serve import deploy
from labsupport.core.paths import artifacts_dir
from labsupport.serve import demo_app
from labsupport.sidetracks.selfcog import results_file

TITLE = "Self-cognition demo (notebook 08)"
TEXT_ONLY = "This assistant reads text only: ask it a question instead (e.g. 你是谁？)."


class _TextBackend:
    """A ChatPipeline backend for a text-only chat LLM (transformers, greedy or sampled)."""

    def __init__(self, model_dir: Path):
        self.model, self.tokenizer = chatllm.load(model_dir)

    def one(self, question: str, image, gen: deploy.GenSettings) -> str:
        """One answer (IMAGE must be None)."""
        if image is not None:
            return TEXT_ONLY
        return chatllm.chat(self.model, self.tokenizer, question, max_new_tokens=gen.max_new_tokens)

    def many(self, queries, gen: deploy.GenSettings) -> list[str]:
        """One answer per (question, image) query."""
        return [self.one(q, img, gen) for q, img in queries]

    def turn(self, state: dict, question: str, image, gen: deploy.GenSettings) -> str:
        """One chat turn; each question is asked fresh (the fine-tune is single-turn)."""
        state.setdefault("history", []).append((question, self.one(question, image, gen)))
        return state["history"][-1][1]


class TextChatPipeline(deploy.ChatPipeline):
    """deploy.ChatPipeline's interface over a text-only InternLM2 chat folder (what demo_app.build_demo expects)."""

    def __init__(self, model_dir: str | os.PathLike, name: str = "", gen: deploy.GenSettings | None = None):
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.model_dir} has no config.json: run notebook 08 first, or pass --model")
        self.name = name or self.model_dir.name
        self.backend, self.reason = "transformers", "a text-only chat LLM, answered with transformers"
        self.gen = gen or deploy.GenSettings()
        self.max_tiles = 1
        start = time.time()
        self._backend = _TextBackend(self.model_dir)
        self.load_seconds = round(time.time() - start, 2)


def default_models(artifacts: str | os.PathLike | None = None) -> dict[str, Path]:
    """Base and fine-tuned folders from notebook 08's saved results (raises with what to run when missing)."""

    path = results_file(artifacts_dir(artifacts))
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run notebook 08 first (python -m labsupport.course run --only 08)")
    res = json.loads(path.read_text(encoding="utf-8"))
    return {"base": Path(res["base"]), "fine-tuned": Path(res["merged"])}


def build(models: dict[str, str | os.PathLike], max_new_tokens: int = 48) -> "gradio.Blocks":
    """notebook 06's gradio app (demo_app.build_demo) over the two text-only models."""

    gen = deploy.GenSettings(max_new_tokens=max_new_tokens)
    pipes = {k: TextChatPipeline(v, name=k, gen=gen) for k, v in models.items()}
    return demo_app.build_demo(pipes, gen=gen, title=TITLE, placeholder="Ask your assistant, e.g. 你是谁？",
                               intro="Ask who it is, then switch to the base model and ask again.")


def main(argv: list[str] | None = None) -> None:
    """Command line: serve the demo on 127.0.0.1 until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="fine-tuned folder (default: notebook 08's merged model)")
    parser.add_argument("--base", default="", help="base folder (default: notebook 08's base model)")
    parser.add_argument("--artifacts", default="", help="artifacts folder (default: artifacts/ at the repo root)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1 = this machine only)")
    parser.add_argument("--port", type=int, default=7861)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    models = {}
    if not (args.model and args.base):
        models = default_models(args.artifacts or None)
    if args.base:
        models["base"] = Path(args.base)
    if args.model:
        models["fine-tuned"] = Path(args.model)
    print(f"[demo] base: {models['base']}\n[demo] fine-tuned: {models['fine-tuned']}", flush=True)
    build(models, args.max_new_tokens).queue().launch(server_name=args.host, server_port=args.port, footer_links=[])


if __name__ == "__main__":
    main()
