"""Reliability of the workflow on tiny models: only stale targets recompute, a killed job recovers
to the results of an uninterrupted run, two clean runs agree exactly, and a bad config stops the
run with a message that names the config key (before any job, except a hub id missing from the
offline cache, which only the job that fetches it can find out).

One complete run (module fixture) is the reference; scenarios that change files work on a copy
of it (``copytree`` keeps the modification times and Snakemake's metadata in .snakemake/).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

from finescope.io import read_json
from finescope.synthetic import generate_splits
from tests.workflow_utils import dry_run_jobs, merge_config, planned_jobs, snakemake, tiny_config

HOOKS = Path(__file__).parent / "hooks"


def _hook(name: str, **env: str) -> dict[str, str]:
    """The environment that loads tests/hooks/<name>/sitecustomize.py into every job."""
    path = os.pathsep.join([str(HOOKS / name), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path, **env}


pytestmark = pytest.mark.workflow

# Rules that read every grid point: any stale point re-runs them.
ANALYSIS = {"tables": 1, "correlations": 1, "figures": 1, "summary": 1, "all": 1}
# NER reads local token<TAB>tag files (so that a data edit can be tested); NLI is synthetic.
# One sentence more than the corpus holds, for the data-edit scenario.
# 40 training sentences: 16 go to the probe pool (tiny_config), 24 are left to fine-tune on.
NER_ITEMS = generate_splits("ner", {"train": 41, "dev": 9, "test": 15}, seed=5)
TASKS = {
    "nli": {"data": {"source": "synthetic", "train": 40, "dev": 9, "test": 15}},
    "ner": {
        "data": {
            "source": "files",
            "format": "tsv",
            "train": "corpus/train.tsv",
            "dev": "corpus/dev.tsv",
            "test": "corpus/test.tsv",
        }
    },
}
# Facts of a run that differ by design (wall clock, where it resumed); the rest must match.
TIMING_KEYS = {"train_seconds", "examples_per_second", "resumed_from_step"}
# Two single-threaded jobs at a time (jobs are mostly start-up), and the same thread count in
# every run: results on CPU depend on it.
RUN = ("--cores", "2", "--set-threads", "finetune=1", "extract=1")


def _tsv(items: list[dict]) -> str:
    return "".join(
        "".join(f"{t}\t{g}\n" for t, g in zip(item["tokens"], item["tags"], strict=True)) + "\n"
        for item in items
    )


def _write_corpus(workdir: Path) -> None:
    corpus = workdir / "corpus"
    corpus.mkdir()
    (corpus / "train.tsv").write_text(_tsv(NER_ITEMS["train"][:40]))
    (corpus / "dev.tsv").write_text(_tsv(NER_ITEMS["dev"]))
    (corpus / "test.tsv").write_text(_tsv(NER_ITEMS["test"]))


def _base_config(workdir: Path, bert: Path) -> Path:
    _write_corpus(workdir)
    return tiny_config(workdir, {"bert": (bert, "encoder")}, tasks=TASKS, fractions=[0, 100])


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_bert_dir):
    """One complete run: bert x {nli, ner} x fractions {0, random, 100} x seed 1."""
    workdir = tmp_path_factory.mktemp("reliability")
    _base_config(workdir, tiny_bert_dir)
    _run(workdir)
    return workdir


def _run(workdir: Path, *targets: str, check: bool = True, env: dict | None = None):
    """Run (targets first: --configfile and --set-threads take every value after them)."""
    config = str(workdir / "config.yaml")
    return snakemake(workdir, *targets, *RUN, "--configfile", config, check=check, env=env)


def _variant(workdir: Path, name: str, **changes) -> Path:
    """The finished run's config with ``changes`` merged in, as its own file."""
    config = merge_config(yaml.safe_load((workdir / "config.yaml").read_text()), changes)
    path = workdir / f"config-{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _copy(workdir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(workdir, target, symlinks=True)
    return target


