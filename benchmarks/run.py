"""`make bench`: every costly stage measured in one run on one machine, against the limit of the
work it does (the bare model pass) and against the way the study's published scripts did it.

The targets are ratios measured side by side; absolute numbers hold only for the machine named in
the output. ``python -m benchmarks --out BENCHMARKS.md`` (from the repository root) writes the
table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import transformers

from benchmarks.attention import bench_attention
from benchmarks.common import (
    DEFAULT_MODELS,
    QUICK,
    ROOT,
    SHARED_DATA,
    Sizes,
    machine_facts,
    model_folder,
    ner_corpus,
    sample,
)
from benchmarks.dag import bench_dag
from benchmarks.end_to_end import last_run_wall_seconds, stage_totals
from benchmarks.extraction import bench_extraction
from benchmarks.finetuning import bench_finetune
from benchmarks.probing import bench_probing, run_probe_backends
from benchmarks.report import (
    render,
    render_end_to_end,
    render_probe_backends,
    replace_section,
    throughput,
    update_json,
)


def run_all(z: Sizes, data_dir: Path, work: Path, log: Callable[[str], None] = print) -> dict:
    started = time.perf_counter()
    results: dict = {"machine": machine_facts(), "sizes": asdict(z)}
    corpus, results["corpus"] = ner_corpus(data_dir, work)
    test = sample(corpus["test"], z.extract_items)
    folders = {name: model_folder(name, ref, work) for name, ref in DEFAULT_MODELS.items()}
    results["extraction"] = []
    for name, folder in folders.items():
        log(f"extraction: {name}")
        items = test if name == "minilm" else test[: z.decoder_extract_items]
        results["extraction"].append(bench_extraction(name, folder, items, z, work))
    log("attention change: minilm")
    results["attention"] = bench_attention(
        "minilm", folders["minilm"], test[: z.attention_items], work
    )
    log("probing: minilm")
    results["probing"] = bench_probing(
        "minilm",
        folders["minilm"],
        sample(corpus["train"], z.probe_train_items, seed=1),
        test[: z.probe_test_items],
        work,
    )
    log("linear probe backends: minilm")
    results["probe_backends"] = run_probe_backends(z, data_dir, work, log)
    log("fine-tuning: minilm")
    results["finetune"] = bench_finetune(
        "minilm", folders["minilm"], sample(corpus["train"], z.finetune_items, seed=2), z
    )
    log("the DAG")
    results["dag"] = bench_dag(folders["minilm"], work)
    end_to_end = last_run()
    if end_to_end is not None:
        results["end_to_end"] = end_to_end
    results["seconds"] = time.perf_counter() - started
    return results


def last_run(root: Path = ROOT) -> dict | None:
    """Per-stage sums and wall time of the last `make run` in ``root``, from its rule benchmark
    files and Snakemake log (None before any run)."""
    stages = stage_totals(root / "benchmarks")
    if stages is None:
        return None
    newest = max(p.stat().st_mtime for p in (root / "benchmarks").rglob("*.tsv"))
    return {
        "when": dt.datetime.fromtimestamp(newest, dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "stages": stages.to_dict(orient="index"),
        "wall_s": last_run_wall_seconds(root / ".snakemake" / "log"),
    }


def _replace_in_place(out: Path, lines: list[str]) -> None:
    """Print one rendered section and put it in place of its namesake in ``out``."""
    section = "\n".join(lines)
    print(section)
    old = out.read_text() if out.is_file() else "# Benchmarks\n"
    out.write_text(replace_section(old, section))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "bench.json")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the code")
    parser.add_argument(
        "--only",
        choices=["probe", "end_to_end"],
        help="probe: only the linear probe backends' section; end_to_end: only the section "
        "of the last `make run` (no measuring); either replaced in place in --out",
    )
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    z = QUICK if args.quick else Sizes()
    if args.only == "end_to_end":
        run = last_run()
        _replace_in_place(args.out, render_end_to_end(run))
        update_json(args.json, {"end_to_end": run})
        return 0
    if args.only == "probe":
        with tempfile.TemporaryDirectory(prefix="finescope-bench-") as tmp:
            result = run_probe_backends(z, args.data, Path(tmp))
        _replace_in_place(args.out, render_probe_backends(result, result["source"]))
        old = json.loads(args.json.read_text()) if args.json.is_file() else {}
        rates = {**old.get("throughput", {}), **throughput({"probe_backends": result})}
        update_json(args.json, {"probe_backends": result, "throughput": rates})
        return 0
    with tempfile.TemporaryDirectory(prefix="finescope-bench-") as tmp:
        results = run_all(z, args.data, Path(tmp))
    results["throughput"] = throughput(results)
    text = render(results)
    print(text)
    args.out.write_text(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
