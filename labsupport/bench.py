"""Benchmarks of InternVL2-2B's and -4B's shapes on a GPU: build a random-weight checkpoint, serve it, fine-tune it.

    python -m labsupport.bench build-2b artifacts/models/internvl2-2b-random      # < 1 min on a GPU
    python -m labsupport.bench build-4b artifacts/models/internvl2-4b-random      # < 1 min on a GPU
    python -m labsupport.bench serve artifacts/models/internvl2-4b-random         # LMDeploy vs transformers
    python -m labsupport.bench train artifacts/models/internvl2-4b-random         # XTuner LoRA and full + ZeRO-2
    python -m labsupport.bench levers artifacts/models/internvl2-2b-random        # one training run per speed lever

serve, train and levers accept any official-format InternVL2 folder (a downloaded InternVL2-2B too).
InternVL2-2B's shape (InternViT-300M-448px + MLP projector + internlm2-chat-1_8b, 92,553-token
vocabulary) runs the course's own InternLM2 code (labsupport/remote_code/modeling_internlm2.py).

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

import argparse
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from .checkpoints import write_json_atomic
from .paths import artifacts_dir

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


# ---- shapes ---------------------------------------------------------------------------------------
def internvl2_4b_config() -> dict:
    """config.json of InternVL2-4B's published shape (from labsupport/data/internvl2_family.json), Phi-3-mini-4k rope."""
    from .params import load_family_file
    from .tinymodel import internvl_config

    fam = load_family_file()
    v, llm = fam["vision"], fam["models"]["InternVL2-4B"]["llm_config"]
    vision = {k: v[k] for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                                "image_size", "patch_size")}
    lm = {k: llm[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
                              "intermediate_size")}
    lm["max_position_embeddings"] = 4096  # Phi-3-mini-4k; the 128k model adds long-rope scaling on top
    return internvl_config(vision, lm, llm["vocab_size"])


def internvl2_2b_config() -> dict:
    """config.json of InternVL2-2B's published shape (labsupport/data/internvl2_family.json) with the course's InternLM2 LLM."""
    from .params import load_family_file
    from .tinymodel import internvl_config

    fam = load_family_file()
    v, llm = fam["vision"], fam["models"]["InternVL2-2B"]["llm_config"]
    vision = {k: v[k] for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                                "image_size", "patch_size")}
    lm = {k: llm[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
                              "intermediate_size")}
    lm["max_position_embeddings"] = 32768  # internlm2-chat-1_8b's published value
    return internvl_config(vision, lm, llm["vocab_size"], llm_arch="InternLM2ForCausalLM")


BUILDS = {"build-2b": (MODEL_2B, internvl2_2b_config, "InternVL2-2B"),
          "build-4b": (MODEL_4B, internvl2_4b_config, "InternVL2-4B")}


def shape_name(config: dict) -> str:
    """Which published InternVL2 shape CONFIG has ("InternVL2-2B", "InternVL2-4B", ...), or "custom"."""
    from .params import family

    def key(c: dict) -> tuple:
        l = c["llm_config"]
        return (l["hidden_size"], l["num_hidden_layers"], l["intermediate_size"], l["vocab_size"])

    return next((name for name, cfg in family().items() if key(cfg) == key(config)), "custom")


def vlm_shape(config: dict, name: str = "model") -> "memory.VLMShape":
    """The memory estimator's view (labsupport.memory.VLMShape) of an InternVL config dict."""
    from . import memory

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

    from .tinymodel import init_kind, parameter_shapes

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
    from .params import count_parameters
    from .tinymodel import write_model_files

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
        raise FileExistsError(f"{out} exists and was not written by labsupport.bench (no {BUILD_STAMP}); refusing to "
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
            raise RuntimeError(f"the checkpoint holds {weights['parameters']:,} parameters but labsupport.params counts "
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
    from .params import count_llm

    embedding = llm_config["vocab_size"] * llm_config["hidden_size"]
    return int((count_llm(llm_config) - embedding + llm_config["hidden_size"]) * bytes_per_param)


def decode_bound(bandwidth_bytes_per_s: float, bytes_per_token: float) -> float:
    """The most tokens/s a memory-bound batch-1 decode can reach: bandwidth / bytes read per token."""
    if bytes_per_token <= 0:
        raise ValueError(f"bytes_per_token must be positive, not {bytes_per_token}")
    return bandwidth_bytes_per_s / bytes_per_token


# ---- tables and results ---------------------------------------------------------------------------
def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]], digits: int = 1) -> str:
    """A fixed-width text table of ROWS; COLUMNS = [(key, heading)]; missing values print as '-'."""
    cells = [[_cell(r.get(k), digits) for k, _ in columns] for r in rows]
    heads = [h for _, h in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    first = lambda i: str.ljust if i == 0 else str.rjust  # noqa: E731
    line = lambda cs: "  ".join(first(i)(c, w) for i, (c, w) in enumerate(zip(cs, widths)))  # noqa: E731
    return "\n".join([line(heads), line(["-" * w for w in widths])] + [line(c) for c in cells])


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


# ---- serve ----------------------------------------------------------------------------------------
SERVE_ROWS = {  # name -> how that row runs
    "bandwidth": {"backend": "bandwidth"},
    "lmdeploy": {"backend": "lmdeploy", "eager_mode": False, "prefix_caching": False},
    "lmdeploy-eager": {"backend": "lmdeploy", "eager_mode": True, "prefix_caching": False},
    "lmdeploy-prefix-cache": {"backend": "lmdeploy", "eager_mode": False, "prefix_caching": True},
    # the engine's per-step bookkeeping off (metrics), then also the engine in its own process (no shared GIL)
    "lmdeploy-no-metrics": {"backend": "lmdeploy", "eager_mode": False, "prefix_caching": True,
                            "engine": {"enable_metrics": False}},
    "lmdeploy-mp-engine": {"backend": "lmdeploy", "eager_mode": False, "prefix_caching": True,
                           "engine": {"enable_metrics": False, "enable_mp_engine": True}},
    "transformers": {"backend": "transformers"},
}
DEFAULT_SERVE_ROWS = ("lmdeploy", "transformers", "lmdeploy-eager", "lmdeploy-prefix-cache")


def bench_image():
    """The benchmark's 448x448 image (one tile): a plate from the course task generator."""
    from .datasets import draw_plate

    return draw_plate("red", "square", 2, (448, 448), seed=1)


def _timed(fn, sync=None) -> tuple[float, Any]:
    t = time.perf_counter()
    result = fn()
    if sync:
        sync()
    return time.perf_counter() - t, result


def _decode_rate(new_tokens: int, t_full: float, t_first: float) -> float | None:
    """Tokens per second after the first: (NEW_TOKENS - 1) / (time for all - time for one)."""
    if new_tokens < 2 or t_full <= t_first:
        return None
    return (new_tokens - 1) / (t_full - t_first)


def serve_lmdeploy(model_dir: str, eager_mode: bool, prefix_caching: bool, new_tokens: int = 256,
                   concurrency: int = 64, session_len: int = 4096, engine_options: dict | None = None) -> dict:
    """One LMDeploy (PyTorch engine) row: load time, TTFT, batch-1 decode tokens/s, CONCURRENCY-request throughput."""
    need_cuda("LMDeploy's PyTorch engine")
    from lmdeploy import ChatTemplateConfig, GenerationConfig, PytorchEngineConfig, pipeline

    image = bench_image()
    request = (QUESTION, image)
    t_load = time.perf_counter()
    engine = PytorchEngineConfig(tp=1, session_len=session_len, eager_mode=eager_mode,
                                 enable_prefix_caching=prefix_caching, max_batch_size=max(concurrency, 1),
                                 **(engine_options or {}))
    pipe = pipeline(model_dir, backend_config=engine, trust_remote_code=True, log_level="ERROR",
                    chat_template_config=ChatTemplateConfig(model_name="hf", model_path=model_dir))
    load_s = time.perf_counter() - t_load
    print(f"[lmdeploy] loaded in {load_s:.1f} s (eager_mode={eager_mode}, prefix_caching={prefix_caching}, "
          f"{engine_options or {}})", flush=True)
    one = GenerationConfig(max_new_tokens=1, ignore_eos=True, do_sample=False)
    full = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, ignore_eos=True, do_sample=False)
    pipe(request, gen_config=GenerationConfig(max_new_tokens=8, ignore_eos=True, do_sample=False))  # warm-up
    pipe([request] * 4, gen_config=GenerationConfig(max_new_tokens=8, ignore_eos=True, do_sample=False))
    ttft = sorted(_timed(lambda: pipe(request, gen_config=one))[0] for _ in range(3))[1]
    runs = [_timed(lambda: pipe(request, gen_config=full)) for _ in range(2)]
    t_full = statistics.median(t for t, _ in runs)
    resp = runs[-1][1]
    print(f"[lmdeploy] TTFT {ttft * 1000:.0f} ms; {resp.generate_token_len} tokens in {t_full:.2f} s", flush=True)
    t_batch, replies = _timed(lambda: pipe([request] * concurrency, gen_config=full))
    batch_tokens = sum(r.generate_token_len for r in replies)
    print(f"[lmdeploy] {concurrency} requests: {batch_tokens} tokens in {t_batch:.2f} s", flush=True)
    result = {"load_s": load_s, "prompt_tokens": resp.input_token_len, "new_tokens": resp.generate_token_len,
              "ttft_s": ttft, "batch1_full_s": t_full,
              "decode_tokens_per_s": _decode_rate(resp.generate_token_len, t_full, ttft),
              "batch_requests": len(replies), "batch_tokens": batch_tokens, "batch_s": t_batch,
              "throughput_tokens_per_s": batch_tokens / t_batch, "batch_truncated": False}
    return result  # no pipe.close(): the row's process writes this and exits, which frees the GPU


