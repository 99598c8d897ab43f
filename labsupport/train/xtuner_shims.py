"""What XTuner 0.2.0 needs to fine-tune InternVL on a CPU, applied at runtime (nothing in site-packages is edited).

The configs that labsupport.train.xtuner writes import this module; importing it

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
  mmengine's AmpOptimWrapper instead of DeepSpeed, in a one-process group), and ``fused_rmsnorm`` (XTuner's
  own Triton RMSNorm, which its SFT model dispatches and its InternVL model does not). benchmarks measures
  each lever with it; labsupport.train.gpu_presets' settings without checkpointing need it.
* ``ProfileSummaryHook``: mmengine's ``ProfilerHook`` that writes a JSON summary of a few iterations
  (GPU busy time against wall-clock time, kernel launches, the ViT's and the LLM's forward, top ops),
  for the bench's profile row.
* ``CourseInternVLDataset``: XTuner's ``InternVL_V1_5_Dataset`` with ``max_dynamic_patch`` as a
  parameter (XTuner reads it from the model's config.json only).
"""
from __future__ import annotations

import json
import os
import time

import torch
import torch.distributed as dist


from xtuner.dataset import InternVL_V1_5_Dataset, LLaVADataset  # noqa: E402  (after the torch patch above)
from xtuner.model import InternVL_V1_5, LLaVAModel, SupervisedFinetune  # noqa: E402
from mmengine.hooks import ProfilerHook  # noqa: E402

if not hasattr(torch.cpu, "is_bf16_supported"):
    torch.cpu.is_bf16_supported = lambda including_emulation=True: True  # bf16 runs (emulated) on any CPU


def launched() -> bool:
    """True under a launcher (torchrun sets WORLD_SIZE); XTuner's train.py sets LOCAL_RANK itself, so that says nothing."""
    return "WORLD_SIZE" in os.environ


def ensure_process_group() -> bool:
    """Start a one-process gloo process group unless one exists or a launcher will start one; True if started."""
    if not dist.is_available() or dist.is_initialized() or launched():
        return False
    dist.init_process_group(backend="gloo", store=dist.HashStore(), rank=0, world_size=1)
    return True


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


class _AutoModelIn:
    """transformers' AutoModel whose from_pretrained loads in DTYPE (XTuner's InternVL_V1_5 hard-codes bfloat16)."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def from_pretrained(self, *args, **kwargs):
        """AutoModel.from_pretrained with torch_dtype replaced by this loader's dtype."""
        from transformers import AutoModel  # noqa: PLC0415  (heavy; only a config that asks for load_dtype needs it)

        return AutoModel.from_pretrained(*args, **{**kwargs, "torch_dtype": self.dtype})


class CPUInternVL(InternVL_V1_5):
    """XTuner's InternVL_V1_5 made to train on a CPU: process group of one, float32, optional checkpointing."""

    def __init__(self, *args, dtype: str = "float32", gradient_checkpointing: bool = True,
                 load_dtype: str | None = None, **kwargs):
        ensure_process_group()
        if load_dtype:  # the weights as the checkpoint stores them: XTuner's bfloat16 load rounds them first
            import xtuner.model.internvl as internvl_module  # noqa: PLC0415  (the module whose AutoModel XTuner calls)

            saved, internvl_module.AutoModel = internvl_module.AutoModel, _AutoModelIn(getattr(torch, load_dtype))
            try:
                super().__init__(*args, **kwargs)
            finally:
                internvl_module.AutoModel = saved
        else:
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
                 dtype: str | None = None, fused_rmsnorm: bool = False, **kwargs):
        ensure_process_group()  # no launcher (a run without DeepSpeed): XTuner still calls get_rank() in every forward
        super().__init__(*args, **kwargs)
        if dtype == "float32":  # master weights for mmengine's AmpOptimWrapper (bf16 autocast computes)
            self.model.float()
        elif dtype is not None:
            raise ValueError(f"dtype must be None (XTuner's bfloat16) or 'float32', not {dtype!r}")
        if not gradient_checkpointing:
            self.gradient_checkpointing_disable()
        if llm_attn:
            set_llm_attention(self.model.language_model, llm_attn)
        if fused_rmsnorm:
            use_xtuner_rmsnorm_kernel(self.model.language_model)


def use_xtuner_rmsnorm_kernel(language_model) -> int:
    """Give LANGUAGE_MODEL's RMSNorms XTuner's fused Triton kernel, as XTuner's SFT model does (its InternVL model does not); how many."""
    from xtuner.model.modules import dispatch

    if not dispatch.SUPPORT_TRITON:
        raise RuntimeError("fused_rmsnorm needs triton (it comes with torch's CUDA wheels)")
    known = sum(type(m).__name__ in dispatch.RMS_DISPATCH_MAPPING for m in language_model.modules())
    if not known:  # the lever would silently change nothing
        raise ValueError(f"{type(language_model).__name__} has no RMSNorm XTuner's kernel is mapped to "
                         f"({', '.join(sorted(dispatch.RMS_DISPATCH_MAPPING))}): set fused_rmsnorm=False")
    dispatch.USE_TRITON_KERNEL = True  # what the USE_TRITON_KERNEL=1 environment variable sets when XTuner is imported
    dispatch.dispatch_rmsnorm_forward(language_model)
    return known


