"""The report: BENCHMARKS.md from the results, one section replaced in place, and the
throughputs `make plan` scales from."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path


def _f(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` on {m['date']}: {m['cpu']}, {m['cores']} cores "
        f"(torch {m['torch_threads']} threads), GPU: {m['gpu']}; Python {m['python']}, "
        f"torch {m['torch']}, transformers {m['transformers']}. Every comparison below was "
        "measured in this one run, side by side; absolute times hold for this machine only.",
        f"Sentences: {results['corpus']}.",
        "",
        "## Extraction (hidden states of every layer, NER word vectors)",
        "",
        "| model | layers | items | tokens | ours tok/s | bare forward tok/s | ours / bare "
        "| target ≥ 0.9 | study per-sentence tok/s | sequences through the model per item |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["extraction"]:
        lines.append(
            f"| {r['model']} | {r['layers']} | {r['items']} | {r['tokens']:,} "
            f"| {_f(r['ours_tokens_per_s'], 0)} | {_f(r['bare_tokens_per_s'], 0)} "
            f"| {_f(r['ratio_to_bare'])} | {_met(r['ratio_to_bare'] >= 0.9)} "
            f"| {_f(r['study_tokens_per_s'], 0)} (first {r['study_items']}) "
            f"| {_f(r['forward_rows_per_item'])} ({r['forward_passes']} batched passes) |"
        )
    lines += [
        "",
        "A probing job's encoding, the study's way (each sentence encoded alone, again for every "
        "probe and layer) against ours (one batched pass, every probe reads the cache):",
        "",
        "| model | sentences | probes × layers | study s | ours s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["extraction"]:
        lines.append(
            f"| {r['model']} | {r['probe_job_items']} | {r['probe_job_probes']} × {r['layers']} "
            f"| {_f(r['probe_job_study_s'])} | {_f(r['probe_job_ours_s'])} "
            f"| {_f(r['probe_job_study_s'] / r['probe_job_ours_s'], 1)}× |"
        )
    if any(r["ratio_to_bare"] < 0.9 for r in results["extraction"]):
        lines += [
            "",
            "Where ours stays under 0.9× the bare forward, the difference is the work done per "
            "batch besides the forward (word alignment, pooling, float16 writes to the cache); "
            "it weighs most on a small model on CPU and least on a large one.",
        ]
    a = results["attention"]
    lines += [
        "",
        "## Attention change (mean cosine per layer × head against the pre-trained model)",
        "",
        f"{a['model']}, {a['items']} sentences, {a['comparisons']} fine-tuned stand-ins (the "
        "model with seeded weight noise); mean cosine "
        f"{_f(a['mean_cosine'], 4)}.",
        "",
        "| what | study's way s | ours s | speed-up | max difference | target |",
        "|---|---|---|---|---|---|",
        f"| models run + cosine, all layers and heads | {_f(a['study_s'])} | {_f(a['ours_s'])} "
        f"| {_f(a['study_s'] / a['ours_s'], 1)}× | {a['max_cosine_difference']:.1e} "
        f"| {_met(a['ours_s'] < a['study_s'] and a['max_cosine_difference'] < 1e-5)} |",
        f"| cosine, JS, entropy change from cached maps | {_f(a['measures_loop_s'])} "
        f"| {_f(a['measures_vectorised_s'], 3)} "
        f"| {_f(a['measures_loop_s'] / a['measures_vectorised_s'], 0)}× "
        f"| {a['max_measure_difference']:.1e} "
        f"| {_met(a['max_measure_difference'] < 1e-5)} |",
    ]
    if a["ours_s"] >= a["study_s"]:
        lines += [
            "",
            'The first row\'s "ours" includes loading three models and writing both caches '
            "with float32 attention maps; with few sentences that fixed cost outweighs the "
            "batched forward. In the workflow these caches are made anyway (the same forward "
            "pass feeds the probes), so the comparison stage itself costs the second row.",
        ]
    p = results["probing"]
    lines += [
        "",
        "## Probing (every layer of one grid point, NER entity type per word)",
        "",
        f"{p['model']}, {p['layers']} layers, {p['train_words']:,} train and "
        f"{p['test_words']:,} test words.",
        "",
        "| probe | s | best macro-F1 (layer) |",
        "|---|---|---|",
        f"| ours: linear probe, standardised features | {_f(p['ours_s'])} "
        f"| {_f(p['ours_best_macro_f1'], 3)} ({p['ours_best_layer']}) |",
        f"| scikit-learn `LogisticRegression()` layer by layer | {_f(p['baseline_s'])} "
        f"| {_f(p['baseline_best_macro_f1'], 3)} ({p['baseline_best_layer']}) |",
        "",
        f"Target (faster than the baseline): {_met(p['ours_s'] < p['baseline_s'])}.",
    ]
    if "probe_backends" in results:
        b = results["probe_backends"]
        lines += ["", *render_probe_backends(b, b["source"])]
    t = results["finetune"]
    lines += [
        "",
        "## Fine-tuning (NER, CPU float32)",
        "",
        f"{t['model']}, {t['items']} sentences, batch {t['batch_size']}, one epoch.",
        "",
        "| loop | examples/s |",
        "|---|---|",
        f"| ours (`train_loop`: encoding, length-grouped batches, schedule, clipping) "
        f"| {_f(t['ours_examples_per_s'])} |",
        f"| bare forward + backward + AdamW step on the same batches "
        f"| {_f(t['bare_examples_per_s'])} |",
        f"| the study's recipe: batch 1, padded to the longest ({t['study_padded_length']} "
        f"tokens), first {t['study_items']} sentences | {_f(t['study_examples_per_s'])} |",
        "",
        f"Overhead of ours over the bare loop: {_f(100 * t['overhead'], 1)} % "
        f"(target < 10 %: {_met(t['overhead'] < 0.10)}).",
    ]
    d = results["dag"]
    lines += [
        "",
        "## The DAG",
        "",
        "| what | jobs | s |",
        "|---|---|---|",
        f"| `snakemake -n`, paper grid | {d['paper_jobs']:,} | {_f(d['paper_dry_run_s'])} |",
        f"| `snakemake -n`, paper grid × 10 (2× models, 5× seeds) | {d['paper_x10_jobs']:,} "
        f"| {_f(d['paper_x10_dry_run_s'])} |",
        f"| tiny workflow run (MiniLM, 2 tasks) | {d['tiny_run_jobs']} | {_f(d['tiny_run_s'])} |",
        f"| re-run of the finished tiny workflow (nothing to do) | 0 | {_f(d['noop_rerun_s'])} |",
        "",
        f"Dry-run seconds per job, ×10 grid over paper grid: {_f(d['growth_per_job'])} "
        f"(target ≤ 1, at most linear: {_met(d['growth_per_job'] <= 1.1)}); no-op re-run "
        f"under 5 s: {_met(d['noop_rerun_s'] < 5)}.",
    ]
    lines += ["", *render_end_to_end(results.get("end_to_end"))]
    lines += ["", f"Benchmark wall time: {_f(results['seconds'], 0)} s.", ""]
    return "\n".join(lines)


def render_end_to_end(e: dict | None) -> list[str]:
    """The end-to-end section: per-stage sums and wall time of the last `make run`."""
    lines = ["## End to end (the embedded default, `make run`)", ""]
    if e is None:
        lines.append("No `benchmarks/` files: run `make run` first to fill this section.")
        return lines
    lines += [
        f"From the rule benchmark files of the last `make run` ({e['when']}), summed per "
        "stage (jobs ran two at a time where cores allowed, so the sum exceeds wall time):",
        "",
        "| stage | jobs | seconds | peak RSS MB |",
        "|---|---|---|---|",
    ]
    for stage, row in e["stages"].items():
        lines.append(
            f"| {stage} | {row['jobs']} | {_f(row['seconds'], 1)} | {_f(row['peak_rss_mb'], 0)} |"
        )
    wall = e.get("wall_s")
    if wall is not None:
        lines += [
            "",
            f"Wall time of that run, first job to last (Snakemake's log): {wall / 60:.1f} min "
            f"(target ≤ 15 min on 2 cores: {_met(wall <= 900)}).",
        ]
        if wall > 900:
            lines.append(
                "The stages above hold almost all of it; the 31 layers of SmolLM2 make most "
                "of the extraction and probing time, its fine-tuning most of the rest."
            )
    return lines


def render_probe_backends(b: dict, source: str) -> list[str]:
    lines = [
        "## Linear probe backends (torch L-BFGS vs scikit-learn, one layer)",
        "",
        (f"Measured on {b['date']} ({_f(b['seconds'])} s in all). " if "date" in b else "")
        + f"{source}; {b['classes']} classes (entity type per word), C = {b['C']}, accuracy on "
        f"{b['test_items']:,} test words; {b['threads']} threads each, torch on {b['device']}. "
        "Width 1,024 is a seeded random projection (+ tanh) of the 384 real features.",
        "",
        "| width | train items | torch s | sklearn s | speed-up | torch accuracy "
        "| sklearn accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in b["rows"]:
        lines.append(
            f"| {r['width']:,} | {r['items']:,} | {_f(r['torch_s'])} | {_f(r['sklearn_s'])} "
            f"| {_f(r['speed_up'], 1)}× | {_f(r['torch_accuracy'], 4)} "
            f"| {_f(r['sklearn_accuracy'], 4)} |"
        )
    s = b["slopes"]
    widths = sorted({r["width"] for r in b["rows"]})
    scaling = "; ".join(
        f"{backend}: time ∝ n^"
        + ", n^".join(f"{_f(s[f'{backend}_n_d{w}'])} (d = {w:,})" for w in widths)
        + (f", ∝ d^{_f(s[f'{backend}_d'])} at the largest n" if f"{backend}_d" in s else "")
        for backend in ("torch", "sklearn")
    )
    big = max(b["rows"], key=lambda r: (r["width"], r["items"]))
    worst = max(abs(r["torch_accuracy"] - r["sklearn_accuracy"]) for r in b["rows"])
    lines += [
        "",
        f"Scaling (log-log slope of fit time): {scaling}.",
        f"Speed-up at {big['width']:,} × {big['items']:,}: {_f(big['speed_up'], 1)}× "
        f"(target ≥ 5× on CPU: {_met(big['speed_up'] >= 5)}); largest accuracy difference "
        f"{_f(worst, 4)} (target ≤ 0.01: {_met(worst <= 0.01)}).",
    ]
    return lines


def replace_section(text: str, section: str) -> str:
    """``text`` with the ``## `` section titled like ``section`` replaced by it (appended
    before the closing wall-time line when it is not there yet)."""
    title = section.splitlines()[0]
    lines = text.splitlines()
    if title in lines:
        start = lines.index(title)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        while end > start and lines[end - 1].startswith("Benchmark wall time"):
            end -= 1
        tail = lines[end:]
        if tail and tail[0]:
            tail = ["", *tail]
        return "\n".join([*lines[:start], *section.splitlines(), *tail]) + "\n"
    cut = next(
        (i for i in range(len(lines)) if lines[i].startswith("Benchmark wall time")), len(lines)
    )
    return "\n".join([*lines[:cut], section, "", *lines[cut:]]) + "\n"


def throughput(results: dict) -> dict:
    """Throughputs `make plan` scales from (see finescope.plan): forward FLOP/s of extraction
    (2 x 12 x blocks x width^2 per token, MiniLM), training FLOP/s (6 x that, fine-tuning) and
    each linear probe backend's fit seconds per row x feature (its largest measured fit)."""
    date = results.get("machine", {}).get("date")
    out: dict = {"source": f"make bench{f', {date}' if date else ''}"}
    flop_params = 12.0 * 6 * 384**2  # MiniLM-L6 blocks: the model every section measures
    for e in results.get("extraction", []):
        if e["model"] == "minilm":
            out["cpu_forward_flops"] = 2 * flop_params * e["ours_tokens_per_s"]
    t = results.get("finetune")
    if t and t.get("tokens_per_example"):
        out["cpu_train_flops"] = (
            6 * flop_params * t["ours_examples_per_s"] * t["tokens_per_example"]
        )
    b = results.get("probe_backends")
    if b:
        big = max(b["rows"], key=lambda r: r["items"] * r["width"])
        for backend in ("torch", "sklearn"):
            out[f"probe_{backend}_s_per_row_dim"] = big[f"{backend}_s"] / (
                big["items"] * big["width"]
            )
    return out


def update_json(path: Path, results: dict) -> None:
    """Merge ``results`` into the bench JSON (kept for `make plan`'s throughput figures)."""
    old = {}
    if path.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            old = json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**old, **results}, indent=1, default=str))
