"""The project's own InternVL2 remote code: the .py files copied next to config.json in a checkpoint.

Written from the published architecture with the public names of the official checkpoints
(InternViT -> pixel shuffle -> MLP projector -> LLM), so that transformers (trust_remote_code),
XTuner and LMDeploy treat the embedded miniature model like the real InternVL2. The files use
relative imports, as Hugging Face remote code does, and are importable from labsupport too.
"""
from pathlib import Path

REMOTE_CODE_DIR = Path(__file__).resolve().parent
REMOTE_CODE_FILES = (
    "configuration_intern_vit.py",
    "configuration_internlm2.py",
    "configuration_internvl_chat.py",
    "conversation.py",
    "modeling_intern_vit.py",
    "modeling_internlm2.py",
    "modeling_internvl_chat.py",
)
