"""Prompt parity: the prompt XTuner trains with, the one model.chat() builds, the one LMDeploy serves, side by side.

Three tools turn one question into text for the same weights, each from its own source:

- XTuner 0.2.0 trains with its InternVL dataset's template: PROMPT_TEMPLATE.internlm2_chat or .phi3_chat
  as the dataset rewrites them, with a system prompt fixed per LLM (xtuner/dataset/internvl_dataset.py), which the
  course replaces with the checkpoint's own chat() system prompt (`training_system`; docs/levers.md says why);
- `model.chat()` uses the checkpoint's conversation.py template named in config.json ("template"), with
  its system_message (a learner can set `model.system_message`);
- LMDeploy 0.18 renders the tokenizer's `chat_template` (tokenizer_config.json or chat_template.jinja);
  a system prompt comes from the messages or from `ChatTemplateConfig(meta_instruction=...)`.

When the three differ, a fine-tune is served a prompt it never saw. `prompt_parity(model_dir)` renders
all three (no GPU, no weights loaded) and says which system prompt makes them agree, if one can.

    from labsupport.model.prompts import prompt_parity
    report = prompt_parity(MODEL_DIR)
    print(report.markdown())
"""
from __future__ import annotations

import copy
import functools
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence


import subprocess
import sys

from labsupport.core.checkpoints import write_json_atomic
from labsupport.core.envs import venv_python
from labsupport.core.paths import repo_root
from labsupport.model.tinymodel import LAYOUTS

QUESTION = "What colour are the objects on the plate?"


@dataclass
class PromptParity:
    """The three prompts for one question, the system prompt each tool uses by default, and the verdict."""

    model_dir: str
    question: str
    xtuner: str | None          # None when XTuner cannot train this model (the reason is in notes)
    chat: str
    lmdeploy: str | None        # None when the tokenizer has no chat_template (the reason is in notes)
    systems: dict = field(default_factory=dict)   # tool -> its default system prompt ("" = none)
    agree: bool = False                           # the three default prompts are the same text
    system_that_agrees: str | None = None         # a system prompt that makes all three the same, if one exists
    notes: list = field(default_factory=list)

    def markdown(self) -> str:
        """The three prompts side by side (one row each) with the verdict, as Markdown."""
        def cell(text: str | None) -> str:
            return "—" if text is None else "`" + text.replace("\n", "\\n").replace("|", "\\|") + "`"
        rows = [("XTuner (training)", self.xtuner, self.systems.get("xtuner")),
                ("model.chat() (conversation.py)", self.chat, self.systems.get("chat")),
                ("LMDeploy (tokenizer chat_template)", self.lmdeploy, self.systems.get("lmdeploy"))]
        lines = [f"**Prompt parity for `{Path(self.model_dir).name}`** (question: {self.question!r})", "",
                 "| tool | default system prompt | prompt |", "|---|---|---|"]
        lines += [f"| {tool} | {cell(system) if system else '(none)'} | {cell(text)} |" for tool, text, system in rows]
        name = Path(self.model_dir).name
        verdict = (f"for `{name}` the three prompts agree (a property of this checkpoint, not of the tools: the embedded "
                   "model's chat_template was written to match XTuner's; real InternVL2-2B's three differ)" if self.agree else
                   f"they agree once every tool uses the system prompt {self.system_that_agrees!r}"
                   if self.system_that_agrees else "they differ, and a system prompt alone does not fix it")
        lines += ["", f"**Verdict:** {verdict}."] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _strip_bos(text: str, bos: str | None) -> str:
    """TEXT without a leading BOS token: tokenizers that add <s> themselves and templates that write it agree."""
    return text[len(bos):] if bos and text.startswith(bos) else text