def serve_transformers(model_dir: str, new_tokens: int = 256, concurrency: int = 64, batch_size: int = 64,
                       budget_s: float = 90.0, device: str = "cuda") -> dict:
    """One transformers row (the checkpoint's remote code, `generate`): TTFT = prefill time, batch-1 decode, batches."""
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer, StoppingCriteria, StoppingCriteriaList

    from .deploy import model_prompt
    from .tiling import load_image

    if device.startswith("cuda"):
        need_cuda("the transformers benchmark on the GPU")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else None  # noqa: E731
    t_load = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    dtype_arg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True, **{dtype_arg: dtype}).eval().to(device)
    if sync:
        sync()
    load_s = time.perf_counter() - t_load
    print(f"[transformers] loaded in {load_s:.1f} s on {device} ({dtype})", flush=True)
    pixels = load_image(bench_image(), max_num=12).to(device, dtype)
    prompt = model_prompt(model_dir, QUESTION).replace(
        "<IMG_CONTEXT>", "<IMG_CONTEXT>" * (model.num_image_token * pixels.shape[0]), 1)
    ids = tok(prompt, return_tensors="pt")["input_ids"].to(device)
    model.img_context_token_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    eos = tok.convert_tokens_to_ids("<|im_end|>" if "<|im_end|>" in tok.get_vocab() else "<|end|>")  # InternLM2 / Phi-3
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos

    class Deadline(StoppingCriteria):
        """Stop every sequence once the wall-clock DEADLINE passes (caps the batch work)."""

        def __init__(self, deadline: float):
            self.deadline = deadline

        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), time.perf_counter() > self.deadline, dtype=torch.bool,
                              device=input_ids.device)

    def generate(batch: int, n: int, deadline: float | None = None) -> int:
        """Generate N new tokens for BATCH copies of the request; return the new tokens per sequence."""
        kw = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False, "eos_token_id": eos, "pad_token_id": pad}
        if deadline is not None:
            kw["stopping_criteria"] = StoppingCriteriaList([Deadline(deadline)])
        with torch.inference_mode():
            out = model.generate(pixel_values=pixels.repeat(batch, 1, 1, 1), input_ids=ids.repeat(batch, 1),
                                 attention_mask=torch.ones_like(ids).repeat(batch, 1), **kw)
        # with inputs_embeds, generate returns only the new tokens; some versions prepend the prompt's ids
        return out.shape[1] - ids.shape[1] if out.shape[1] > n else out.shape[1]

    generate(1, 4)  # warm-up
    ttft = sorted(_timed(lambda: generate(1, 1), sync)[0] for _ in range(3))[1]
    runs = [_timed(lambda: generate(1, new_tokens), sync) for _ in range(2)]
    t_full, got = statistics.median(t for t, _ in runs), runs[-1][1]
    print(f"[transformers] TTFT {ttft * 1000:.0f} ms; {got} tokens in {t_full:.2f} s", flush=True)
    done = tokens = 0
    truncated = False
    t0 = time.perf_counter()
    deadline = t0 + budget_s
    while done < concurrency:
        if time.perf_counter() > deadline:
            truncated = True
            break
        b = min(batch_size, concurrency - done)
        n = generate(b, new_tokens, deadline)
        if sync:
            sync()
        tokens += b * n
        done += b
        truncated = truncated or n < new_tokens
        print(f"[transformers] batch of {b}: {n} tokens each, {time.perf_counter() - t0:.1f} s so far", flush=True)
    t_batch = time.perf_counter() - t0
    return {"load_s": load_s, "prompt_tokens": int(ids.shape[1]), "new_tokens": got, "ttft_s": ttft,
            "batch1_full_s": t_full, "decode_tokens_per_s": _decode_rate(got, t_full, ttft),
            "batch_requests": done, "batch_tokens": tokens, "batch_s": t_batch,
            "throughput_tokens_per_s": tokens / t_batch if t_batch > 0 else None, "batch_size": batch_size,
            "batch_truncated": truncated, "budget_s": budget_s}


def serve_row(name: str, model_dir: str, new_tokens: int, concurrency: int, hf_batch: int, hf_budget_s: float,
              device: str = "cuda", bandwidth_gib: float = 4.0) -> dict:
    """Run one row of the serve benchmark in this process (the `serve` command runs each in a fresh process)."""
    spec = SERVE_ROWS[name]
    if spec["backend"] == "bandwidth":
        if device.startswith("cuda"):
            need_cuda("the bandwidth measurement")
        import torch

        bw = measure_copy_bandwidth(int(bandwidth_gib * GIB), device=device)
        gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
        print(f"[bandwidth] {bw['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s on {gpu}", flush=True)
        return {**bw, "gpu": gpu, "versions": _versions()}
    if spec["backend"] == "lmdeploy":
        return serve_lmdeploy(model_dir, spec["eager_mode"], spec["prefix_caching"], new_tokens, concurrency,
                              engine_options=spec.get("engine"))
    return serve_transformers(model_dir, new_tokens, concurrency, hf_batch, hf_budget_s, device)


