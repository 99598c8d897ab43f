"""`python -m benchmarks build-2b|build-4b|serve|train|levers|report`: the maintainers' GPU benchmarks."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from labsupport.core.checkpoints import write_json_atomic
from labsupport.core.paths import artifacts_dir
from benchmarks.build import BUILDS
from benchmarks.build import DEFAULT_PEAK_FLOPS
from benchmarks.serve import DEFAULT_SERVE_ROWS
from benchmarks.build import GIB
from benchmarks.train import LEVER_ROWS
from benchmarks.serve import SERVE_ROWS
from benchmarks.build import build_model
from labsupport.evaluate.measured import format_table
from benchmarks.train import levers
from labsupport.evaluate.measured import measured_tables
from labsupport.evaluate.measured import plot_measured
from benchmarks.serve import serve
from benchmarks.serve import serve_row
from benchmarks.train import train
from benchmarks.build import save_results


# ---- command line ---------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build-2b, build-4b, serve, train, levers, report (and serve-row, which `serve` runs in a fresh process per row)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
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