def xtuner_prompt(model_dir: str | os.PathLike, question: str = QUESTION, history: Sequence[tuple[str, str]] = (),
                  image: bool = True, system: str | None = None) -> tuple[str, str]:
    """(prompt, system) as XTuner 0.2.0's InternVL dataset builds them for MODEL_DIR, SYSTEM in place of the one it fixes
    per LLM (what CourseInternVLDataset(system=...) trains with); course env; raises NotImplementedError for an LLM that
    dataset refuses, e.g. InternVL2-1B's Qwen2."""
    from xtuner.dataset.internvl_dataset import InternVL_V1_5_Dataset
    from xtuner.utils import PROMPT_TEMPLATE


    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel("WARNING")  # its "loading data" lines say nothing here
    try:
        with tempfile.TemporaryDirectory() as tmp:  # the dataset reads its template and system from an empty data file
            (Path(tmp) / "empty.json").write_text("[]")
            ds = InternVL_V1_5_Dataset(str(model_dir), copy.deepcopy(PROMPT_TEMPLATE[template_for(model_dir)]),
                                       [str(Path(tmp) / "empty.json")], [tmp])
    finally:
        logger.setLevel(level)
    t = ds.template
    system = ds._system if system is None else system
    text = t.SYSTEM.format(system=system) if t.get("SYSTEM") else ""
    turns = list(history) + [(question, None)]
    for i, (q, a) in enumerate(turns):
        prefix = IMAGE_PLACEHOLDER if image and i == 0 else ""
        text += t.INSTRUCTION.format(input=prefix + q, round=i + 1)
        if a is not None:
            text += a + t.get("SUFFIX", "")
    return text, system


def xtuner_default_system(model_dir: str | os.PathLike) -> str | None:
    """The system prompt XTuner's InternVL dataset fixes for MODEL_DIR's LLM, or None where XTuner cannot train it."""
    try:
        return xtuner_prompt(model_dir)[1]
    except NotImplementedError:
        return None


def training_system(model_dir: str | os.PathLike) -> str | None:
    """The system prompt the course trains MODEL_DIR with: its own chat()'s (conversation.py's, which LMDeploy's InternVL2
    templates use too), or None where XTuner cannot train it (notebook 04 says why; docs/levers.md measured it)."""
    if xtuner_default_system(model_dir) is None:
        return None
    return chat_system(model_dir)


