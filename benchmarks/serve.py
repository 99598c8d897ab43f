"""Serving rows: LMDeploy's engines and transformers on one checkpoint, each row in a fresh process."""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from labsupport.core.checkpoints import write_json_atomic
from benchmarks.build import GIB
from benchmarks.build import _versions
from benchmarks.build import bench_dir
from benchmarks.build import decode_bound
from benchmarks.build import decode_bytes_per_token
from labsupport.evaluate.measured import format_table
from benchmarks.build import measure_copy_bandwidth
from benchmarks.build import need_cuda
from benchmarks.build import save_results
from benchmarks.build import QUESTION


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
    from labsupport.datasets.plates import draw_plate

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

    from labsupport.model.prompts import model_prompt
    from labsupport.core.tiling import load_image

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
            cmd = [sys.executable, "-m", "benchmarks", "serve-row", name, model_dir, "--result", str(result_file),
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