def _planned(workdir: Path, config: Path) -> tuple[Counter, list[dict]]:
    jobs = dry_run_jobs(workdir, "--configfile", str(config))
    return Counter(job["rule"] for job in jobs), jobs


def _points(jobs: list[dict], *keys: str) -> set[tuple]:
    """The distinct wildcard values of the jobs that have wildcards."""
    return {tuple(job["wildcards"][k] for k in keys) for job in jobs if job["wildcards"]}


def _without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def _table(path: Path) -> pd.DataFrame:
    """A result table without wall-clock columns or measures."""
    table = pd.read_csv(path)
    if "measure" in table.columns:
        table = table[~table["measure"].astype(str).str.contains("second")]
    return table.drop(columns=[c for c in table.columns if "second" in c]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Only stale targets recompute
# ---------------------------------------------------------------------------------------------


def test_nothing_changed_plans_nothing(finished):
    assert planned_jobs(finished, "--configfile", str(finished / "config.yaml")) == {}


def test_a_probe_setting_reruns_the_probes_and_the_analysis_only(finished):
    rules, jobs = _planned(finished, _variant(finished, "probe-c", probe={"linear": {"C": 0.5}}))
    # 2 tasks x {0, random, 100}; no data, fine-tuning, extraction or comparison job.
    assert rules == {"probe": 6} | ANALYSIS
    assert _points(jobs, "task", "fraction") == {
        (t, f) for t in ("nli", "ner") for f in ("0", "random", "100")
    }
    # The params trigger: probe settings reach the job as `params:`.
    for job in jobs:
        if job["rule"] == "probe":
            assert job["reason"].startswith("Params have changed since last execution"), job


def test_the_probe_seed_re_extracts_only_the_random_baseline(finished):
    # The seed draws the random baseline's weights; pre-trained and fine-tuned states keep.
    rules, jobs = _planned(finished, _variant(finished, "probe-seed", probe={"seed": 7}))
    assert rules == {"probe": 6, "extract": 2} | ANALYSIS
    extracts = [job for job in jobs if job["rule"] == "extract"]
    assert _points(extracts, "task", "fraction") == {(t, "random") for t in ("nli", "ner")}


def test_the_learning_rate_reruns_training_and_what_depends_on_it(finished):
    rules, jobs = _planned(finished, _variant(finished, "lr", finetune={"learning_rate": 0.002}))
    # Fraction 100 only: the pre-trained model (0) and the random baseline are not trained, and
    # data and subsets do not depend on the learning rate.
    assert rules == {"finetune": 2, "extract": 2, "probe": 2, "compare": 2} | ANALYSIS
    assert _points(jobs, "fraction", "seed") == {("100", "1")}
    for job in jobs:
        if job["rule"] == "finetune":
            assert job["reason"].startswith("Params have changed since last execution"), job


def test_a_new_model_runs_only_its_own_jobs(finished, tiny_llama_dir):
    llama = {"ref": str(tiny_llama_dir), "family": "decoder", "domain": "general"}
    rules, jobs = _planned(finished, _variant(finished, "model", models={"llama": llama}))
    own = {
        "prepare_model": 1,
        "finetune": 2,
        "extract": 6,  # 2 tasks x {0, random, 100}, each writing its probe and test caches
        "probe": 6,
        "compare": 2,
    }
    assert rules == own | ANALYSIS
    assert _points(jobs, "model") == {("llama",)}


def test_a_new_fraction_runs_only_the_new_grid_points(finished):
    rules, jobs = _planned(finished, _variant(finished, "fraction", fractions=[0, 50, 100]))
    trained = {"subsample": 2, "finetune": 2, "extract": 2, "probe": 2, "compare": 2}
    # The data table lists every subset, so it is redone too.
    assert rules == trained | {"data_table": 1} | ANALYSIS
    assert _points(jobs, "fraction", "seed") == {("50", "1")}


def test_a_new_seed_runs_only_the_new_grid_points(finished):
    rules, jobs = _planned(finished, _variant(finished, "seed", seeds=[1, 2]))
    trained = {"subsample": 2, "finetune": 2, "extract": 2, "probe": 2, "compare": 2}
    assert rules == trained | {"data_table": 1} | ANALYSIS
    assert _points(jobs, "fraction", "seed") == {("100", "2")}


def test_an_edited_data_file_reruns_its_task_only(finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    with (workdir / "corpus" / "train.tsv").open("a") as fh:
        fh.write(_tsv(NER_ITEMS["train"][40:]))
    rules, jobs = _planned(workdir, workdir / "config.yaml")
    # Everything downstream of the NER data, nothing of NLI or of the model.
    ner = {
        "prepare_data": 1,
        "subsample": 1,
        "finetune": 1,
        "extract": 3,
        "probe": 3,
        "compare": 1,
        "data_table": 1,
    }
    assert rules == ner | ANALYSIS
    assert _points(jobs, "task") == {("ner",)}
    prepare = next(job for job in jobs if job["rule"] == "prepare_data")
    # The file is an input of the data job (mtime and checksum trigger), not only a param.
    assert "Updated input files: corpus/train.tsv" in prepare["reason"]


# ---------------------------------------------------------------------------------------------
# Interruption
# ---------------------------------------------------------------------------------------------


def test_a_killed_finetune_resumes_to_the_metrics_of_an_uninterrupted_run(finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    point = workdir / "results/finetune/ner/bert/f100/s1"
    reference = read_json(point / "metrics.json")
    reference_curve = _table(point / "curve.csv")
    reference_weights = load_file(point / "model" / "model.safetensors")
    shutil.rmtree(point)
    target = "results/finetune/ner/bert/f100/s1/metrics.json"

    # 24 sentences (40 less the probe pool) / batch 8 = 3 steps; a checkpoint every 2 steps;
    # killed after the first.
    killed = _run(
        workdir,
        target,
        check=False,
        env=_hook("kill_after_checkpoint"),
    )
    assert killed.returncode != 0
    assert "Error in rule finetune" in killed.stdout + killed.stderr
    assert not (point / "metrics.json").exists() and not (point / "model").exists()
    checkpoints = workdir / "results/checkpoints/ner/bert/f100/s1"
    assert [p.name for p in checkpoints.iterdir()] == ["step-000000002"]

    _run(workdir, target, "--rerun-incomplete")
    metrics = read_json(point / "metrics.json")
    assert metrics["resumed_from_step"] == 2
    assert metrics["score"] == reference["score"]
    assert _without_timing(metrics) == _without_timing(reference)
    pd.testing.assert_frame_equal(_table(point / "curve.csv"), reference_curve, check_exact=True)
    weights = load_file(point / "model" / "model.safetensors")
    assert weights.keys() == reference_weights.keys()
    assert all(np.array_equal(weights[k].numpy(), reference_weights[k].numpy()) for k in weights)
    assert not checkpoints.exists()  # removed once the job succeeded


def _cache_arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(folder.glob("*.npy"))}


def _cache_meta(folder: Path) -> dict:
    """meta.json without timings and the absolute model path (the copy has its own)."""
    meta = read_json(folder / "meta.json")
    return {k: v for k, v in meta.items() if "second" not in k and k != "model_dir"}


def test_a_killed_extraction_leaves_no_partial_cache_and_recovers(finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    cache_rel = "results/cache/ner/bert/f0/s0/test"
    probe_rel = "results/probe/ner/bert/f0/s0.csv"
    cache, probe = workdir / cache_rel, workdir / probe_rel
    reference_arrays, reference_meta = _cache_arrays(cache), _cache_meta(cache)
    reference_probe = _table(probe)
    shutil.rmtree(cache)
    probe.unlink()

    # Killed with the cache complete under its temporary name, just before the rename.
    killed = _run(
        workdir,
        probe_rel,
        check=False,
        env=_hook("kill_before_rename", KILL_BEFORE_RENAME=cache_rel),
    )
    assert killed.returncode != 0
    assert "Error in rule extract" in killed.stdout + killed.stderr
    assert not cache.exists()  # no reader ever sees a half-made cache
    (partial,) = cache.parent.glob(".test.*.tmp")
    assert (partial / "meta.json").is_file()

    _run(workdir, probe_rel, "--rerun-incomplete")
    arrays = _cache_arrays(cache)
    assert arrays.keys() == reference_arrays.keys() == {"attention.npy", "word.npy"}
    assert all(np.array_equal(arrays[k], reference_arrays[k]) for k in arrays)
    assert _cache_meta(cache) == reference_meta
    pd.testing.assert_frame_equal(_table(probe), reference_probe, check_exact=True)
    # The rerun cleared the killed attempt's temporary (hidden states can be gigabytes).
    assert list((workdir / "results").rglob(".*.tmp")) == []


def test_a_killed_probe_leaves_no_table_and_recovers(finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    probe_rel = "results/probe/nli/bert/f100/s1.csv"
    probe = workdir / probe_rel
    reference = _table(probe)
    probe.unlink()

    killed = _run(
        workdir,
        probe_rel,
        check=False,
        env=_hook("kill_before_rename", KILL_BEFORE_RENAME=probe_rel),
    )
    assert killed.returncode != 0
    assert "Error in rule probe" in killed.stdout + killed.stderr
    assert not probe.exists()

    _run(workdir, probe_rel, "--rerun-incomplete")
    pd.testing.assert_frame_equal(_table(probe), reference, check_exact=True)
    assert list((workdir / "results").rglob(".*.tmp")) == []


def test_a_corrupt_cache_is_reported_with_the_path_to_delete_and_rebuilt_once_deleted(
    finished, tmp_path
):
    workdir = _copy(finished, tmp_path)
    cache_rel = "results/cache/ner/bert/f0/s0/probe"
    probe_rel = "results/probe/ner/bert/f0/s0.csv"
    reference = _table(workdir / probe_rel)
    word = workdir / cache_rel / "word.npy"
    word.write_bytes(word.read_bytes()[: word.stat().st_size // 2])

    # Snakemake dates a directory output by its .snakemake_timestamp and cannot see damage
    # inside it; the probe that reads the cache must.
    failed = _run(workdir, probe_rel, "--force", check=False)
    assert failed.returncode != 0
    assert "Error in rule probe" in failed.stdout + failed.stderr
    log = (workdir / "logs/probe/ner/bert/f0/s0.log").read_text()
    assert f"corrupt cache at {cache_rel}: word.npy" in log
    assert "delete it and re-run" in log

    # Doing what the message says is enough: the cache and then the probe are rebuilt.
    shutil.rmtree(workdir / cache_rel)
    _run(workdir, probe_rel)
    pd.testing.assert_frame_equal(_table(workdir / probe_rel), reference, check_exact=True)


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def test_two_clean_runs_give_identical_results(finished, tmp_path):
    second = tmp_path / "second"
    second.mkdir()
    shutil.copytree(finished / "corpus", second / "corpus")
    shutil.copy(finished / "config.yaml", second / "config.yaml")
    # Both tasks' data, subsets and fine-tuning, and the NER chain through probe and comparison
    # (a second run of the whole grid would double the time of this file).
    point = "ner/bert/f100/s1"
    _run(
        second,
        "results/finetune/nli/bert/f100/s1/metrics.json",
        f"results/finetune/{point}/metrics.json",
        f"results/probe/{point}.csv",
        f"results/change/{point}.csv",
    )

    for folder in ("results/data", "results/subsets"):
        first_files = sorted(p.relative_to(finished) for p in (finished / folder).rglob("*.*"))
        second_files = sorted(p.relative_to(second) for p in (second / folder).rglob("*.*"))
        # data: train, dev, test, probe (the probe pool) and labels.json per task.
        assert len(first_files) == (10 if folder == "results/data" else 2)
        assert second_files == first_files, folder
        for rel in first_files:
            assert (second / rel).read_bytes() == (finished / rel).read_bytes(), rel

    for task in ("nli", "ner"):
        rel = f"results/finetune/{task}/bert/f100/s1/metrics.json"
        first, again = read_json(finished / rel), read_json(second / rel)
        assert again["score"] == first["score"], rel
        assert _without_timing(again) == _without_timing(first), rel

    for rel in (f"results/probe/{point}.csv", f"results/change/{point}.csv"):
        first, again = _table(finished / rel), _table(second / rel)
        assert len(first) > 0, rel
        pd.testing.assert_frame_equal(again, first, check_exact=True)


# ---------------------------------------------------------------------------------------------
# Bad config input
# ---------------------------------------------------------------------------------------------


def _fails_before_any_job(workdir: Path, config: Path, *expected: str) -> None:
    result = snakemake(workdir, "--configfile", str(config), "--cores", "1", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    for text in expected:
        assert text in output, f"{text!r} not in:\n{output[-3000:]}"
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()


BAD_CONFIGS = {
    "unknown key": (
        {"fractionz": [0, 100]},
        ["config key fractionz", "unknown key at the top level; did you mean 'fractions'?"],
    ),
    "wrong type": (
        {"finetune": {"epochs": "two"}},
        ["config key finetune.epochs", "'two' is not of type 'integer'"],
    ),
    "fraction above 100": (
        {"fractions": [0, 150]},
        ["config key fractions[1]", "150 is greater than the maximum of 100"],
    ),
    "empty model list": ({"models": {}}, ["config key models", "is empty"]),
    "missing model folder": (
        {"models": {"bert": {"ref": "./no/such/model"}}},
        ["config key models.bert.ref: local path", "no/such/model does not exist"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_a_bad_config_stops_before_any_job_naming_the_key(case, tiny_bert_dir, tmp_path):
    changes, expected = BAD_CONFIGS[case]
    base = yaml.safe_load(tiny_config(tmp_path, {"bert": (tiny_bert_dir, "encoder")}).read_text())
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(base | changes, sort_keys=False))
    _fails_before_any_job(tmp_path, config, *expected)


def test_a_duplicate_model_name_is_refused_with_its_line(tiny_bert_dir, tiny_llama_dir, tmp_path):
    config = tiny_config(
        tmp_path, {"bert": (tiny_bert_dir, "encoder"), "other": (tiny_llama_dir, "decoder")}
    )
    # A YAML loader would keep only the second `bert` and run one model without a word.
    lines = config.read_text().replace("\n  other:\n", "\n  bert:\n").splitlines()
    config.write_text("\n".join(lines) + "\n")
    first, second = [i + 1 for i, line in enumerate(lines) if line == "  bert:"]
    _fails_before_any_job(
        tmp_path,
        config,
        f"config file {config}",
        f"line {second}: duplicate key 'bert' under models (first at line {first})",
    )


def test_a_hub_id_offline_fails_in_prepare_model_saying_how_to_fill_the_cache(tmp_path):
    ref = "finescope-test/no-such-model"
    tiny_config(
        tmp_path,
        {"hub": (ref, "encoder")},
        tasks={"ner": {"data": {"source": "synthetic", "train": 24, "dev": 9, "test": 15}}},
        fractions=[0, 100],
    )
    # Planning cannot know whether the hub id is cached; the job that materialises it does.
    result = _run(tmp_path, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Error in rule prepare_model" in output
    log = (tmp_path / "logs/prepare_model/hub.log").read_text()
    assert f"model {ref!r} could not be loaded" in log
    assert "HF_HUB_OFFLINE=1 is set" in log
    assert f"hf download {ref}" in log
    assert not (tmp_path / "resources/models/hub").exists()
    # Jobs that do not need the model may have run (the data table); nothing after it did.
    assert not (tmp_path / "results/finetune").exists()
    assert not (tmp_path / "results/cache").exists()
    assert {p.name for p in (tmp_path / "results/tables").glob("*")} <= {"data.csv"}
