"""Notebook 06b's GPU rows in one run: AWQ built on the GPU, then bf16, AWQ w4a16 and bf16 + KV int8 (int4 if time is
left) served by LMDeploy's PyTorch engine, each in a fresh process, at one cache_max_entry_count.

    python3 benchmarks/device/quant_gpu.py run artifacts/models/internvl2-2b-random artifacts/bench/quant-2b.json

Every child gets the GPU to itself (the parent never touches CUDA), so "GPU GiB used" (total - free after the engine
loaded and allocated its KV cache) is the row's own. Rows: size on disk, GPU memory, TTFT, batch-1 decode tokens/s,
64-request throughput (benchmarks.serve.serve_lmdeploy: prefix caching on, metrics off, CUDA graphs). The AWQ model is
calibrated on the course task's training conversations (labsupport.serve.awq.course_calib_loader), as in 06b.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

ROWS = {  # name -> (which model, extra PytorchEngineConfig options)
    "bf16": ("fp", {}),
    "awq": ("awq", {"model_format": "awq"}),
    "kv-int8": ("fp", {"quant_policy": 8}),
    "kv-int4": ("fp", {"quant_policy": 4}),
}


def build_awq(model_dir: str, awq_dir: str, samples: int, seqlen: int, group: int, device: str = "cuda") -> dict:
    """auto_awq on the GPU with the course's calibration loader (this process: a child of `run`)."""
    import lmdeploy.lite.apis.calibrate as calibrate
    from lmdeploy.lite.apis.auto_awq import auto_awq

    from labsupport.serve import awq
    from labsupport.datasets.plates import build_course_task

    train = build_course_task(REPO / "artifacts" / "data" / "plates", progress=False)["train"]
    awq.check_group_size(model_dir, group)
    calibrate.get_calib_loaders = awq.course_calib_loader(train)
    start = time.time()
    auto_awq(model_dir, awq_dir, calib_dataset="wikitext2", calib_samples=samples, calib_seqlen=seqlen, w_bits=4,
             w_group_size=group, device=device, trust_remote_code=True, dtype="float16")
    seconds = time.time() - start
    awq.tidy_work_dir(awq_dir, Path(awq_dir).with_name(Path(awq_dir).name + "-calibration"))
    return {"awq_build_s": seconds, "awq_config": awq.awq_config(awq_dir), "calibration": {
        "data": "course task train.json", "samples": samples, "seqlen": seqlen, **calibrate.get_calib_loaders.last}}


def serve_row(name: str, model_dir: str, cache: float, new_tokens: int, concurrency: int) -> dict:
    """One row: LMDeploy's PyTorch engine on MODEL_DIR with ROWS[NAME]'s options, then the GPU memory in use."""
    from benchmarks import serve
    from labsupport.serve import awq, quantize

    options = {"enable_metrics": False, "cache_max_entry_count": cache, **ROWS[name][1]}
    result = serve.serve_lmdeploy(model_dir, eager_mode=False, prefix_caching=True, new_tokens=new_tokens,
                                  concurrency=concurrency, engine_options=options)
    return {**result, "engine": options, "gpu_used_bytes": quantize.gpu_memory_used(),
            "gpu_used_gib": quantize.gpu_memory_used() / 2**30, "disk_bytes": awq.folder_bytes(model_dir),
            "kv_bytes_per_token": awq.kv_bytes_per_token(model_dir, options.get("quant_policy", 0))}


