"""The DAG: Snakemake dry runs of the paper grid and one ten times larger, a tiny run and its
no-op re-run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.common import ROOT


def _snakemake(workdir: Path, *args: str, timeout: int = 900) -> tuple[float, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    cmd += ["--directory", str(workdir), *args]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return seconds, result.stdout + result.stderr


def _n_jobs(text: str) -> int:
    match = re.search(r"^total\s+(\d+)\s*$", text, flags=re.M)
    return int(match.group(1)) if match else 0


def _bigger_paper_grid(work: Path) -> Path:
    """The paper grid with twice the models and five times the seeds: ten times the jobs."""
    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    for name, model in list(config["models"].items()):
        config["models"][f"{name}-b"] = {**model, "ref": model["ref"] + "-b"}
    config["seeds"] = list(range(1, 5 * len(config["seeds"]) + 1))
    path = work / "paper-x10.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def tiny_run_config(work: Path, model_dir: Path) -> Path:
    config = {
        "tasks": {
            task: {"data": {"source": "synthetic", "train": 24, "dev": 8, "test": 16}}
            for task in ("nli", "ner")
        },
        "models": {"minilm": {"ref": str(model_dir), "family": "encoder", "domain": "general"}},
        "fractions": [0, 100],
        "seeds": [1],
        "finetune": {"epochs": 1, "batch_size": 8, "checkpoint_every": 0},
        "extract": {"attention_items": 4},
        "probe": {"probes": ["linear"]},
        "analysis": {"n_boot": 20},
    }
    path = work / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def bench_dag(model_dir: Path, work: Path) -> dict:
    paper = ROOT / "config" / "paper.yaml"
    out = {}
    for label, config in (("paper", paper), ("paper_x10", _bigger_paper_grid(work))):
        folder = work / f"dag-{label}"
        folder.mkdir()
        seconds, text = _snakemake(folder, "-n", "--configfile", str(config))
        out[f"{label}_jobs"] = _n_jobs(text)
        out[f"{label}_dry_run_s"] = seconds
    out["growth_per_job"] = (out["paper_x10_dry_run_s"] / out["paper_x10_jobs"]) / (
        out["paper_dry_run_s"] / out["paper_jobs"]
    )
    folder = work / "dag-tiny"
    folder.mkdir()
    config = tiny_run_config(work, model_dir)
    seconds, text = _snakemake(folder, "--cores", "2", "--configfile", str(config))
    out["tiny_run_jobs"] = _n_jobs(text)
    out["tiny_run_s"] = seconds
    seconds, text = _snakemake(folder, "--cores", "2", "--configfile", str(config))
    if "Nothing to be done" not in text:
        raise RuntimeError(f"a re-run of a finished workflow did work:\n{text[-3000:]}")
    out["noop_rerun_s"] = seconds
    return out