def _run_child(cmd: list[str], timeout: float, prefix: str) -> tuple[int | None, str]:
    """Run CMD in its own process group, echo its output with PREFIX, kill it after TIMEOUT; (exit code or None, tail)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    tail: list[str] = []
    deadline = time.time() + timeout
    import threading

    def reader():
        for line in proc.stdout:
            tail.append(line.rstrip())
            del tail[:-40]
            if "Warning" not in line and "warn(" not in line:
                print(f"  {prefix}| {line.rstrip()}", flush=True)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    while proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the row's own process group (LMDeploy may start workers)
        proc.wait()
        thread.join(5)
        return None, "\n".join(tail)
    thread.join(5)
    return proc.returncode, "\n".join(tail)


def serve(model_dir: str, rows: Sequence[str] = DEFAULT_SERVE_ROWS, new_tokens: int = 256, concurrency: int = 64,
          hf_batch: int = 64, hf_budget_s: float = 90.0, budget_s: float = 330.0, row_timeout_s: float = 150.0,
          device: str = "cuda", out: str | os.PathLike | None = None) -> dict:
    """The serve benchmark: bandwidth, then each row in a fresh process; print the table, write serve.json."""
    unknown = [r for r in rows if r not in SERVE_ROWS or r == "bandwidth"]
    if unknown:
        raise ValueError(f"unknown serve rows {unknown}; choose from {[r for r in SERVE_ROWS if r != 'bandwidth']}")
    if device == "cpu" and any(SERVE_ROWS[r]["backend"] == "lmdeploy" for r in rows):
        raise ValueError("LMDeploy's engine needs a CUDA GPU: on a CPU ask only for the 'transformers' row")
    if device.startswith("cuda"):
        need_cuda("the serve benchmark")
    model_dir = str(Path(model_dir).resolve())
    config = json.loads((Path(model_dir) / "config.json").read_text())
    per_token = decode_bytes_per_token(config["llm_config"])
    started = time.time()
    results: dict = {"model": model_dir, "new_tokens": new_tokens, "concurrency": concurrency,
                     "llm_bytes_per_token": per_token, "device": device, "rows": []}
    bandwidth = None
    for name in ("bandwidth", *rows):
        left = budget_s - (time.time() - started)
        if name != "bandwidth" and left < 60:
            results["rows"].append({"row": name, "error": f"skipped: {left:.0f} s left of the {budget_s:.0f} s budget"})
            print(f"[serve] skipping {name}: time budget", flush=True)
            continue
        print(f"[serve] {name} ({time.time() - started:.0f} s elapsed)", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            result_file = Path(tmp) / "row.json"
            cmd = [sys.executable, "-m", "labsupport.bench", "serve-row", name, model_dir, "--result", str(result_file),
                   "--new-tokens", str(new_tokens), "--concurrency", str(concurrency), "--hf-batch", str(hf_batch),
                   "--hf-budget-s", str(hf_budget_s), "--device", device,
                   "--bandwidth-gib", "4" if device.startswith("cuda") else "0.25"]
            code, tail = _run_child(cmd, min(row_timeout_s, max(left, 30)), name)
            if code == 0 and result_file.is_file():
                row = {"row": name, **SERVE_ROWS[name], **json.loads(result_file.read_text())}
            else:
                why = "timed out" if code is None else f"exit status {code}"
                row = {"row": name, **SERVE_ROWS[name], "error": f"{why}; last lines:\n{tail[-1500:]}"}
        if name == "bandwidth":
            results["bandwidth"] = row
            bandwidth = row.get("bandwidth_bytes_per_s")
            results["gpu"] = row.get("gpu")
            results["versions"] = row.get("versions")
            continue
        if bandwidth and row.get("decode_tokens_per_s"):
            row["decode_bound_tokens_per_s"] = decode_bound(bandwidth, per_token)
            row["fraction_of_bound"] = row["decode_tokens_per_s"] / row["decode_bound_tokens_per_s"]
        results["rows"].append(row)
        write_json_atomic(Path(out) if out else bench_dir() / "serve.json", results)  # partial results survive a kill
    results["seconds"] = round(time.time() - started, 1)
    path = save_results("serve", results, out)
    print(serve_table(results))
    print(f"[serve] wrote {path} in {results['seconds']:.0f} s")
    return results


def serve_table(results: dict) -> str:
    """The serve results as a text table (one row per backend/option)."""
    rows = []
    for r in results["rows"]:
        row = dict(r)
        row["ttft_ms"] = r["ttft_s"] * 1000 if r.get("ttft_s") is not None else None
        row["pct"] = 100 * r["fraction_of_bound"] if r.get("fraction_of_bound") is not None else None
        if r.get("batch_requests") is not None:
            row["batch"] = f"{r['batch_requests']}{' (capped)' if r.get('batch_truncated') else ''}"
        row["note"] = (r.get("error") or "").splitlines()[0][:60] if r.get("error") else ""
        rows.append(row)
    bw = (results.get("bandwidth") or {}).get("bandwidth_bytes_per_s")
    head = (f"GPU {results.get('gpu', '?')}; copy bandwidth {bw / 1e9:,.0f} GB/s; " if bw else "no bandwidth measured; ") + \
        f"LLM weights read per token {results['llm_bytes_per_token'] / 1e9:.2f} GB; {results['new_tokens']} new tokens"
    cols = [("row", "row"), ("load_s", "load s"), ("prompt_tokens", "prompt"), ("ttft_ms", "TTFT ms"),
            ("decode_tokens_per_s", "decode tok/s"), ("decode_bound_tokens_per_s", "bound tok/s"), ("pct", "% bound"),
            ("batch", f"requests/{results['concurrency']}"), ("throughput_tokens_per_s", "batch tok/s"), ("note", "note")]
    return head + "\n" + format_table(rows, cols)


# ---- train ----------------------------------------------------------------------------------------
def train_flops_per_sample(config: dict, mode: str, tokens: int, tiles: int, freeze_vit: bool = True) -> float:
    """Model FLOPs of one training sample of TOKENS LLM tokens and TILES image tiles (no recomputation counted).

    LLM: forward 2N + attention 4·L·h·s per token (N: matmul weights, the embedding table excluded);
    backward 2N for activation gradients + 2N for weight gradients when the LLM trains (full), only the
    first with LoRA (adapters' own FLOPs left out), and twice the attention. Frozen ViT: forward only,
    1025 tokens per tile. Projector (always trained): 6·P per image token.
    """
    from .params import count_parameters

    if mode not in ("lora", "qlora", "full"):
        raise ValueError(f"mode must be lora, qlora or full, not {mode!r}")
    counts = count_parameters(config)
    llm, vit = config["llm_config"], config["vision_config"]
    h, layers = llm["hidden_size"], llm["num_hidden_layers"]
    n_llm = counts["llm"] - llm["vocab_size"] * h
    attn_fwd = 4 * layers * h * tokens  # per token
    llm_flops = tokens * ((6 if mode == "full" else 4) * n_llm + 3 * attn_fwd)
    vit_tokens = (vit["image_size"] // vit["patch_size"]) ** 2 + 1
    vit_fwd = 2 * counts["vit"] * vit_tokens + 4 * vit["num_hidden_layers"] * vit["hidden_size"] * vit_tokens ** 2
    vit_flops = tiles * vit_fwd * (1 if freeze_vit else 3)
    image_tokens = int((vit["image_size"] // vit["patch_size"]) ** 2 * config.get("downsample_ratio", 0.5) ** 2)
    proj_flops = tiles * image_tokens * 6 * counts["projector"]
    return float(llm_flops + vit_flops + proj_flops)


def dataset_stats(config_path: str | os.PathLike, samples: int = 128) -> dict:
    """Tokens and tiles per sample of the dataset an XTuner config trains on (SAMPLES items spread evenly)."""
    from xtuner.registry import BUILDER

    from .xtuner import load_config

    cfg = load_config(config_path)
    ds = BUILDER.build(cfg.llava_dataset)
    n = len(ds)
    picks = sorted({int(i * n / min(samples, n)) for i in range(min(samples, n))})
    tokens, tiles = [], []
    for i in picks:
        item = ds[i]
        tokens.append(len(item["input_ids"]))
        tiles.append(int(item["pixel_values"].shape[0]))
    return {"samples_read": len(picks), "dataset_size": n, "mean_tokens": statistics.mean(tokens),
            "max_tokens": max(tokens), "mean_tiles": statistics.mean(tiles), "max_tiles": max(tiles),
            "tokens": tokens, "tiles": tiles}


def summarize_scalars(scalars: list[dict], warmup: int) -> dict:
    """Seconds per iteration after WARMUP iterations, median data_time, and the peak memory (GiB).

    s_per_iter is wall-clock time between the log lines of iteration WARMUP and the last one (launch
    stamps each line with `seconds`) divided by the iterations between them; mmengine's own `time` is a
    moving average over 10 iterations, so its median still carries the slow first iterations. Without
    `seconds` (or that line) it falls back to the median of `time` (kept as mmengine_s_per_iter).
    """
    timed = [r for r in scalars if "time" in r and r["iter"] > warmup]
    if not timed:
        raise ValueError(f"no logged iteration after the {warmup} warm-up iterations: was log_interval > 1 "
                         "or did training stop early?")
    mem = [r["memory"] for r in scalars if "memory" in r]
    smoothed = statistics.median(r["time"] for r in timed)
    start = next((r for r in scalars if r["iter"] == warmup and "seconds" in r), None)
    end = timed[-1]
    wall = ((end["seconds"] - start["seconds"]) / (end["iter"] - warmup)
            if start is not None and "seconds" in end and end["seconds"] > start["seconds"] else None)
    return {"measured_iters": len(timed), "s_per_iter": wall or smoothed, "mmengine_s_per_iter": smoothed,
            "clock": "wall" if wall else "mmengine",
            "data_s_per_iter": statistics.median(r.get("data_time", 0.0) for r in timed),
            "peak_memory_gib": max(mem) / 1024 if mem else None,
            "loss_first_last": [scalars[0].get("loss"), scalars[-1].get("loss")] if scalars else None}


def _no_optimizer_in_checkpoint(config_path: Path) -> None:
    """Make the config's final checkpoint model-only: a ZeRO-2 full fine-tune's optimizer state of 4B is ~50 GB."""
    text = config_path.read_text(encoding="utf-8")
    if text.count("save_optimizer=True") != 1:
        raise RuntimeError(f"{config_path}: expected exactly one 'save_optimizer=True' in the generated config "
                           "(labsupport.xtuner.render_config changed?)")
    tmp = config_path.with_name(config_path.name + ".tmp")
    tmp.write_text(text.replace("save_optimizer=True", "save_optimizer=False"), encoding="utf-8")
    os.replace(tmp, config_path)


_SAMPLER_LINE = ("    sampler=dict(type=LengthGroupedSampler, length_property='modality_length',\n"
                 "                 per_device_batch_size=batch_size * accumulative_counts),\n")


_PLAIN_OPTIM = ("    type=OptimWrapper,  # AmpOptimWrapper needs CUDA and fails on XTuner's bf16 gradients\n")


def apply_levers(config_path: Path, checkpointing: bool = True, attention: str | None = None,
                 group_by_length: bool = True, amp: bool = False, profile: bool = False,
                 fused_rmsnorm: bool = False) -> list[str]:
    """Edit a generated GPU config for the speed levers XTuner's own config cannot set; return what changed.

    CHECKPOINTING False or ATTENTION ("sdpa"/"eager") swap XTuner's InternVL_V1_5 for
    labsupport.xtuner_shims.LeverInternVL; GROUP_BY_LENGTH False swaps XTuner's LengthGroupedSampler
    (batches of similar length, XTuner's default) for mmengine's DefaultSampler (random order). AMP (a config
    without DeepSpeed) trains float32 master weights under mmengine's AmpOptimWrapper with bfloat16 autocast
    (XTuner loads bf16 weights, whose gradients AmpOptimWrapper cannot unscale) in a one-process group.
    FUSED_RMSNORM gives the LLM XTuner's Triton RMSNorm (through LeverInternVL).
    PROFILE adds labsupport.xtuner_shims.ProfileSummaryHook (mmengine's ProfilerHook over iterations 6-8),
    which writes profile.json beside the config.
    """
    text = config_path.read_text(encoding="utf-8")
    changed = []
    if not checkpointing or attention or amp or fused_rmsnorm:
        head = "model = dict(\n    type=InternVL_V1_5,\n"
        if text.count(head) != 1:
            raise RuntimeError(f"{config_path}: expected one 'model = dict(type=InternVL_V1_5' block (GPU config, "
                               "rendered with gradient checkpointing on?)")
        dtype = "\n    dtype='float32',  # master weights for AmpOptimWrapper" if amp else ""
        if fused_rmsnorm:
            dtype += "\n    fused_rmsnorm=True,  # XTuner's Triton RMSNorm kernel (its InternVL model does not dispatch it)"
        text = text.replace(head, "model = dict(\n    type=LeverInternVL,  # XTuner's InternVL_V1_5 + its levers\n"
                            f"    gradient_checkpointing={checkpointing!r},\n    llm_attn={attention!r},{dtype}\n")
        text = text.replace("from xtuner.model import InternVL_V1_5\n",
                            "from xtuner.model import InternVL_V1_5\nfrom labsupport.xtuner_shims import LeverInternVL\n")
        changed.append(f"model=LeverInternVL(gradient_checkpointing={checkpointing}, llm_attn={attention}"
                       + (", dtype=float32" if amp else "") + (", fused_rmsnorm=True" if fused_rmsnorm else "") + ")")
    if amp:
        if text.count(_PLAIN_OPTIM) != 1:
            raise RuntimeError(f"{config_path}: expected one plain OptimWrapper (a GPU config without DeepSpeed)")
        text = text.replace(_PLAIN_OPTIM, "    type=AmpOptimWrapper,  # bfloat16 autocast, float32 master weights\n"
                            "    dtype='bfloat16',\n    loss_scale='dynamic',\n")
        text = text.replace("from mmengine.optim import OptimWrapper,", "from mmengine.optim import AmpOptimWrapper, OptimWrapper,")
        changed.append("optim_wrapper=AmpOptimWrapper(bfloat16)")
    if not group_by_length:
        if text.count(_SAMPLER_LINE) != 1:
            raise RuntimeError(f"{config_path}: expected one LengthGroupedSampler line (render_config changed?)")
        text = text.replace(_SAMPLER_LINE, "    sampler=dict(type=DefaultSampler, shuffle=True),  # random order\n")
        text = text.replace("from xtuner.dataset.samplers import LengthGroupedSampler\n",
                            "from mmengine.dataset import DefaultSampler\nfrom xtuner.dataset.samplers import LengthGroupedSampler\n")
        changed.append("sampler=DefaultSampler")
    if profile:
        out_file = config_path.with_name(PROFILE_FILE)
        text += ("\n# where an iteration's time goes (labsupport.bench profile row)\n"
                 "from labsupport.xtuner_shims import ProfileSummaryHook\n"
                 f"custom_hooks = custom_hooks + [dict(type=ProfileSummaryHook, out_file={str(out_file)!r}, "
                 f"wait={PROFILE_WAIT}, active={PROFILE_ACTIVE})]\n")
        changed.append("custom_hooks+=ProfileSummaryHook")
    tmp = config_path.with_name(config_path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, config_path)
    return changed


PROFILE_FILE, PROFILE_WAIT, PROFILE_ACTIVE = "profile.json", 4, 3  # iterations 0-3 skipped (stalls), 4 warms the profiler


def estimate_for_run(shape: "memory.VLMShape", mode: str, zero: int, gpus: int, batch: int, stats: dict,
                     lora_r: int, **options) -> "memory.Estimate":
    """The memory estimator for a training run whose data has STATS (dataset_stats): its longest sample, its mean tiles."""
    from . import memory

    return memory.estimate(shape, mode=mode, zero=zero, gpus=gpus, batch=batch, seq=stats["max_tokens"],
                           lora_r=lora_r, tiles=max(1, round(stats["mean_tiles"])), **options)


def write_train_config(path: Path, model_dir: str, mode: str, data: "xtuner.DataSpec", total_iters: int, batch: int = 4,
                       zero: int = 2, nproc: int = 1, max_dynamic_patch: int = 6, lora_r: int = 128, device: str = "cuda",
                       checkpointing: bool = True, attention: str | None = None, group_by_length: bool = True,
                       num_workers: int = 4, accumulative_counts: int = 1, amp: bool = False, profile: bool = False,
                       fused_rmsnorm: bool = False) -> tuple["xtuner.TrainSettings", Path, list[str]]:
    """Write the XTuner config of one benchmark run to PATH (train_mode's levers, see there); (settings, PATH, what the levers changed)."""
    from . import xtuner

    if amp and zero:
        raise ValueError("amp=True is the run without DeepSpeed: pass zero=0")
    s = xtuner.preset("tiny-cpu", model_path=str(model_dir), mode=mode, data=[data], device=device,
                      deepspeed=zero, nproc=nproc, batch_size=batch, accumulative_counts=accumulative_counts,
                      max_iters=total_iters, save_steps=total_iters, save_total_limit=1, log_interval=1,
                      max_dynamic_patch=max_dynamic_patch, freeze_vit=True, freeze_llm=None, lora_r=lora_r,
                      lora_alpha=2 * lora_r, lora_dropout=0.05, lr=2e-5, weight_decay=0.05, max_length=8192,
                      num_workers=num_workers,
                      gradient_checkpointing=checkpointing if device == "cpu" else True)  # GPU: apply_levers sets it
    notes = []
    if device == "cpu":
        s, notes = xtuner.cpu_compatible(s)
        s = dataclasses.replace(s, num_workers=0)
    cfg_path = xtuner.write_config(s, path)
    _no_optimizer_in_checkpoint(cfg_path)
    if device != "cpu":
        notes += apply_levers(cfg_path, checkpointing, attention, group_by_length, amp, profile, fused_rmsnorm)
    return s, cfg_path, notes


def train_mode(model_dir: str, mode: str, data: "xtuner.DataSpec", iters: int = 20, warmup: int = 5, batch: int = 4,
               zero: int = 2, nproc: int = 1, peak_flops: float = DEFAULT_PEAK_FLOPS, max_dynamic_patch: int = 6,
               lora_r: int = 128, device: str = "cuda", timeout_s: float = 190.0, keep_checkpoint: bool = False,
               checkpointing: bool = True, attention: str | None = None, group_by_length: bool = True,
               num_workers: int = 4, tag: str | None = None, accumulative_counts: int = 1, amp: bool = False,
               profile: bool = False, fused_rmsnorm: bool = False) -> dict:
    """Fine-tune MODEL_DIR with XTuner in MODE for WARMUP + ITERS iterations; tokens/s/GPU, MFU, data vs compute, memory.

    The levers: CHECKPOINTING (gradient checkpointing), ATTENTION (the LLM's kernel, None: what XTuner asks
    for), GROUP_BY_LENGTH (XTuner's LengthGroupedSampler), NUM_WORKERS (data-loader processes),
    ACCUMULATIVE_COUNTS (micro-batches per optimizer step; an iteration is one micro-batch, so tokens/s counts
    every one), AMP (ZERO 0 only: mmengine's AmpOptimWrapper, bf16 autocast over float32 weights, no DeepSpeed).
    PROFILE: a profiler summary of three iterations under "profile" (the profiler slows the row's own timing).
    """
    from . import xtuner

    config = json.loads((Path(model_dir) / "config.json").read_text())
    work = bench_dir() / "train" / (tag or (mode if (zero, nproc) == (2, 1) else f"{mode}-zero{zero}-{nproc}gpu"))
    if work.exists():
        shutil.rmtree(work)
    s, cfg_path, notes = write_train_config(work / "config.py", model_dir, mode, data, warmup + iters, batch, zero, nproc,
                                            max_dynamic_patch, lora_r, device, checkpointing, attention, group_by_length,
                                            num_workers, accumulative_counts, amp, profile, fused_rmsnorm)
    stats = dataset_stats(cfg_path)
    print(f"[train:{mode}] data: {stats['mean_tokens']:.0f} tokens and {stats['mean_tiles']:.2f} tiles per sample "
          f"(max {stats['max_tokens']})", flush=True)
    run = xtuner.launch(cfg_path, work, nproc=s.nproc, deepspeed=s.deepspeed, live=False, show="progress",
                        timeout=timeout_s, threads=None if device != "cpu" else "auto")
    summary = summarize_scalars(run.scalars, warmup)
    tokens_per_iter = stats["mean_tokens"] * s.batch_size
    flops_per_iter = s.batch_size * statistics.mean(
        train_flops_per_sample(config, mode, n, k, s.freeze_vit) for n, k in zip(stats["tokens"], stats["tiles"]))
    attn = attention or _llm_attention(config)
    est = estimate_for_run(vlm_shape(config, Path(model_dir).name), mode, s.deepspeed, s.nproc, s.batch_size, stats,
                           s.lora_r, checkpointing=checkpointing, freeze_vit=s.freeze_vit, attention=attn, amp=amp)
    profiled = json.loads((work / PROFILE_FILE).read_text()) if profile else None
    if profiled and profiled.get("batch_per_iter", {}).get("samples"):
        b = profiled["batch_per_iter"]  # MFU of the profiled iterations themselves (their batches differ from the mean)
        flops = b["samples"] * train_flops_per_sample(config, mode, b["tokens"] / b["samples"], b["tiles"] / b["samples"],
                                                      s.freeze_vit)
        profiled["mfu_wall"] = flops / profiled["wall_s_per_iter"] / peak_flops
        profiled["mfu_gpu_busy"] = flops / profiled["gpu_busy_s_per_iter"] / peak_flops
    if not keep_checkpoint:
        for ckpt in work.glob("iter_*.pth"):
            shutil.rmtree(ckpt) if ckpt.is_dir() else ckpt.unlink()
    return {"mode": mode, "zero": s.deepspeed, "gpus": s.nproc, "batch_per_gpu": s.batch_size, "iters": iters,
            "warmup": warmup, "wall_s": run.seconds, **summary, "data_fraction": summary["data_s_per_iter"] / summary["s_per_iter"],
            "tokens_per_iter_per_gpu": tokens_per_iter, "tokens_per_s_per_gpu": tokens_per_iter / summary["s_per_iter"],
            "flops_per_iter_per_gpu": flops_per_iter, "peak_flops": peak_flops,
            "mfu": flops_per_iter / summary["s_per_iter"] / peak_flops, "dataset": stats,
            "estimate_gib": est.total, "estimate_parts": est.row(), "lora_r": s.lora_r if mode != "full" else None,
            "checkpointing": checkpointing, "attention": attn, "group_by_length": group_by_length,
            "accumulative_counts": accumulative_counts, "fused_rmsnorm": fused_rmsnorm,
            "optimizer": "AmpOptimWrapper" if amp else
            ("DeepSpeed" if s.deepspeed else "OptimWrapper"),
            "num_workers": s.num_workers, "shape": shape_name(config), **({"profile": profiled} if profile else {}),
            "notes": notes, "config": str(cfg_path), "log": str(run.log)}


def _llm_attention(config: dict) -> str:
    """The LLM attention the estimator should assume without the attention lever: XTuner asks for
    flash_attention_2, which the course's InternLM2 code (without flash_attn: SDPA) and transformers'
    Phi-3 run without storing the attention matrix -- "sdpa" in labsupport.memory's terms."""
    return "sdpa"


def train(model_dir: str, modes: Sequence[str] = ("lora", "full"), iters: int = 20, warmup: int = 5, batch: int = 4,
          zero: int = 2, nproc: int = 1, peak_flops: float = DEFAULT_PEAK_FLOPS, max_dynamic_patch: int = 6,
          lora_r: int = 128, device: str = "cuda", timeout_s: float = 190.0, out: str | os.PathLike | None = None) -> dict:
    """The train benchmark: each MODE through labsupport.xtuner (XTuner + DeepSpeed ZeRO-ZERO); table + train.json."""
    from .datasets import build_course_task
    from .xtuner import DataSpec

    if device.startswith("cuda"):
        need_cuda("the train benchmark (XTuner with DeepSpeed)")
    model_dir = str(Path(model_dir).resolve())
    print(f"[train] MFU against a peak of {peak_flops / 1e12:.0f} TFLOPS (bf16 dense; --peak-flops to change)", flush=True)
    plates = build_course_task(progress=False)
    data = DataSpec(str(plates["train"]), str(plates["image_folder"]))
    started = time.time()
    results: dict = {"model": model_dir, "peak_flops": peak_flops, "device": device, "versions": _versions(), "runs": []}
    if device.startswith("cuda"):
        results["gpu"] = gpu_name()  # not through torch: a CUDA context here would take memory from training
    for mode in modes:
        print(f"[train] {mode} ({time.time() - started:.0f} s elapsed)", flush=True)
        try:
            row = train_mode(model_dir, mode, data, iters, warmup, batch, zero, nproc, peak_flops, max_dynamic_patch,
                             lora_r, device, timeout_s)
        except Exception as exc:  # every mode gets a row: the table says what failed and why
            row = {"mode": mode, "zero": zero, "error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
        results["runs"].append(row)
        write_json_atomic(Path(out) if out else bench_dir() / "train.json", results)
    results["seconds"] = round(time.time() - started, 1)
    path = save_results("train", results, out)
    print(train_table(results))
    print(f"[train] wrote {path} in {results['seconds']:.0f} s")
    return results


# ---- levers: one training run per speed lever ----------------------------------------------------------
# name -> (what changes, train_mode keywords). Each row differs from the row named in "base" by one lever,
# so the table reads as "what this lever gives"; the "best" rows combine the winners.
LEVER_ROWS: dict[str, dict] = {
    "full-b4": {"base": None, "lever": "baseline: batch 4, checkpointing, SDPA, grouped, 4 workers",
                "mode": "full", "batch": 4},
    "full-b4-eager": {"base": "full-b4", "lever": "attention eager (the official code's fallback)",
                      "mode": "full", "batch": 4, "attention": "eager"},
    "full-b16": {"base": "full-b4", "lever": "batch 16", "mode": "full", "batch": 16},
    "full-b16-nockpt": {"base": "full-b16", "lever": "checkpointing off", "mode": "full", "batch": 16,
                        "checkpointing": False},
    "full-b8-nockpt": {"base": "full-b16", "lever": "batch 8, checkpointing off (16 without it runs out of memory)",
                       "mode": "full", "batch": 8, "checkpointing": False},
    "full-b16-random": {"base": "full-b16", "lever": "length grouping off", "mode": "full", "batch": 16,
                        "group_by_length": False},
    "full-b16-w8": {"base": "full-b16", "lever": "8 data-loader workers", "mode": "full", "batch": 16, "num_workers": 8},
    "full-b32": {"base": "full-b16", "lever": "batch 32 (checkpointing)", "mode": "full", "batch": 32},
    "full-b32-nockpt": {"base": "full-b16-nockpt", "lever": "batch 32 (checkpointing off)", "mode": "full",
                        "batch": 32, "checkpointing": False},
    "lora-b4": {"base": None, "lever": "baseline: batch 4, checkpointing, SDPA, grouped, 4 workers",
                "mode": "lora", "batch": 4},
    "lora-b4-eager": {"base": "lora-b4", "lever": "attention eager", "mode": "lora", "batch": 4, "attention": "eager"},
    "lora-b16": {"base": "lora-b4", "lever": "batch 16", "mode": "lora", "batch": 16},
    "lora-b16-nockpt": {"base": "lora-b16", "lever": "checkpointing off", "mode": "lora", "batch": 16,
                        "checkpointing": False},
    "lora-b32-nockpt": {"base": "lora-b16-nockpt", "lever": "batch 32 (checkpointing off)", "mode": "lora",
                        "batch": 32, "checkpointing": False},
    "lora-b16-nockpt-w8": {"base": "lora-b16-nockpt", "lever": "8 data-loader workers", "mode": "lora",
                           "batch": 16, "checkpointing": False, "num_workers": 8},
    # DeepSpeed's fixed cost per optimizer step (~0.29 s on the 2B full rows) paid once per 4 micro-batches
    "full-b16-w8-acc4": {"base": "full-b16-w8", "lever": "gradient accumulation 4 (tok/s per micro-batch)",
                         "mode": "full", "batch": 16, "num_workers": 8, "accumulative_counts": 4},
    "lora-b16-nockpt-acc4": {"base": "lora-b16-nockpt", "lever": "gradient accumulation 4 (tok/s per micro-batch)",
                             "mode": "lora", "batch": 16, "checkpointing": False, "accumulative_counts": 4},
    "full-b16-w8-zero1": {"base": "full-b16-w8", "lever": "DeepSpeed ZeRO-1 instead of ZeRO-2", "mode": "full",
                          "batch": 16, "num_workers": 8, "zero": 1},
    "full-b16-w8-profile": {"base": "full-b16-w8", "lever": "mmengine's ProfilerHook over 3 iterations (where the time "
                            "goes; profiling slows this row)", "mode": "full", "batch": 16, "num_workers": 8, "profile": True},
    "full-b16-w8-rmsnorm": {"base": "full-b16-w8", "lever": "XTuner's Triton RMSNorm kernel in the LLM (its SFT model "
                            "dispatches it, InternVL_V1_5 does not)", "mode": "full", "batch": 16, "num_workers": 8,
                            "fused_rmsnorm": True},
    "full-b16-w8-amp": {"base": "full-b16-w8", "lever": "no DeepSpeed: mmengine AmpOptimWrapper, bf16 autocast, fp32 weights",
                        "mode": "full", "batch": 16, "num_workers": 8, "zero": 0, "amp": True},
}
_LEVER_KEYS = ("checkpointing", "attention", "group_by_length", "num_workers", "accumulative_counts", "amp", "profile",
               "fused_rmsnorm")


def levers(model_dir: str, rows: Sequence[str], iters: int = 8, warmup: int = 4, zero: int = 2,
           peak_flops: float = DEFAULT_PEAK_FLOPS, max_dynamic_patch: int = 6, lora_r: int = 128,
           budget_s: float = 540.0, timeout_s: float = 150.0, out: str | os.PathLike | None = None) -> dict:
    """The lever table: each of ROWS (names in LEVER_ROWS) as one XTuner run on one GPU; rows that would start with
    less than a minute of BUDGET_S left are skipped (and say so). Partial results are written after every row."""
    from .datasets import build_course_task
    from .xtuner import DataSpec

    unknown = [r for r in rows if r not in LEVER_ROWS]
    if unknown:
        raise ValueError(f"unknown lever rows {unknown}; choose from {list(LEVER_ROWS)}")
    need_cuda("the lever benchmark (XTuner with DeepSpeed)")
    model_dir = str(Path(model_dir).resolve())
    plates = build_course_task(progress=False)
    data = DataSpec(str(plates["train"]), str(plates["image_folder"]))
    started = time.time()
    results: dict = {"model": Path(model_dir).name, "peak_flops": peak_flops, "device": "cuda", "gpu": gpu_name(),
                     "versions": _versions(), "iters": iters, "warmup": warmup, "runs": []}
    path = Path(out) if out else bench_dir() / "levers.json"
    for name in rows:
        spec = LEVER_ROWS[name]
        left = budget_s - (time.time() - started)
        if left < 60:
            results["runs"].append({"row": name, "mode": spec["mode"], "zero": spec.get("zero", zero), "lever": spec["lever"],
                                    "error": f"skipped: {left:.0f} s left of the {budget_s:.0f} s budget"})
            continue
        print(f"[levers] {name}: {spec['lever']} ({time.time() - started:.0f} s elapsed)", flush=True)
        kw = {k: spec[k] for k in _LEVER_KEYS if k in spec}
        try:
            row = train_mode(model_dir, spec["mode"], data, iters, warmup, spec["batch"], spec.get("zero", zero), 1, peak_flops,
                             max_dynamic_patch, lora_r, "cuda", min(timeout_s, left), tag=f"lever-{name}", **kw)
        except Exception as exc:  # an out-of-memory row is a result too
            first = str(exc).splitlines()[0] if str(exc) else ""  # the cause (xtuner.root_error), then the log's tail
            row = {"mode": spec["mode"], "zero": spec.get("zero", zero), "batch_per_gpu": spec["batch"],
                   "error": f"{type(exc).__name__}: {first[:600]}\n{str(exc)[-1200:]}"}
        row.update({"row": name, "lever": spec["lever"], "base": spec["base"]})
        row.pop("config", None), row.pop("log", None)  # machine paths
        results["runs"].append(row)
        write_json_atomic(path, results)
        print(levers_table(results), flush=True)
        if row.get("profile"):
            print(profile_table(row), flush=True)
    results["seconds"] = round(time.time() - started, 1)
    write_json_atomic(path, results)
    print(f"[levers] wrote {path} in {results['seconds']:.0f} s")
    return results


def levers_table(results: dict) -> str:
    """The lever results as a text table: one row per lever, with tok/s against the row it changes."""
    by_name = {r.get("row"): r for r in results["runs"]}
    rows = []
    for r in results["runs"]:
        row = dict(r)
        row["mfu_pct"] = 100 * r["mfu"] if r.get("mfu") is not None else None
        row["data_pct"] = 100 * r["data_fraction"] if r.get("data_fraction") is not None else None
        base = by_name.get(r.get("base"))
        if base and base.get("tokens_per_s_per_gpu") and r.get("tokens_per_s_per_gpu"):
            row["x_base"] = r["tokens_per_s_per_gpu"] / base["tokens_per_s_per_gpu"]
        row["note"] = r["error"].splitlines()[0][:60] if r.get("error") else ""
        rows.append(row)
    cols = [("row", "row"), ("lever", "lever"), ("batch_per_gpu", "batch"), ("zero", "ZeRO"), ("accumulative_counts", "acc"),
            ("s_per_iter", "s/iter"), ("data_pct", "data %"), ("tokens_per_s_per_gpu", "tok/s/GPU"), ("x_base", "x base"),
            ("mfu_pct", "MFU %"), ("peak_memory_gib", "peak GiB"), ("estimate_gib", "estimate GiB"), ("note", "note")]
    return (f"MFU against {results['peak_flops'] / 1e12:.0f} TFLOPS; one GPU; ZeRO 0 = no DeepSpeed; acc = micro-batches "
            "per optimizer step (s/iter and tok/s per micro-batch); x base = tok/s / the row it changes\n"
            + format_table(rows, cols, digits=2))


def profile_table(row: dict, top: int = 10) -> str:
    """A profiled lever row as text: wall-clock against GPU-busy time per iteration, kernel launches, forward passes, top ops."""
    p = row["profile"]
    wall, busy = p["wall_s_per_iter"], p["gpu_busy_s_per_iter"]
    fwd = p.get("forward_gpu_s_per_iter", {})
    b = p.get("batch_per_iter") or {}
    batch = (f"; {b['samples']:.0f} samples, {b['tokens']:,.0f} tokens ({b['padded_tokens']:,.0f} with padding), "
             f"{b['tiles']:.0f} tiles per iteration, MFU {100 * p['mfu_wall']:.1f} % of wall-clock time, "
             f"{100 * p['mfu_gpu_busy']:.1f} % of GPU-busy time") if "mfu_wall" in p else ""
    head = (f"{row['row']}: {wall:.3f} s per iteration under the profiler, the GPU busy {busy:.3f} s "
            f"({100 * busy / wall:.0f} %), {p['kernels_per_iter']:,.0f} kernels per iteration "
            f"(mean {1e6 * busy / max(p['kernels_per_iter'], 1):.0f} µs each); host ops {p['cpu_ops_s_per_iter']:.3f} s; "
            f"forward on the GPU: ViT {fwd.get('vit.forward', 0):.3f} s, LLM {fwd.get('llm.forward', 0):.3f} s{batch}")
    rows = [{"op": o["op"][:60], "gpu_ms": 1e3 * o["gpu_s_per_iter"], "share": 100 * o["gpu_s_per_iter"] / busy if busy else None,
             "calls": o["calls_per_iter"]} for o in p["top_ops"][:top]]
    return head + "\n" + format_table(rows, [("op", "op"), ("gpu_ms", "GPU ms/iter"), ("share", "% of GPU busy"),
                                             ("calls", "calls/iter")], digits=1)


def train_table(results: dict) -> str:
    """The train results as a text table (one row per mode)."""
    rows = []
    for r in results["runs"]:
        row = dict(r)
        row["mfu_pct"] = 100 * r["mfu"] if r.get("mfu") is not None else None
        row["data_pct"] = 100 * r["data_fraction"] if r.get("data_fraction") is not None else None
        row["note"] = r["error"].splitlines()[0][:70] if r.get("error") else ""
        rows.append(row)
    cols = [("mode", "mode"), ("zero", "ZeRO"), ("batch_per_gpu", "batch"), ("s_per_iter", "s/iter"),
            ("data_pct", "data %"), ("tokens_per_s_per_gpu", "tok/s/GPU"), ("mfu_pct", "MFU %"),
            ("peak_memory_gib", "peak GiB"), ("estimate_gib", "estimate GiB"), ("note", "note")]
    return (f"MFU against {results['peak_flops'] / 1e12:.0f} TFLOPS; data % = mmengine data_time / time\n"
            + format_table(rows, cols, digits=2))


# ---- measured results (docs/gpu) -------------------------------------------------------------------
def measured_dir() -> Path:
    """Where the GPU results the course quotes are kept: docs/gpu/ in the repository."""
    from .paths import repo_root

    return repo_root() / "docs" / "gpu"


def _machine(path: Path) -> str:
    """The machine a results file came from, by its name's last part (bench-train-...-h200x2.json -> h200x2)."""
    return path.stem.rsplit("-", 1)[-1]


def training_results(folder: str | os.PathLike | None = None) -> list[dict]:
    """Every training run in FOLDER's bench-train-*.json (default docs/gpu), with the estimator re-run and scaling.

    Each row: mode, zero, gpus, s/iter, tok/s/GPU, MFU, peak GiB, the current estimator's GiB and its error,
    and for several GPUs the scaling efficiency against the one-GPU ZeRO-2 run of the same mode on the same
    machine (tok/s/GPU on N GPUs / tok/s on one; above 1 when sharding also shrinks the work per GPU).
    """
    from . import memory

    folder = Path(folder) if folder else measured_dir()
    shapes = {"InternVL2-4B": memory.shape_of(internvl2_4b_config(), "InternVL2-4B"),
              "InternVL2-2B": memory.shape_of(internvl2_2b_config(), "InternVL2-2B")}
    rows = []
    for path in sorted([*folder.glob("bench-train-*.json"), *folder.glob("bench-levers-*.json")]):
        data = json.loads(path.read_text())
        for run in data.get("runs", []):
            if run.get("error") or not run.get("s_per_iter"):
                continue
            name = run.get("shape") or ("InternVL2-2B" if "-2b-" in path.name else "InternVL2-4B")
            est = estimate_for_run(shapes[name], run["mode"], run["zero"], run["gpus"], run["batch_per_gpu"],
                                   run["dataset"], run.get("lora_r") or 128, checkpointing=run.get("checkpointing", True),
                                   attention="eager" if run.get("attention") == "eager" else "sdpa",
                                   amp=run.get("optimizer") == "AmpOptimWrapper")
            rows.append({"file": path.name, "machine": _machine(path), "gpu": data.get("gpu"), "shape": name,
                         "row": run.get("row"), "lever": run.get("lever"), "mode": run["mode"],
                         "checkpointing": run.get("checkpointing", True), "attention": run.get("attention") or "sdpa",
                         "zero": run["zero"], "gpus": run["gpus"], "batch_per_gpu": run["batch_per_gpu"],
                         "s_per_iter": run["s_per_iter"], "data_pct": 100 * run["data_fraction"],
                         "tokens_per_s_per_gpu": run["tokens_per_s_per_gpu"], "mfu_pct": 100 * run["mfu"],
                         "peak_memory_gib": run["peak_memory_gib"], "estimate_gib": est.total,
                         "estimate_error_pct": 100 * (est.total / run["peak_memory_gib"] - 1),
                         "versions": data.get("versions")})
    for r in rows:
        if r["gpus"] > 1:
            base = [b for b in rows if b["machine"] == r["machine"] and b["mode"] == r["mode"] and b["gpus"] == 1
                    and b["zero"] == 2 and b["shape"] == r["shape"] and b["batch_per_gpu"] == r["batch_per_gpu"]]
            if base:
                r["scaling_efficiency"] = r["tokens_per_s_per_gpu"] / base[0]["tokens_per_s_per_gpu"]
    return rows


def serving_results(folder: str | os.PathLike | None = None) -> list[dict]:
    """Every serve row in FOLDER's bench-serve-*.json (default docs/gpu), with LMDeploy/transformers in the same run."""
    folder = Path(folder) if folder else measured_dir()
    out = []
    for path in sorted(folder.glob("bench-serve-*.json")):
        data = json.loads(path.read_text())
        rows = [r for r in data.get("rows", []) if r.get("decode_tokens_per_s")]
        hf = next((r["decode_tokens_per_s"] for r in rows if r["backend"] == "transformers"), None)
        for r in rows:
            out.append({"file": path.name, "machine": _machine(path), "gpu": data.get("gpu"), "row": r["row"],
                        "shape": "InternVL2-2B" if "-2b-" in path.name else "InternVL2-4B",
                        "ttft_ms": 1000 * r["ttft_s"], "decode_tokens_per_s": r["decode_tokens_per_s"],
                        "bound_tokens_per_s": r.get("decode_bound_tokens_per_s"),
                        "pct_of_bound": 100 * r["fraction_of_bound"] if r.get("fraction_of_bound") else None,
                        "batch_tokens_per_s": r.get("throughput_tokens_per_s"),
                        "x_transformers": r["decode_tokens_per_s"] / hf if hf and r["backend"] == "lmdeploy" else None,
                        "versions": (data.get("bandwidth") or {}).get("versions")})
    return out


def plot_measured(folder: str | os.PathLike | None = None):
    """One figure of the measured GPU results: batch-1 decode against the bound, and training tok/s per GPU."""
    from labsupport.plots import pyplot
    plt = pyplot()  # with the CJK font

    serve_rows, train_rows = serving_results(folder), latest_training_rows(folder)
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 7))
    labels = [f"{r['shape'][-2:]} {r['row']} ({r['machine']})" for r in serve_rows]
    a.barh(labels, [r["decode_tokens_per_s"] for r in serve_rows],
           color=["tab:orange" if r["row"] == "transformers" else "tab:blue" for r in serve_rows])
    bound = max((r["bound_tokens_per_s"] or 0) for r in serve_rows) if serve_rows else 0
    if bound:
        a.axvline(bound, color="k", ls="--", lw=1, label=f"decode bound {bound:.0f} (bandwidth / bytes per token)")
        a.axvline(0.8 * bound, color="grey", ls=":", lw=1, label="80 % of the bound")
        a.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    for i, r in enumerate(serve_rows):
        a.text(r["decode_tokens_per_s"], i, f" {r['decode_tokens_per_s']:.0f}", va="center", fontsize=8)
    a.set(xlabel="decode tokens/s at batch 1 (256 new tokens, one image)", title="Serving InternVL2-2B's and -4B's shapes",
          xlim=(0, 1.1 * max([bound] + [r["decode_tokens_per_s"] for r in serve_rows])))
    a.tick_params(axis="y", labelsize=7)
    tl = [f"{r['shape'][-2:]} {r.get('row') or r['mode'] + ' b' + str(r['batch_per_gpu'])}, ZeRO-{r['zero']}, "
          f"{r['gpus']} GPU ({r['machine']})" for r in train_rows]  # unique: one bar per label
    b.barh(tl, [r["tokens_per_s_per_gpu"] for r in train_rows],
           color=["tab:green" if r["mode"] == "lora" else "tab:purple" for r in train_rows])
    for i, r in enumerate(train_rows):
        note = f" {r['tokens_per_s_per_gpu']:,.0f}"
        if r.get("scaling_efficiency"):
            note += f" ({100 * r['scaling_efficiency']:.0f} % scaling)"
        b.text(r["tokens_per_s_per_gpu"], i, note, va="center", fontsize=8)
    b.set(xlabel="training tokens/s per GPU", title="XTuner fine-tuning, DeepSpeed")
    b.tick_params(axis="y", labelsize=7)
    b.margins(x=0.35)
    fig.tight_layout()
    return fig


def latest_training_rows(folder: str | os.PathLike | None = None) -> list[dict]:
    """training_results without repeats: the last run of each setting, and no run of the superseded masked SDPA."""
    keep: dict[tuple, dict] = {}
    for r in training_results(folder):
        if r["attention"] == "sdpa-mask":
            continue
        key = (r["shape"], r["machine"], r["mode"], r["zero"], r["gpus"], r["batch_per_gpu"], r["checkpointing"],
               r["attention"], r.get("lever"))
        keep[key] = r
    return list(keep.values())


def lever_rows(folder: str | os.PathLike | None = None) -> list[dict]:
    """Every lever run kept in FOLDER's bench-levers-*.json (default docs/gpu), with tok/s against the row it changes."""
    folder = Path(folder) if folder else measured_dir()
    out = []
    for path in sorted(folder.glob("bench-levers-*.json")):
        data = json.loads(path.read_text())
        for r in data.get("runs", []):
            if str(r.get("error", "")).startswith("skipped"):
                continue
            out.append({**r, "file": path.name, "mfu_pct": 100 * r["mfu"] if r.get("mfu") else None,
                        "note": (r.get("error") or "").split("\n")[0][:48]})
    latest = {r["row"]: r for r in out if r.get("tokens_per_s_per_gpu") and r.get("attention") != "sdpa-mask"}
    for r in out:
        same_file = next((b for b in out if b["row"] == r.get("base") and b["file"] == r["file"]), None)
        base = same_file or (latest.get(r.get("base")) if r.get("attention") != "sdpa-mask" else None)
        if base and r.get("tokens_per_s_per_gpu"):
            r["x_base"] = r["tokens_per_s_per_gpu"] / base["tokens_per_s_per_gpu"]
    return out


def measured_tables(folder: str | os.PathLike | None = None, parts: Sequence[str] = ("serve", "train")) -> str:
    """The measured serving, training and lever results (PARTS: serve, train, levers) as text tables."""
    serve_cols = [("shape", "shape"), ("row", "row"), ("machine", "machine"), ("ttft_ms", "TTFT ms"), ("decode_tokens_per_s", "decode tok/s"),
                  ("bound_tokens_per_s", "bound"), ("pct_of_bound", "% bound"), ("x_transformers", "x transformers"),
                  ("batch_tokens_per_s", "batch-64 tok/s")]
    train_cols = [("shape", "shape"), ("row", "lever row"), ("mode", "mode"), ("batch_per_gpu", "batch"), ("checkpointing", "ckpt"),
                  ("attention", "attention"), ("zero", "ZeRO"), ("gpus", "GPUs"), ("machine", "machine"), ("s_per_iter", "s/iter"),
                  ("tokens_per_s_per_gpu", "tok/s/GPU"), ("mfu_pct", "MFU %"), ("scaling_efficiency", "scaling"),
                  ("peak_memory_gib", "peak GiB"), ("estimate_gib", "estimate GiB"), ("estimate_error_pct", "error %")]
    lever_cols = [("row", "row"), ("lever", "lever"), ("attention", "attention"), ("batch_per_gpu", "batch"),
                  ("tokens_per_s_per_gpu", "tok/s/GPU"), ("x_base", "x base"), ("mfu_pct", "MFU %"),
                  ("data_fraction", "data share"), ("peak_memory_gib", "peak GiB"), ("note", "note")]
    tables = {"serve": lambda: "Serving InternVL2-2B's and -4B's shapes (docs/gpu/bench-serve-*.json)\n"
                               + format_table(serving_results(folder), serve_cols, digits=1),
              "train": lambda: "Fine-tuning with XTuner (docs/gpu/bench-train-*.json, bench-levers-*.json; the last run "
                               "of each setting)\n" + format_table(latest_training_rows(folder), train_cols, digits=2),
              "levers": lambda: "Speed levers, InternVL2-2B's shape, one H200, ZeRO-2 (docs/gpu/bench-levers-*.json; "
                                "x base: tok/s over the row it changes; sdpa-mask: the first run's masked SDPA)\n"
                                + format_table(lever_rows(folder), lever_cols, digits=2)}
    unknown = [x for x in parts if x not in tables]
    if unknown:
        raise ValueError(f"parts must be among 'serve', 'train', 'levers', not {unknown}")
    return "\n\n".join(tables[x]() for x in parts)


# ---- command line ---------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build-2b, build-4b, serve, train, levers, report (and serve-row, which `serve` runs in a fresh process per row)."""
    p = argparse.ArgumentParser(prog="python -m labsupport.bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd, (folder, _, name) in BUILDS.items():
        b = sub.add_parser(cmd, help=f"random-weight checkpoint of {name}'s shape (GPU: < 1 min)")
        b.add_argument("out_dir", nargs="?", default=None, help=f"default artifacts/models/{folder}")
        b.add_argument("--device", default="cuda", help="where weights are generated (cpu works, slowly)")
        b.add_argument("--seed", type=int, default=0)
        b.add_argument("--force", action="store_true", help="rebuild even when the folder is current")
    s = sub.add_parser("serve", help="LMDeploy (PyTorch engine) vs transformers generate")
    s.add_argument("model_dir")
    s.add_argument("--rows", default=",".join(DEFAULT_SERVE_ROWS),
                   help=f"comma-separated, from {[r for r in SERVE_ROWS if r != 'bandwidth']}")
    s.add_argument("--new-tokens", type=int, default=256)
    s.add_argument("--concurrency", type=int, default=64)
    s.add_argument("--hf-batch", type=int, default=64, help="transformers: requests per generate() call")
    s.add_argument("--hf-budget-s", type=float, default=90.0, help="transformers: cap on the batch phase")
    s.add_argument("--budget-s", type=float, default=330.0, help="whole run; rows that would start late are skipped")
    s.add_argument("--row-timeout-s", type=float, default=150.0)
    s.add_argument("--device", default="cuda", help="cpu: the transformers row only (functional check)")
    s.add_argument("--out", default=None, help="json path (default artifacts/bench/serve.json)")
    r = sub.add_parser("serve-row", help="one row of `serve`, in this process (used by serve)")
    r.add_argument("row", choices=list(SERVE_ROWS))
    r.add_argument("model_dir")
    r.add_argument("--result", required=True)
    r.add_argument("--new-tokens", type=int, default=256)
    r.add_argument("--concurrency", type=int, default=64)
    r.add_argument("--hf-batch", type=int, default=64)
    r.add_argument("--hf-budget-s", type=float, default=90.0)
    r.add_argument("--device", default="cuda")
    r.add_argument("--bandwidth-gib", type=float, default=4.0)
    t = sub.add_parser("train", help="XTuner LoRA and full fine-tuning with DeepSpeed")
    t.add_argument("model_dir")
    t.add_argument("--modes", default="lora,full")
    t.add_argument("--iters", type=int, default=20, help="measured iterations (after --warmup)")
    t.add_argument("--warmup", type=int, default=5)
    t.add_argument("--batch", type=int, default=4, help="samples per GPU per iteration")
    t.add_argument("--zero", type=int, default=2, help="DeepSpeed ZeRO stage (0: none)")
    t.add_argument("--nproc", type=int, default=1, help="GPUs")
    t.add_argument("--peak-flops", type=float, default=DEFAULT_PEAK_FLOPS,
                   help="bf16 dense peak per GPU for MFU (default H100 SXM 989e12; H200 is the same chip)")
    t.add_argument("--max-dynamic-patch", type=int, default=6)
    t.add_argument("--lora-r", type=int, default=128)
    t.add_argument("--timeout-s", type=float, default=190.0, help="per mode")
    t.add_argument("--device", default="cuda", help="cpu: functional check without DeepSpeed")
    t.add_argument("--out", default=None, help="json path (default artifacts/bench/train.json)")
    lv = sub.add_parser("levers", help="one XTuner run per speed lever (batch, checkpointing, attention, sampler, workers)")
    lv.add_argument("model_dir")
    lv.add_argument("--rows", default="full-b4,full-b16,full-b16-nockpt,lora-b4,lora-b16,lora-b16-nockpt",
                    help=f"comma-separated, from {list(LEVER_ROWS)}")
    lv.add_argument("--iters", type=int, default=8, help="measured iterations (after --warmup)")
    lv.add_argument("--warmup", type=int, default=4)
    lv.add_argument("--budget-s", type=float, default=540.0, help="whole run; rows that would start late are skipped")
    lv.add_argument("--timeout-s", type=float, default=150.0, help="per row")
    lv.add_argument("--peak-flops", type=float, default=DEFAULT_PEAK_FLOPS)
    lv.add_argument("--out", default=None, help="json path (default artifacts/bench/levers.json)")
    m = sub.add_parser("report", help="tables and one figure of the measured results kept in docs/gpu")
    m.add_argument("--from", dest="folder", default=None, help="folder of bench-*.json (default docs/gpu)")
    m.add_argument("--plot", default=None, help="write the figure here (e.g. docs/benchmarks.png)")
    a = p.parse_args(argv)

    if a.cmd == "report":
        print(measured_tables(a.folder, ("serve", "train", "levers")))
        if a.plot:
            import matplotlib
            matplotlib.use("Agg")
            fig = plot_measured(a.folder)
            tmp = Path(a.plot).with_name(Path(a.plot).stem + ".tmp.png")
            fig.savefig(tmp, dpi=110)
            os.replace(tmp, a.plot)
            print(f"[report] wrote {a.plot}")
        return 0

    if a.cmd in BUILDS:
        folder, make_config, name = BUILDS[a.cmd]
        out = a.out_dir or artifacts_dir() / "models" / folder
        print(f"[{a.cmd}] {name} shape, course remote code, random bf16 weights on {a.device} -> {out}", flush=True)
        summary = build_model(out, make_config(), device=a.device, seed=a.seed, force=a.force)
        rows = [{"part": k, "parameters": v} for k, v in summary["counted"].items()]
        print(format_table(rows, [("part", "part"), ("parameters", "parameters")]))
        print(f"written {summary['parameters']:,} parameters, {summary['bytes'] / GIB:.2f} GiB in {summary['shards']} "
              f"shard(s), {summary['seconds']} s{' (already current: skipped)' if summary['skipped'] else ''}")
        save_results(a.cmd, {**summary, "shape": name, "path": Path(summary["path"]).name})
        return 0
    if a.cmd == "levers":
        res = levers(a.model_dir, [x for x in a.rows.split(",") if x], a.iters, a.warmup, peak_flops=a.peak_flops,
                     budget_s=a.budget_s, timeout_s=a.timeout_s, out=a.out)
        return 0 if all("error" not in r for r in res["runs"]) else 1
    if a.cmd == "serve-row":
        result = serve_row(a.row, a.model_dir, a.new_tokens, a.concurrency, a.hf_batch, a.hf_budget_s, a.device,
                           a.bandwidth_gib)
        write_json_atomic(a.result, result)
        if SERVE_ROWS[a.row]["backend"] == "lmdeploy":  # the result is written: do not wait on the engine's threads
            sys.stdout.flush()
            os._exit(0)
        return 0
    if a.cmd == "serve":
        res = serve(a.model_dir, [x for x in a.rows.split(",") if x], a.new_tokens, a.concurrency, a.hf_batch,
                    a.hf_budget_s, a.budget_s, a.row_timeout_s, a.device, a.out)
        return 0 if all("error" not in r for r in res["rows"]) else 1
    res = train(a.model_dir, [x for x in a.modes.split(",") if x], a.iters, a.warmup, a.batch, a.zero, a.nproc,
                a.peak_flops, a.max_dynamic_patch, a.lora_r, a.device, a.timeout_s, a.out)
    return 0 if all("error" not in r for r in res["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
