"""The benchmark code on tiny models: the numbers it compares are equal where they must be, its
counts are right, and the report renders. (Speed itself is measured by `make bench` only.)"""

from __future__ import annotations

import pytest

from benchmarks.attention import bench_attention
from benchmarks.common import QUICK
from benchmarks.end_to_end import last_run_wall_seconds, stage_totals
from benchmarks.extraction import bench_extraction
from benchmarks.finetuning import bench_finetune
from benchmarks.probing import bench_probing
from benchmarks.report import render_end_to_end, replace_section
from benchmarks.run import last_run
from finescope.synthetic import generate_splits

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def corpus():
    return generate_splits("ner", {"train": 24, "dev": 0, "test": 12}, seed=3)


def test_extraction_runs_each_item_through_the_model_once(tiny_bert_dir, corpus, tmp_path):
    result = bench_extraction("bert", tiny_bert_dir, corpus["test"], QUICK, tmp_path)
    assert result["forward_rows_per_item"] == 1.0
    assert result["layers"] == 3 and result["items"] == 12
    assert result["tokens"] > result["items"]
    for key in ("ours_tokens_per_s", "bare_tokens_per_s", "study_tokens_per_s"):
        assert result[key] > 0
    assert result["probe_job_probes"] == QUICK.probe_job_probes


@pytest.mark.parametrize("model", ["bert", "llama"])
def test_attention_change_equals_the_studys_loop(model, request, corpus, tmp_path):
    model_dir = request.getfixturevalue(f"tiny_{model}_dir")
    # Tiny random models attend almost uniformly: only strong noise changes their maps.
    result = bench_attention(model, model_dir, corpus["test"][:4], tmp_path, scales=(20.0, 50.0))
    # Batched and padded (ours) against one sentence at a time (the study): same cosines.
    assert result["max_cosine_difference"] < 1e-5
    assert result["max_measure_difference"] < 1e-5
    # The noisy copies' maps really differ from the model's, so equality above is not trivial.
    assert result["mean_cosine"] < 0.9


def test_probing_and_finetune_report_scores_and_rates(tiny_bert_dir, corpus, tmp_path):
    probing = bench_probing("bert", tiny_bert_dir, corpus["train"], corpus["test"], tmp_path)
    assert probing["layers"] == 3
    assert 0 <= probing["ours_best_macro_f1"] <= 1
    assert 0 <= probing["baseline_best_macro_f1"] <= 1
    tuned = bench_finetune("bert", tiny_bert_dir, corpus["train"], QUICK)
    assert tuned["items"] == 24 and tuned["study_items"] == QUICK.study_finetune_items
    # Every study example is padded to the longest sentence of the subset.
    longest = max(len(item["tokens"]) for item in corpus["train"][: tuned["study_items"]])
    assert tuned["study_padded_length"] >= longest + 2
    assert tuned["ours_examples_per_s"] > 0 and tuned["bare_examples_per_s"] > 0


def test_stage_totals_sum_rule_benchmark_files(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for stage, name, seconds, rss in [
        ("finetune", "a.tsv", 10.5, 900),
        ("finetune", "b.tsv", 4.5, 1200),
        ("probe", "c.tsv", 2.0, 300),
    ]:
        path = tmp_path / stage / "x" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:00:10\t{rss}\t1\t1\t1\t1\t1\t1\t1\n")
    totals = stage_totals(tmp_path)
    assert totals.loc["finetune"].to_dict() == {"jobs": 2, "seconds": 15.0, "peak_rss_mb": 1200.0}
    assert totals.loc["probe", "seconds"] == 2.0
    assert stage_totals(tmp_path / "none") is None


def test_last_run_wall_time_comes_from_the_newest_complete_log(tmp_path):
    def log(name: str, first: str, last: str, done: bool) -> None:
        tail = "78 of 78 steps (100%) done\n" if done else "3 of 78 steps (4%) done\n"
        text = f"Building DAG\n[{first}]\nlocalrule a:\n[{last}]\n{tail}"
        (tmp_path / f"{name}.snakemake.log").write_text(text)

    log("2026-11-26T0300", "Thu Nov 26 03:00:00 2026", "Thu Nov 26 03:17:13 2026", True)
    log("2026-11-26T0400", "Thu Nov 26 04:00:00 2026", "Thu Nov 26 04:00:09 2026", False)
    assert last_run_wall_seconds(tmp_path) == 17 * 60 + 13
    assert last_run_wall_seconds(tmp_path / "none") is None


def test_end_to_end_section_is_replaced_alone(tmp_path):
    """`python -m benchmarks --only end_to_end` rewrites that section from the last run and
    leaves the sections around it as they were."""
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    bench = tmp_path / "benchmarks" / "probe" / "ner"
    bench.mkdir(parents=True)
    (bench / "a.tsv").write_text(header + "61.5\t0:01:01\t500\t1\t1\t1\t1\t1\t1\t1\n")
    logs = tmp_path / ".snakemake" / "log"
    logs.mkdir(parents=True)
    (logs / "2026-12-04T0059.snakemake.log").write_text(
        "[Fri Dec  4 00:59:14 2026]\nrule a:\n[Fri Dec  4 01:13:14 2026]\n"
        "9 of 9 steps (100%) done\n"
    )
    run = last_run(tmp_path)
    assert run["wall_s"] == 14 * 60 and run["stages"]["probe"]["seconds"] == 61.5
    section = "\n".join(render_end_to_end(run))
    assert "| probe | 1 | 61.5 | 500 |" in section and "14.0 min" in section
    assert "(target ≤ 15 min on 2 cores: met)" in section
    old = "\n".join(
        [
            "# Benchmarks",
            "## Before",
            "kept A",
            "## End to end (the embedded default, `make run`)",
            "stale 39.2 min",
            "## After",
            "kept B",
            "",
            "Benchmark wall time: 10 s.",
        ]
    )
    new = replace_section(old, section)
    assert "stale" not in new and "| probe | 1 | 61.5 | 500 |" in new
    assert new.index("kept A") < new.index("14.0 min") < new.index("kept B")
    assert new.rstrip().endswith("Benchmark wall time: 10 s.")
    assert render_end_to_end(None)[-1].startswith("No `benchmarks/` files")
