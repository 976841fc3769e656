"""extract.keep: none and finetune.keep_model: false: every hidden-state cache is deleted once
its probe and compare jobs are done, and every fine-tuned model once its extraction jobs are;
the run still completes, a re-run has nothing to do, and a changed probe setting re-extracts
(and re-trains) what it needs."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from tests.workflow_utils import merge_config, planned_jobs, snakemake, tiny_config

# tiny_config's fine-tuning, with temporary weights.
FINETUNE = {"epochs": 1, "batch_size": 8, "learning_rate": 0.001, "max_length": 64}

pytestmark = pytest.mark.workflow

RUN = ("--cores", "2", "--set-threads", "finetune=1", "extract=1", "probe=1")
TASKS = {"ner": {"data": {"source": "synthetic", "train": 40, "dev": 9, "test": 15}}}


def _caches(workdir):
    root = workdir / "results" / "cache"
    return sorted(p for p in root.rglob("meta.json")) if root.exists() else []


def test_temporary_caches_are_removed_after_their_consumers(tmp_path, tiny_bert_dir):
    config = tiny_config(
        tmp_path,
        {"bert": (tiny_bert_dir, "encoder")},
        tasks=TASKS,
        fractions=[0, 100],
        extract={"batch_size": 8, "max_length": 64, "attention_items": 4, "keep": "none"},
        finetune={**FINETUNE, "keep_model": False},
    )
    # The caches' consumers as targets (the analysis after them does not touch caches).
    probes = [f"results/probe/ner/bert/{p}.csv" for p in ("f0/s0", "frandom/s0", "f100/s1")]
    targets = [*probes, "results/change/ner/bert/f100/s1.csv"]
    args = (*targets, "--configfile", str(config))
    planned = planned_jobs(tmp_path, *args)
    assert planned["extract"] == 3 and planned["probe"] == 3 and planned["compare"] == 1

    # Targets first: --set-threads takes every value after it.
    run = snakemake(tmp_path, *targets, *RUN, "--configfile", str(config))
    log = run.stdout + run.stderr
    assert log.count("Removing temporary output") == 7  # 6 caches, 1 fine-tuned model
    # Every cache was made, read and then removed; what they fed is all there.
    assert _caches(tmp_path) == []
    assert all(len(pd.read_csv(tmp_path / p)) for p in targets)
    # The fine-tuned weights went once both caches were extracted; its scores stay.
    trained = tmp_path / "results/finetune/ner/bert/f100/s1"
    assert not (trained / "model").exists()
    assert (trained / "metrics.json").is_file() and (trained / "curve.csv").is_file()

    # Deleted temporary outputs are not missing outputs: nothing to do.
    assert planned_jobs(tmp_path, *args) == {}

    # A changed probe setting re-runs the probes, which need their caches back; the compare job
    # reads a re-made cache and so runs again too.
    changed = merge_config(yaml.safe_load(config.read_text()), {"probe": {"linear": {"C": 0.5}}})
    variant = tmp_path / "config-c.yaml"
    variant.write_text(yaml.safe_dump(changed, sort_keys=False))
    again = planned_jobs(tmp_path, *targets, "--configfile", str(variant))
    assert again == {"extract": 3, "probe": 3, "compare": 1, "finetune": 1}
