"""The GPU results the course measured (docs/gpu/*.json), read into tables and a figure for the notebooks."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence
from labsupport.model.params import internvl2_2b_config
from labsupport.model.params import internvl2_4b_config
from labsupport.train import memory
from labsupport.core.paths import repo_root
from labsupport.core.plots import pyplot



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


def estimate_for_run(shape: "memory.VLMShape", mode: str, zero: int, gpus: int, batch: int, stats: dict,
                     lora_r: int, **options) -> "memory.Estimate":
    """The memory estimator for a training run whose data has STATS (dataset_stats): its longest sample, its mean tiles."""

    return memory.estimate(shape, mode=mode, zero=zero, gpus=gpus, batch=batch, seq=stats["max_tokens"],
                           lora_r=lora_r, tiles=max(1, round(stats["mean_tiles"])), **options)


# ---- measured results (docs/gpu) -------------------------------------------------------------------
def measured_dir() -> Path:
    """Where the GPU results the course quotes are kept: docs/gpu/ in the repository."""

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