def lmdeploy_prompt(model_dir: str | os.PathLike, question: str = QUESTION, history: Sequence[tuple[str, str]] = (),
                    system: str | None = None, image: bool = True) -> str:
    """The prompt LMDeploy 0.18 renders from the tokenizer's chat_template (SYSTEM as a system message, which is
    what ChatTemplateConfig(meta_instruction=SYSTEM) adds); a leading BOS text is dropped (the tokenizer adds it)."""
    import jinja2

    template = read_chat_template(model_dir)
    cfg = json.loads((Path(model_dir) / "tokenizer_config.json").read_text(encoding="utf-8"))
    bos = cfg.get("bos_token")
    bos = bos.get("content") if isinstance(bos, dict) else bos
    messages = [{"role": "system", "content": system}] if system else []
    for i, (q, a) in enumerate(history):
        messages += [{"role": "user", "content": (IMAGE_PLACEHOLDER if image and i == 0 else "") + q},
                     {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": (IMAGE_PLACEHOLDER if image and not history else "") + question})
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    text = env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token=bos or "",
                                            eos_token=cfg.get("eos_token") or "")
    return _strip_bos(text, bos)


def chat_prompt(model_dir: str | os.PathLike, question: str = QUESTION, history: Sequence[tuple[str, str]] = (),
                system: str | None = None, image: bool = True) -> tuple[str, str]:
    """(prompt, default system) of the checkpoint's own chat(); SYSTEM replaces the system message
    (what `model.system_message = SYSTEM` does)."""
    return model_prompt(model_dir, question, history, image=image, system=system), chat_system(model_dir)


def chat_system(model_dir: str | os.PathLike) -> str:
    """The default system_message of the checkpoint's conversation.py template (what its chat() asks with)."""
    return conversation_template(model_dir).system_message


def prompt_parity(model_dir: str | os.PathLike, question: str = QUESTION,
                  history: Sequence[tuple[str, str]] = ()) -> PromptParity:
    """Render MODEL_DIR's three prompts (XTuner, model.chat(), LMDeploy) for QUESTION after HISTORY, compare them,
    and find the system prompt that makes them agree (the training one: chat()'s own, which notebook 04 gives XTuner)."""
    model_dir = Path(model_dir)
    notes = []
    chat, chat_default = chat_prompt(model_dir, question, history)
    try:   # as notebook 04 trains: XTuner's dataset with the checkpoint's own chat() system prompt
        xt, xt_system = xtuner_prompt(model_dir, question, history, system=chat_default)
    except ImportError:
        xt, xt_system = None, None
        notes.append("XTuner is not installed in this environment (it lives in the course env): its prompt is not shown.")
    except NotImplementedError:
        xt, xt_system = None, None
        arch = json.loads((model_dir / "config.json").read_text())["llm_config"]["architectures"][0]
        notes.append(f"XTuner 0.2.0's InternVL dataset cannot train a {arch} LLM (it knows Phi3ForCausalLM and "
                     "InternLM2ForCausalLM only), so there is no training prompt to match.")
    try:
        served = lmdeploy_prompt(model_dir, question, history)
        served_system = _default_system(model_dir)
    except ValueError as exc:
        served, served_system = None, None
        notes.append(str(exc))
    systems = {"xtuner": xt_system, "chat": chat_default, "lmdeploy": served_system}
    present = [p for p in (xt, chat, served) if p is not None]
    agree = len(present) == 3 and len(set(present)) == 1
    target = xt_system if xt is not None else None  # training is the side a learner cannot re-prompt
    agrees_with = None
    if not agree and target is not None:
        forced_chat = chat_prompt(model_dir, question, history, system=target)[0]
        forced_served = lmdeploy_prompt(model_dir, question, history, system=target) if served is not None else None
        if forced_chat == xt:
            notes.append(f"model.chat() matches XTuner once `model.system_message = {target!r}`.")
        else:
            notes.append("model.chat() differs from XTuner even with XTuner's system prompt: conversation.py lays "
                         "the turns out differently (separators or newlines).")
        if forced_served == xt:
            notes.append(f"LMDeploy matches XTuner with `ChatTemplateConfig(model_name='hf', model_path=MODEL_DIR, "
                         f"meta_instruction={target!r})` (or that system message in the request).")
        elif forced_served is not None:
            notes.append("LMDeploy differs from XTuner even with XTuner's system prompt: the tokenizer's chat_template "
                         "lays the turns out differently; `labsupport.model.prompts.write_chat_template(MODEL_DIR)` writes one "
                         "that renders XTuner's layout with XTuner's system prompt.")
        if forced_chat == xt and forced_served in (xt, None):
            agrees_with = target
    return PromptParity(str(model_dir), question, xt, chat, served, systems, agree, agrees_with, notes)


def _default_system(model_dir: str | os.PathLike) -> str:
    """The system prompt the chat_template adds when the messages bring none ("" for none)."""
    marker = "\x00Q\x00"
    text = lmdeploy_prompt(model_dir, marker, (), image=False)
    head = text.split(marker)[0]
    with_system = lmdeploy_prompt(model_dir, marker, (), system="\x01", image=False).split(marker)[0]
    if head == with_system.replace("\x01", "", 1):
        return ""  # the template without a system message renders like an empty one
    start, end = with_system.split("\x01")
    if head.startswith(start) and head.endswith(end) and len(head) >= len(start) + len(end):
        return head[len(start):len(head) - len(end)]
    return ""  # no system block when the messages bring none


def matching_chat_template(model_dir: str | os.PathLike, system: str | None = None) -> str:
    """A chat_template that renders MODEL_DIR's conversation.py layout (internlm2-chat or phi3-chat) with SYSTEM (default:
    its chat()'s, which notebook 04 trains with) as default: in tokenizer_config.json LMDeploy then serves what XTuner trained."""

    template = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get("template")
    system = chat_system(model_dir) if system is None else system
    for layout in LAYOUTS.values():
        if layout.template == template:
            default = re.search(r"\{%- else -%\}\{%- set system = ('(?:[^'\\]|\\.)*') -%\}", layout.chat_template)
            return layout.chat_template.replace(default.group(0), default.group(0).replace(default.group(1), repr(system)), 1)
    raise ValueError(f"{Path(model_dir) / 'config.json'} names the conversation template {template!r}; a matching "
                     f"chat_template is known for {sorted(l.template for l in LAYOUTS.values())} only (XTuner 0.2.0 "
                     "trains those two)")


def write_chat_template(model_dir: str | os.PathLike, system: str | None = None) -> Path:
    """Write matching_chat_template(MODEL_DIR, SYSTEM) into MODEL_DIR/tokenizer_config.json (atomically; other keys kept)."""

    path = Path(model_dir) / "tokenizer_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the tokenizer files of the base checkpoint belong in {model_dir}")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["chat_template"] = matching_chat_template(model_dir, system)
    write_json_atomic(path, cfg)
    return path




