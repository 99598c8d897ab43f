"""Benchmarks of InternVL2-2B's and -4B's shapes on a GPU: build a random-weight checkpoint, serve it, fine-tune it.

    python -m benchmarks build-2b artifacts/models/internvl2-2b-random      # < 1 min on a GPU
    python -m benchmarks build-4b artifacts/models/internvl2-4b-random      # < 1 min on a GPU
    python -m benchmarks serve artifacts/models/internvl2-4b-random         # LMDeploy vs transformers
    python -m benchmarks train artifacts/models/internvl2-4b-random         # XTuner LoRA and full + ZeRO-2
    python -m benchmarks levers artifacts/models/internvl2-2b-random        # one training run per speed lever

serve, train and levers accept any official-format InternVL2 folder (a downloaded InternVL2-2B too).
InternVL2-2B's shape (InternViT-300M-448px + MLP projector + internlm2-chat-1_8b, 92,553-token
vocabulary) runs the course's own InternLM2 code (labsupport/model/remote_code/modeling_internlm2.py).

Each command prints a table and writes its numbers to artifacts/bench/<command>.json. Speed does not
depend on the values of the weights, so a checkpoint with random weights of the published shape
(InternViT-300M-448px + MLP projector + Phi-3-mini) measures what InternVL2-4B would do; it answers
gibberish. The LLM uses Phi-3-mini-4k's rope (max_position_embeddings 4096, no long-rope scaling):
the benchmark prompts are a few hundred tokens, and the 128k variant's long-rope factors only change
the rotary angles, not the work per token.

The decode bound: generating one token at batch 1 reads every LLM weight once (the embedding table
excepted: only one row of it), so tokens/s <= copy bandwidth / bytes of those weights. The bandwidth
is measured here (a device-to-device copy of a 4 GiB buffer; bytes read + written per second).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from labsupport.core.checkpoints import write_json_atomic
from labsupport.core.paths import artifacts_dir
from labsupport.model.params import internvl2_2b_config
from labsupport.model.params import internvl2_4b_config
from labsupport.train import memory

GIB = 1024**3
DEFAULT_PEAK_FLOPS = 989e12  # H100 SXM, dense bf16 (the spec sheet's 1979 TFLOPS is with 2:4 sparsity)
MODEL_4B = "internvl2-4b-random"
MODEL_2B = "internvl2-2b-random"
BUILD_STAMP = ".labsupport-bench-build.json"
QUESTION = "What colour are the objects on the plate? Describe the plate in detail."


def bench_dir(artifacts: str | os.PathLike | None = None) -> Path:
    """The folder the benchmark results go to: ARTIFACTS/bench/."""
    out = artifacts_dir(artifacts) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    return out


def need_cuda(what: str) -> None:
    """Raise a clear error when no CUDA GPU is visible (WHAT needs one)."""
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError(f"{what} needs PyTorch with CUDA; torch does not import here: {exc}") from exc
    if not torch.cuda.is_available():
        raise RuntimeError(f"{what} needs a CUDA GPU and none is visible (torch.cuda.is_available() is False). "
                           "Run it on a GPU machine (see docs/benchmarks.md), or pass --device cpu where the "
                           "command offers it, for a functional check with a tiny model.")


BUILDS = {"build-2b": (MODEL_2B, internvl2_2b_config, "InternVL2-2B"),
          "build-4b": (MODEL_4B, internvl2_4b_config, "InternVL2-4B")}


def shape_name(config: dict) -> str:
    """Which published InternVL2 shape CONFIG has ("InternVL2-2B", "InternVL2-4B", ...), or "custom"."""
    from labsupport.model.params import family

    def key(c: dict) -> tuple:
        l = c["llm_config"]
        return (l["hidden_size"], l["num_hidden_layers"], l["intermediate_size"], l["vocab_size"])

    return next((name for name, cfg in family().items() if key(cfg) == key(config)), "custom")


def vlm_shape(config: dict, name: str = "model") -> "memory.VLMShape":
    """The memory estimator's view (labsupport.train.memory.VLMShape) of an InternVL config dict."""
    from labsupport.train import memory

    return memory.shape_of(config, name)


# ---- build ----------------------------------------------------------------------------------------
def _shards(shapes: dict[str, tuple], shard_bytes: int, itemsize: int = 2) -> list[list[str]]:
    """Tensor names (sorted) grouped into shards of at most SHARD_BYTES (a larger tensor gets a shard of its own)."""
    groups: list[list[str]] = [[]]
    size = 0
    for name in sorted(shapes):
        n = itemsize
        for d in shapes[name]:
            n *= d
        if groups[-1] and size + n > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += n
    return groups


