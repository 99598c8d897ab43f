"""Conversation templates: how a chat is laid out as one prompt string for the LLM.

A small registry in the spirit of FastChat/InternVL's ``conversation.py`` (written fresh):
``get_conv_template(name)`` returns a fresh copy to fill with ``append_message`` and render
with ``get_prompt``. Every message ends with ``sep``; the generation stops at ``sep``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


@dataclass
class Conversation:
    """One chat: a system prompt, two roles, the messages so far, and the separator that ends a turn."""

    name: str
    system_template: str = "{system_message}"
    system_message: str = ""
    roles: Tuple[str, str] = ("user", "assistant")
    messages: List[List[Optional[str]]] = field(default_factory=list)
    sep: str = "\n"
    stop_str: Optional[str] = None
    stop_token_ids: Optional[List[int]] = None

    def get_prompt(self) -> str:
        """Render the conversation; a last message of None leaves the prompt open for the model's answer."""
        ret = self.system_template.format(system_message=self.system_message) if self.system_message else ""
        for role, message in self.messages:
            ret += role + (message + self.sep if message is not None else "")
        return ret

    def set_system_message(self, system_message: str) -> None:
        """Replace the system message."""
        self.system_message = system_message

    def append_message(self, role: str, message: Optional[str]) -> None:
        """Add one turn (message None = the assistant's turn still to be generated)."""
        self.messages.append([role, message])

    def update_last_message(self, message: str) -> None:
        """Fill in the last turn, e.g. with the model's answer."""
        self.messages[-1][1] = message

    def to_openai_api_messages(self) -> List[Dict[str, str]]:
        """The conversation as OpenAI-style [{"role": ..., "content": ...}] messages."""
        out = [{"role": "system", "content": self.system_message}] if self.system_message else []
        for i, (_, message) in enumerate(self.messages):
            if message is not None:
                out.append({"role": "user" if i % 2 == 0 else "assistant", "content": message})
        return out

    def copy(self) -> "Conversation":
        """An independent copy."""
        return copy.deepcopy(self)


conv_templates: Dict[str, Conversation] = {}


def register_conv_template(template: Conversation, override: bool = False) -> None:
    """Add TEMPLATE to the registry under its name."""
    if not override and template.name in conv_templates:
        raise ValueError(f"conversation template {template.name!r} is already registered")
    conv_templates[template.name] = template


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of the registered template NAME."""
    if name not in conv_templates:
        raise KeyError(f"unknown conversation template {name!r}; known: {sorted(conv_templates)}")
    return conv_templates[name].copy()


# Phi-3 as InternVL2-4B is fine-tuned by XTuner 0.2.0: system block ends with "<|end|>\n",
# a user turn is "<|user|>\n{q}<|end|>" followed directly by "<|assistant|>\n".
register_conv_template(Conversation(
    name="phi3-chat",
    system_template="<|system|>\n{system_message}<|end|>\n",
    system_message="You are an AI assistant whose name is Phi-3.",
    roles=("<|user|>\n", "<|assistant|>\n"),
    sep="<|end|>",
    stop_str="<|end|>",
))

register_conv_template(Conversation(
    name="internlm2-chat",
    system_template="<|im_start|>system\n{system_message}<|im_end|>",
    system_message="You are an AI assistant whose name is InternLM (书生·浦语).",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    sep="<|im_end|>",
    stop_str="<|im_end|>",
))

register_conv_template(Conversation(
    name="Hermes-2",
    system_template="<|im_start|>system\n{system_message}<|im_end|>",
    system_message="You are a helpful assistant.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    sep="<|im_end|>",
    stop_str="<|im_end|>",
))