def _batch_size_of(data_batch) -> dict:
    """Samples, real and padded tokens, and image tiles in one of XTuner's collated batches (zeros where a field is missing)."""
    data = (data_batch or {}).get("data", data_batch) if isinstance(data_batch, dict) else {}
    ids, mask, pixels = data.get("input_ids"), data.get("attention_mask"), data.get("pixel_values")
    return {"samples": int(ids.shape[0]) if ids is not None else 0,
            "tokens": int(mask.sum()) if mask is not None else int(ids.numel()) if ids is not None else 0,
            "padded_tokens": int(ids.numel()) if ids is not None else 0,
            "tiles": _rows(pixels)}


def _rows(x) -> int:
    """Rows of a tensor, or of a list of tensors together (XTuner's InternVL collate keeps one pixel tensor per sample)."""
    if x is None:
        return 0
    return sum(int(t.shape[0]) for t in x) if isinstance(x, (list, tuple)) else int(x.shape[0])


def _label_forward(module, label: str) -> None:
    """Run MODULE's forward inside a profiler range named LABEL (its kernels' GPU time then adds up under LABEL)."""
    original = module.forward

    def forward(*args, **kwargs):
        with torch.profiler.record_function(label):
            return original(*args, **kwargs)

    module.forward = forward


class ProfileSummaryHook(ProfilerHook):
    """mmengine's ProfilerHook over ACTIVE iterations after WAIT; writes OUT_FILE: GPU busy time, kernel launches, ViT/LLM forward, top ops."""

    def __init__(self, out_file: str, wait: int = 4, active: int = 3, top: int = 15):
        self.out_file, self.active, self.top, self._stamps, self._batches = out_file, active, top, [], []
        super().__init__(by_epoch=False, profile_times=wait + 1 + active, activity_with_cuda=torch.cuda.is_available(),
                         schedule=dict(wait=wait, warmup=1, active=active, repeat=1), on_trace_ready=self._write)
        self._first_active = wait + 1

    def before_run(self, runner) -> None:
        model = getattr(runner.model, "module", runner.model)
        for label, suffix in (("vit.forward", "vision_model"), ("llm.forward", "language_model")):
            found = sorted((n for n, _ in model.named_modules() if n.endswith(suffix)), key=len)
            if found:
                _label_forward(model.get_submodule(found[0]), label)
        super().before_run(runner)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if not self._closed:  # once the summary is written, the rest of the run goes unsynchronised
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # iteration boundaries in wall-clock time, for the GPU's busy share
            self._stamps.append(time.perf_counter())
            self._batches.append(_batch_size_of(data_batch))
        super().after_train_iter(runner, batch_idx, data_batch, outputs)

    def _write(self, prof) -> None:
        events = prof.key_averages()
        per_iter = 1e-6 / self.active  # microseconds over the active iterations -> seconds per iteration
        cuda, annotation = torch.autograd.DeviceType.CUDA, (lambda e: getattr(e, "is_user_annotation", False))
        kernels = [e for e in events if e.device_type == cuda and not annotation(e)]
        ops = sorted((e for e in events if e.device_type != cuda and not annotation(e)),
                     key=lambda e: (e.self_device_time_total, e.self_cpu_time_total), reverse=True)
        stamps = self._stamps[self._first_active - 1:self._first_active + self.active]
        wall = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else None
        ranges = {}
        for e in events:  # the CPU-side range and (newer torch) its GPU-side copy: the larger total is the range's
            if e.key in ("vit.forward", "llm.forward"):
                ranges[e.key] = max(ranges.get(e.key, 0.0), e.device_time_total * per_iter)
        window = self._batches[self._first_active:self._first_active + self.active]
        sizes = {k: sum(b[k] for b in window) / len(window) for k in window[0]} if window else {}
        summary = {"active_iters": self.active, "wall_s_per_iter": wall, "batch_per_iter": sizes,
                   "gpu_busy_s_per_iter": sum(e.self_device_time_total for e in kernels) * per_iter,
                   "kernels_per_iter": sum(e.count for e in kernels) / self.active,
                   "cpu_ops_s_per_iter": sum(e.self_cpu_time_total for e in ops) * per_iter,
                   "forward_gpu_s_per_iter": ranges,
                   "top_ops": [{"op": e.key, "gpu_s_per_iter": e.self_device_time_total * per_iter,
                                "cpu_s_per_iter": e.self_cpu_time_total * per_iter, "calls_per_iter": e.count / self.active}
                               for e in ops[:self.top]]}
        tmp = f"{self.out_file}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
        os.replace(tmp, self.out_file)


class CourseInternVLDataset(InternVL_V1_5_Dataset):
    """XTuner's InternVL dataset with the number of tiles per image and the system prompt as parameters."""

    def __init__(self, *args, max_dynamic_patch: int | None = None, min_dynamic_patch: int | None = None,
                 system: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if system is not None:  # XTuner fixes the system prompt per LLM (InternLM2: "...InternLM (书生·浦语).")
            self._system = system
        if max_dynamic_patch is not None:
            self.max_dynamic_patch = int(max_dynamic_patch)
        if min_dynamic_patch is not None:
            self.min_dynamic_patch = int(min_dynamic_patch)