def run(model_dir: str, out: str, rows: list[str], budget_s: float, row_timeout_s: float, cache: float,
        samples: int, seqlen: int, group: int, new_tokens: int, concurrency: int) -> int:
    """The whole recipe: bandwidth, AWQ build, then each row in a fresh process; writes OUT (partial results survive)."""
    from benchmarks.serve import _run_child
    from benchmarks.build import decode_bytes_per_token
    from labsupport.core.checkpoints import write_json_atomic

    started = time.time()
    model_dir = str(Path(model_dir).resolve())
    awq_dir = model_dir.rstrip("/") + "-awq"
    config = json.loads((Path(model_dir) / "config.json").read_text())
    results = {"model": Path(model_dir).name, "cache_max_entry_count": cache, "new_tokens": new_tokens,
               "concurrency": concurrency, "llm_bytes_per_token": decode_bytes_per_token(config["llm_config"]), "rows": []}

    def child(args: list[str], timeout: float, prefix: str) -> dict | None:
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "result.json"
            code, tail = _run_child([sys.executable, __file__, *args, "--result", str(result)], timeout, prefix)
            if code == 0 and result.is_file():
                return json.loads(result.read_text())
            last = (tail.strip().splitlines() or [""])[-1]  # the cause first: the table shows one line
            return {"error": f"{'timed out' if code is None else f'exit status {code}'}: {last}\n{tail[-1500:]}"}

    bw = child(["bandwidth", model_dir], 60, "bandwidth")
    results.update(bandwidth=bw, gpu=bw.get("gpu"), versions=bw.get("versions"))
    awq = child(["awq", model_dir, awq_dir, "--samples", str(samples), "--seqlen", str(seqlen), "--group", str(group)],
                300, "awq")
    if "error" in awq:
        results["awq_error"] = awq["error"]
    else:
        results.update(awq)
    write_json_atomic(out, results)
    for name in rows:
        left = budget_s - (time.time() - started)
        if left < 60:
            results["rows"].append({"row": name, "error": f"skipped: {left:.0f} s left of the {budget_s:.0f} s budget"})
            continue
        if ROWS[name][0] == "awq" and "error" in awq:
            results["rows"].append({"row": name, "error": "skipped: the AWQ build failed"})
            continue
        target = awq_dir if ROWS[name][0] == "awq" else model_dir
        print(f"[quant] {name} ({time.time() - started:.0f} s elapsed)", flush=True)
        row = child(["row", name, target, "--cache", str(cache), "--new-tokens", str(new_tokens),
                     "--concurrency", str(concurrency)], min(row_timeout_s, left), name)
        results["rows"].append({"row": name, **row})
        write_json_atomic(out, results)
    results["seconds"] = round(time.time() - started, 1)
    write_json_atomic(out, results)
    from labsupport.serve import quantize  # the table reads like notebook 06b's (awq is this run's build result here)

    print(quantize.measured_table([{**r, "file": "run", "machine": "this"} for r in results["rows"]]))
    print(f"[quant] wrote {out} in {results['seconds']:.0f} s")
    return 0 if all("error" not in r for r in results["rows"]) and "error" not in awq else 1


def main() -> int:
    """Command line: run (the recipe), and the children it starts: bandwidth, awq, row."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("model_dir")
    r.add_argument("out")
    r.add_argument("--rows", default="bf16,awq,kv-int8,kv-int4")
    r.add_argument("--budget-s", type=float, default=360.0)
    r.add_argument("--row-timeout-s", type=float, default=150.0)
    r.add_argument("--cache", type=float, default=0.4, help="cache_max_entry_count of every row")
    r.add_argument("--samples", type=int, default=32)
    r.add_argument("--seqlen", type=int, default=512)
    r.add_argument("--group", type=int, default=128)
    r.add_argument("--new-tokens", type=int, default=256)
    r.add_argument("--concurrency", type=int, default=64)
    for name in ("bandwidth", "awq", "row"):
        c = sub.add_parser(name)
        if name == "row":
            c.add_argument("row", choices=list(ROWS))
        c.add_argument("model_dir")
        if name == "awq":
            c.add_argument("awq_dir")
            c.add_argument("--samples", type=int, default=32)
            c.add_argument("--seqlen", type=int, default=512)
            c.add_argument("--group", type=int, default=128)
            c.add_argument("--device", default="cuda", help="cpu: a functional check on the tiny model")
        c.add_argument("--cache", type=float, default=0.4)
        c.add_argument("--new-tokens", type=int, default=256)
        c.add_argument("--concurrency", type=int, default=64)
        c.add_argument("--result", required=True)
    a = p.parse_args()
    if a.cmd == "run":
        return run(a.model_dir, a.out, [x for x in a.rows.split(",") if x], a.budget_s, a.row_timeout_s, a.cache,
                   a.samples, a.seqlen, a.group, a.new_tokens, a.concurrency)
    from labsupport.core.checkpoints import write_json_atomic

    if a.cmd == "bandwidth":
        from benchmarks import serve

        result = serve.serve_row("bandwidth", a.model_dir, 0, 0, 0, 0.0)
    elif a.cmd == "awq":
        result = build_awq(a.model_dir, a.awq_dir, a.samples, a.seqlen, a.group, a.device)
    else:
        result = serve_row(a.row, a.model_dir, a.cache, a.new_tokens, a.concurrency)
    write_json_atomic(a.result, result)
    sys.stdout.flush()
    os._exit(0)  # LMDeploy's engine threads would keep the process alive; the result is written


if __name__ == "__main__":
    sys.exit(main())