def template_for(model_path: str | os.PathLike) -> str:
    """XTuner's prompt template for a model: phi3_chat for a Phi-3 LLM (InternVL2-4B, "tiny-4b"), else internlm2_chat
    (InternLM2: InternVL2-2B/8B and the default "tiny")."""
    cfg = Path(model_path) / "config.json"
    if cfg.exists():
        arch = (json.loads(cfg.read_text()).get("llm_config", {}).get("architectures") or [""])[0]
        return "phi3_chat" if arch.startswith("Phi3") else "internlm2_chat"
    return "phi3_chat" if "4B" in str(model_path) or str(model_path).lower() == "tiny-4b" else "internlm2_chat"
# What LMDeploy writes where an image goes before applying the chat template; it then repeats
# <IMG_CONTEXT> once per image token (256 per tile). The model's own chat() does the same with "<image>\n".
IMAGE_PLACEHOLDER = "<img><IMG_CONTEXT></img>\n"


# ---- the chat template ---------------------------------------------------------------------------
def read_chat_template(model_dir: str | os.PathLike) -> str:
    """The Jinja chat template the checkpoint's tokenizer ships (raises, with the fix, when there is none)."""
    model_dir = Path(model_dir)
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg_file = model_dir / "tokenizer_config.json"
    template = None
    if cfg_file.is_file():
        template = json.loads(cfg_file.read_text(encoding="utf-8")).get("chat_template")
    if not template:
        raise ValueError(
            f"{model_dir} has no chat template (neither chat_template.jinja nor a 'chat_template' key in "
            f"{cfg_file}). LMDeploy 0.18 would silently fall back to a bare template and the model would not know "
            "where its turn ends. Fix: write the template of this model's conversation.py layout into that file, "
            "e.g. `labsupport.model.prompts.write_chat_template(MODEL_DIR)` (internlm2-chat or phi3-chat, with the "
            "system prompt XTuner trained with), or copy tokenizer_config.json from the base checkpoint if that "
            "one has a 'chat_template'.")
    return template if isinstance(template, str) else template[0]["template"]