def write_random_weights(config: dict, out: str | os.PathLike, device: str = "cuda", seed: int = 0,
                         shard_bytes: int = 2 * GIB, tokenizer_vocab: int | None = None) -> dict:
    """Write bf16 random weights for CONFIG into OUT as safetensors shards (+ index), generated on DEVICE.

    Names and shapes come from the course's own modeling code on the meta device; values follow the
    tiny model's rule (zeros for biases, ones for norms and layer scales, else N(0, initializer_range)).
    With TOKENIZER_VOCAB, the output-head rows of ids the tokenizer lacks are zero: their logit is 0
    while the largest of the real ones is positive, so greedy decoding only emits ids the tokenizer can
    turn into text (LMDeploy detokenizes every token). The work per token is unchanged.
    Returns {"parameters", "bytes", "shards", "seconds"}.
    """
    import torch
    from safetensors.torch import save_file

    from labsupport.model.tinymodel import init_kind, parameter_shapes

    out = Path(out)
    started = time.time()
    shapes = parameter_shapes(config)
    std = float(config["llm_config"].get("initializer_range", 0.02))
    gen = torch.Generator(device=device).manual_seed(seed)
    groups = _shards(shapes, shard_bytes)
    files = ["model.safetensors"] if len(groups) == 1 else \
        [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    weight_map, total_bytes, total_params = {}, 0, 0
    for names, fname in zip(groups, files):
        tensors = {}
        for name in names:
            kind = init_kind(name, shapes[name])
            t = torch.empty(shapes[name], dtype=torch.bfloat16, device=device)
            if kind == "zeros":
                t.zero_()
            elif kind == "ones":
                t.fill_(1.0)
            else:
                t.normal_(0.0, std, generator=gen)
            if tokenizer_vocab is not None and name.endswith(("lm_head.weight", "language_model.output.weight")):
                t[tokenizer_vocab:].zero_()
            tensors[name] = t.cpu()
            weight_map[name] = fname
            total_params += t.numel()
            total_bytes += t.numel() * t.element_size()
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        del tensors
    if len(files) > 1:
        write_json_atomic(out / "model.safetensors.index.json",
                          {"metadata": {"total_size": total_bytes}, "weight_map": weight_map})
    return {"parameters": total_params, "bytes": total_bytes, "shards": len(files),
            "seconds": round(time.time() - started, 2)}


def _config_hash(config: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def build_model(out_dir: str | os.PathLike, config: dict, device: str = "cuda", seed: int = 0,
                force: bool = False) -> dict:
    """Write a random-weight checkpoint of CONFIG's shape (official format, course tokenizer) to OUT_DIR; skip when current.

    Returns a summary: path, parameters (written and counted analytically), bytes, seconds, skipped.
    """
    from labsupport.model.params import count_parameters
    from labsupport.model.tinymodel import write_model_files

    out = Path(out_dir)
    digest = _config_hash(config)
    counted = count_parameters(config)
    stamp_file = out / BUILD_STAMP
    if not force and stamp_file.is_file():
        try:
            old = json.loads(stamp_file.read_text())
            if old.get("config_sha256") == digest:
                return {**old, "path": str(out), "skipped": True}
        except ValueError:
            pass  # unreadable stamp: rebuild
    if out.is_dir() and any(out.iterdir()) and not stamp_file.exists():
        raise FileExistsError(f"{out} exists and was not written by benchmarks (no {BUILD_STAMP}); refusing to "
                              "overwrite it. Choose another OUT_DIR or delete that folder yourself.")
    if device.startswith("cuda"):
        need_cuda("building the benchmark checkpoint on the GPU")
    started = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        vocab = write_model_files(tmp, config)
        weights = write_random_weights(config, tmp, device=device, seed=seed, tokenizer_vocab=vocab)
        if weights["parameters"] != counted["total"]:
            raise RuntimeError(f"the checkpoint holds {weights['parameters']:,} parameters but labsupport.model.params counts "
                               f"{counted['total']:,} for this config: the modeling code and the counter disagree")
        summary = {"config_sha256": digest, "parameters": weights["parameters"], "counted": counted,
                   "bytes": weights["bytes"], "shards": weights["shards"], "tokenizer_vocab": vocab,
                   "llm_vocab": config["llm_config"]["vocab_size"], "device": device,
                   "weights_seconds": weights["seconds"], "seconds": round(time.time() - started, 2)}
        write_json_atomic(tmp / BUILD_STAMP, summary)
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {**summary, "path": str(out), "skipped": False}


# ---- bandwidth and the decode bound ---------------------------------------------------------------
def measure_copy_bandwidth(nbytes: int = 4 * GIB, device: str = "cuda", repeats: int = 10) -> dict:
    """Copy an NBYTES buffer into another on DEVICE REPEATS times; bandwidth = bytes read + written per second."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    src.fill_(1)
    dst.copy_(src)  # warm-up
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    if cuda:
        end.record()
        torch.cuda.synchronize(device)
        seconds = start.elapsed_time(end) / 1000
    else:
        seconds = time.perf_counter() - t0
    del src, dst
    if cuda:
        torch.cuda.empty_cache()
    return {"bytes": nbytes, "repeats": repeats, "seconds": seconds,
            "bandwidth_bytes_per_s": 2 * nbytes * repeats / seconds}


def decode_bytes_per_token(llm_config: dict, bytes_per_param: float = 2.0) -> int:
    """Bytes of LLM weights read to generate one token at batch 1: all of them but the embedding table (one row)."""
    from labsupport.model.params import count_llm

    embedding = llm_config["vocab_size"] * llm_config["hidden_size"]
    return int((count_llm(llm_config) - embedding + llm_config["hidden_size"]) * bytes_per_param)


def decode_bound(bandwidth_bytes_per_s: float, bytes_per_token: float) -> float:
    """The most tokens/s a memory-bound batch-1 decode can reach: bandwidth / bytes read per token."""
    if bytes_per_token <= 0:
        raise ValueError(f"bytes_per_token must be positive, not {bytes_per_token}")
    return bandwidth_bytes_per_s / bytes_per_token


def save_results(name: str, data: dict, out: str | os.PathLike | None = None) -> Path:
    """Write DATA (json) atomically to OUT, default artifacts/bench/NAME.json; return the path."""
    path = Path(out) if out else bench_dir() / f"{name}.json"
    write_json_atomic(path, data)
    return path


def _versions() -> dict:
    from importlib import metadata

    found = {}
    for pkg in ("torch", "transformers", "lmdeploy", "xtuner", "deepspeed", "mmengine"):
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            found[pkg] = None
    return found


def gpu_name() -> str | None:
    """The first GPU's name from nvidia-smi (None when it is missing), without starting CUDA in this process."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = out.stdout.strip().splitlines()
    return names[0].strip() if out.returncode == 0 and names else None
