"""What XTuner 0.2.0 needs to fine-tune InternVL on a CPU, applied at runtime (nothing in site-packages is edited).

The configs that labsupport.xtuner writes import this module; importing it

* gives ``torch.cpu`` the ``is_bf16_supported()`` that XTuner's model code calls and torch 2.14 lacks.

It also defines the classes a CPU config names instead of XTuner's own:

* ``CPUSupervisedFinetune``: XTuner's ``SupervisedFinetune`` as it is (mmengine imports a config's
  modules lazily, so a config must name a class of this module for the patch above to run).

* ``CPUInternVL``: XTuner's ``InternVL_V1_5`` that (1) starts a one-process ``gloo`` process group
  first, because XTuner calls ``torch.distributed.get_rank()`` in every forward even without a
  launcher, (2) trains in float32, since XTuner loads the model in bfloat16 and a CPU has no fast
  bf16 nor an AMP optimiser, and (3) can switch gradient checkpointing off (pointless for a tiny model).
* ``LeverInternVL``: XTuner's ``InternVL_V1_5`` on a GPU with the speed levers XTuner fixes as
  parameters: ``gradient_checkpointing`` (XTuner always switches it on), ``llm_attn``, the LLM's
  attention kernel ("sdpa" or "eager"; XTuner asks for flash_attention_2, which the course's InternLM2
  code runs as SDPA when flash_attn is missing), and ``dtype="float32"`` (master weights for a run with
  mmengine's AmpOptimWrapper instead of DeepSpeed, in a one-process group). labsupport.bench measures
  each lever with it; labsupport.gpu_presets' settings without checkpointing need it.
* ``CourseInternVLDataset``: XTuner's ``InternVL_V1_5_Dataset`` with ``max_dynamic_patch`` as a
  parameter (XTuner reads it from the model's config.json only).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

if not hasattr(torch.cpu, "is_bf16_supported"):
    torch.cpu.is_bf16_supported = lambda including_emulation=True: True  # bf16 runs (emulated) on any CPU


def ensure_process_group() -> bool:
    """Start a one-process gloo process group unless one exists or a launcher runs several; True if started."""
    if not dist.is_available() or dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return False
    dist.init_process_group(backend="gloo", store=dist.HashStore(), rank=0, world_size=1)
    return True


from xtuner.dataset import InternVL_V1_5_Dataset, LLaVADataset  # noqa: E402  (after the torch patch above)
from xtuner.model import InternVL_V1_5, LLaVAModel, SupervisedFinetune  # noqa: E402


class CPULLaVAModel(LLaVAModel):
    """XTuner's LLaVAModel, unchanged: naming it in a config imports this module (and its torch patch)."""


class CPULLaVADataset(LLaVADataset):
    """XTuner's LLaVADataset with datasets.map in MAP_NUM_PROC processes (XTuner hard-codes 32)."""

    def __init__(self, *args, map_num_proc: int = 1, **kwargs):
        import functools

        import xtuner.dataset.llava as llava_module

        original = llava_module.process_hf_dataset
        llava_module.process_hf_dataset = functools.partial(original, map_num_proc=map_num_proc)
        try:
            super().__init__(*args, **kwargs)
        finally:
            llava_module.process_hf_dataset = original


class CPUSupervisedFinetune(SupervisedFinetune):
    """XTuner's SupervisedFinetune, unchanged: naming it in a config imports this module, whose torch patch XTuner needs on a CPU."""


class CPUInternVL(InternVL_V1_5):
    """XTuner's InternVL_V1_5 made to train on a CPU: process group of one, float32, optional checkpointing."""

    def __init__(self, *args, dtype: str = "float32", gradient_checkpointing: bool = True, **kwargs):
        ensure_process_group()
        super().__init__(*args, **kwargs)
        if dtype == "float32":
            self.model.float()
        if not gradient_checkpointing:
            self.gradient_checkpointing_disable()


def set_llm_attention(language_model, kind: str) -> None:
    """Make LANGUAGE_MODEL (a PEFT wrapper too) attend with KIND ("sdpa" or "eager") from its next forward on."""
    if kind not in ("sdpa", "eager"):
        raise ValueError(f"llm_attn must be 'sdpa' or 'eager', not {kind!r}")
    config = language_model.config
    if getattr(config, "model_type", None) == "internlm2":  # the course's InternLM2 reads this field every forward
        config.attn_implementation = kind
    else:  # transformers' own LLMs (Phi-3) read the private field
        config._attn_implementation = kind


class LeverInternVL(InternVL_V1_5):
    """XTuner's InternVL_V1_5 (GPU) with gradient checkpointing, the LLM's attention kernel and the weights' dtype as parameters."""

    def __init__(self, *args, gradient_checkpointing: bool = True, llm_attn: str | None = None,
                 dtype: str | None = None, **kwargs):
        if "LOCAL_RANK" not in os.environ:  # no launcher (a run without DeepSpeed): XTuner still calls get_rank()
            ensure_process_group()
        super().__init__(*args, **kwargs)
        if dtype == "float32":  # master weights for mmengine's AmpOptimWrapper (bf16 autocast computes)
            self.model.float()
        elif dtype is not None:
            raise ValueError(f"dtype must be None (XTuner's bfloat16) or 'float32', not {dtype!r}")
        if not gradient_checkpointing:
            self.gradient_checkpointing_disable()
        if llm_attn:
            set_llm_attention(self.model.language_model, llm_attn)


class CourseInternVLDataset(InternVL_V1_5_Dataset):
    """XTuner's InternVL dataset with the number of tiles per image as a parameter."""

    def __init__(self, *args, max_dynamic_patch: int | None = None, min_dynamic_patch: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if max_dynamic_patch is not None:
            self.max_dynamic_patch = int(max_dynamic_patch)
        if min_dynamic_patch is not None:
            self.min_dynamic_patch = int(min_dynamic_patch)