def render_prompt(tokenizer, question: str, history: Sequence[tuple[str, str]] = (), image: bool = True) -> str:
    """The text prompt the chat template makes of HISTORY + QUESTION (image placeholder on the first user turn)."""
    messages = []
    for i, (old_q, old_a) in enumerate(history):
        prefix = IMAGE_PLACEHOLDER if image and i == 0 else ""
        messages += [{"role": "user", "content": prefix + old_q}, {"role": "assistant", "content": old_a}]
    prefix = IMAGE_PLACEHOLDER if image and not history else ""
    messages.append({"role": "user", "content": prefix + question})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def conversation_template(model_dir: str | os.PathLike):
    """A fresh copy of the conversation template the checkpoint's own conversation.py registers under config.json's
    "template" (what its chat() uses)."""
    import importlib.util

    model_dir = Path(model_dir)
    source = model_dir / "conversation.py"
    if not source.is_file():
        raise FileNotFoundError(
            f"{source} is missing: chat() of an InternVL2 checkpoint imports it. It belongs next to config.json with "
            "the other remote-code files (configuration_*.py, modeling_*.py); copy it from the base checkpoint this "
            "one was converted from (XTuner's convert_to_official copies only what the model class imports), or "
            "re-download the repository's *.py files (huggingface-cli download <repo> --include '*.py').")
    spec = importlib.util.spec_from_file_location(f"_labsupport_conv_{abs(hash(str(model_dir)))}", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    name = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("template")
    known = sorted(getattr(module, "conv_templates", {}))
    if name not in known:
        raise ValueError(
            f"{model_dir / 'config.json'} names the conversation template {name!r}, which {source.name} does not "
            f"register (it knows {known}). InternVL2 uses 'internlm2-chat' (2B, 8B), 'phi3-chat' (4B), 'Hermes-2' (1B): "
            "set \"template\" in config.json to the one of this model's LLM.")
    return module.get_conv_template(name)


def model_prompt(model_dir: str | os.PathLike, question: str, history: Sequence[tuple[str, str]] = (),
                 image: bool = True, system: str | None = None) -> str:
    """The prompt the checkpoint's own chat() builds (its conversation.py template named in config.json);
    SYSTEM replaces the template's system message, as `model.system_message = SYSTEM` does."""
    conv = conversation_template(model_dir)
    if system is not None:
        conv.system_message = system
    for i, (old_q, old_a) in enumerate(history):
        conv.append_message(conv.roles[0], (IMAGE_PLACEHOLDER if image and i == 0 else "") + old_q)
        conv.append_message(conv.roles[1], old_a)
    conv.append_message(conv.roles[0], (IMAGE_PLACEHOLDER if image and not history else "") + question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def guessed_template(model_dir: str | os.PathLike) -> str:
    """The chat template name LMDeploy would pick for MODEL_DIR WITHOUT a ChatTemplateConfig (matched on the path)."""
    from lmdeploy.model import MODELS

    for name, template in MODELS.module_dict.items():
        if template.match(str(model_dir), trust_remote_code=True):
            return name
    return "base"


def show_prompts(model_dir: str | os.PathLike, question: str):
    """The prompt each tool builds for QUESTION (XTuner's training template, model.chat's conversation.py, LMDeploy's
    chat template) as labsupport.model.prompts.prompt_parity's Markdown table; XTuner's column comes from the course env."""
    import importlib.util
    import sys

    from IPython.display import Markdown

    if importlib.util.find_spec("xtuner") is None:  # the deploy env: ask the course env, where XTuner lives

        course = venv_python("internvl-course")
        if course.exists():
            code = ("import sys; from labsupport.model.prompts import prompt_parity; "
                    "print(prompt_parity(sys.argv[1], sys.argv[2]).markdown())")
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo_root()), os.environ.get("PYTHONPATH", "")]))
            proc = subprocess.run([str(course), "-c", code, str(model_dir), question], capture_output=True, text=True,
                                  env=env, timeout=300)
            if proc.returncode == 0:
                return Markdown(proc.stdout)
            print(f"(the course env could not render XTuner's prompt: {proc.stderr.strip().splitlines()[-1:]})",
                  file=sys.stderr)

    return Markdown(prompt_parity(model_dir, question).markdown())


# ---- the trained prompt, served: notebook 06 ---------------------------------------------------------
@functools.lru_cache(maxsize=16)  # a child process of the course env costs seconds: ask it once per model and question
def xtuner_prompt_any_env(model_dir: str | os.PathLike, question: str = QUESTION,
                          system: str | None = None) -> tuple[str | None, str | None, str]:
    """(prompt, system, note) XTuner trains MODEL_DIR with (SYSTEM in place of its dataset's), from any environment: XTuner lives in the course env, so
    the deploy env asks that env's Python; (None, None, why) when XTuner cannot train this LLM or is nowhere."""
    import importlib.util

    if importlib.util.find_spec("xtuner") is not None:
        try:
            prompt, system = xtuner_prompt(model_dir, question, system=system)
            return prompt, system, "XTuner's InternVL dataset, in this environment"
        except NotImplementedError as exc:
            return None, None, f"XTuner 0.2.0 cannot train this LLM ({exc})"
    course = venv_python("internvl-course")
    if not course.exists():
        return None, None, f"XTuner is not installed here and {course} is missing (make env builds the course env)"
    code = ("import json, sys\nfrom labsupport.model.prompts import xtuner_prompt\ntry:\n"
            "    print(json.dumps(list(xtuner_prompt(sys.argv[1], sys.argv[2], system=json.loads(sys.argv[3])))))\n"
            "except NotImplementedError as exc:\n    print(json.dumps([None, None, str(exc)]))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(repo_root()), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([str(course), "-c", code, str(model_dir), question, json.dumps(system)], capture_output=True, text=True, env=env,
                          timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"the course env could not render XTuner's prompt for {model_dir}: "
                           f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out[0] is None:
        return None, None, f"XTuner 0.2.0 cannot train this LLM ({out[2]})"
    return out[0], out[1], "XTuner's InternVL dataset, rendered in the course env (internvl-course)"


@dataclass
class ServedPrompts:
    """The prompt training used, the one chat() builds and the one LMDeploy serves, all with one system prompt."""

    model_dir: str
    system: str | None
    xtuner: str | None
    chat: str
    lmdeploy: str
    xtuner_note: str = ""

    @property
    def trained(self) -> str:
        """The prompt training used: XTuner's (chat()'s where XTuner cannot train this LLM)."""
        return self.xtuner if self.xtuner is not None else self.chat

    @property
    def served_ok(self) -> bool:
        """Whether LMDeploy serves exactly the training prompt."""
        return self.lmdeploy == self.trained

    @property
    def chat_ok(self) -> bool:
        """Whether the model's own chat() builds exactly the training prompt."""
        return self.chat == self.trained

    @property
    def agree(self) -> bool:
        """Whether chat() and LMDeploy build exactly the training prompt (XTuner's; chat()'s when XTuner cannot train)."""
        return self.chat_ok and self.served_ok

    def differences(self) -> list[str]:
        """One line per tool whose prompt is not the training prompt, with where it first differs."""
        trained = self.trained
        out = []
        for tool, text in (("model.chat()", self.chat), ("LMDeploy", self.lmdeploy)):
            if text != trained:
                i = next((k for k, (a, b) in enumerate(zip(text, trained)) if a != b), min(len(text), len(trained)))
                out.append(f"{tool} differs from training at character {i}: {text[max(0, i - 12):i + 20]!r} vs "
                           f"{trained[max(0, i - 12):i + 20]!r}")
        return out

    def markdown(self) -> str:
        """The three prompts as a Markdown table, with the verdict computed from them."""
        def cell(text: str | None) -> str:
            return "—" if text is None else "`" + text.replace("\n", "\\n").replace("|", "\\|") + "`"
        rows = [("XTuner (training)", self.xtuner), (f"model.chat() with `system_message` set", self.chat),
                ("LMDeploy (`messages2prompt`, system message in the request)", self.lmdeploy)]
        lines = [f"**Prompts for `{Path(self.model_dir).name}`**, system prompt {self.system!r}", "",
                 "| tool | prompt |", "|---|---|"] + [f"| {tool} | {cell(text)} |" for tool, text in rows]
        verdict = ("the three are the same text: the model is served the prompt it was trained with" if self.agree
                   else "they differ: " + "; ".join(self.differences()))
        lines += ["", f"**Verdict:** {verdict}."] + ([f"- {self.xtuner_note}"] if self.xtuner is None else [])
        return "\n".join(lines) + "\n"


def served_prompts(model_dir: str | os.PathLike, question: str, system: str | None, served: str) -> ServedPrompts:
    """SERVED (the text LMDeploy rendered for QUESTION with SYSTEM as a system message) next to XTuner's training prompt
    and chat()'s with `model.system_message = SYSTEM`; a leading BOS text is dropped (the tokenizer adds it)."""
    cfg = json.loads((Path(model_dir) / "tokenizer_config.json").read_text(encoding="utf-8"))
    bos = cfg.get("bos_token")
    bos = bos.get("content") if isinstance(bos, dict) else bos
    trained, _, note = xtuner_prompt_any_env(model_dir, question, system)   # as CourseInternVLDataset(system=) trains
    chat = model_prompt(model_dir, question, system=system)
    return ServedPrompts(str(model_dir), system, trained, chat, _strip_bos(served, bos), note)
