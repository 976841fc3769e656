"""The whole DAG through Snakemake on tiny random models: every table and figure, expected rows."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import finescope
from finescope.figures import FIGURES
from tests.workflow_utils import planned_jobs, snakemake, tiny_config

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert_dir, tiny_llama_dir):
    workdir = tmp_path_factory.mktemp("e2e")
    config = tiny_config(
        workdir, {"bert": (tiny_bert_dir, "encoder"), "llama": (tiny_llama_dir, "decoder")}
    )
    result = snakemake(workdir, "--cores", "2", "--configfile", str(config))
    (workdir / "console.txt").write_text(result.stderr)
    return workdir, config


def test_every_table_has_the_expected_rows(tiny_run):
    workdir, _ = tiny_run
    tables = workdir / "results" / "tables"
    downstream = pd.read_csv(tables / "downstream.csv")
    # 2 tasks x 2 models x fractions {50, 100} x 1 seed; fraction 0 has no training job.
    assert len(downstream) == 8
    assert set(downstream["fraction"].astype(str)) == {"50", "100"}
    assert downstream["score"].between(0, 1).all()

    probing = pd.read_csv(tables / "probing.csv")
    layers = probing.groupby("model")["layer"].nunique().to_dict()
    assert layers == {"bert": 3, "llama": 3}  # embeddings + 2 blocks
    assert set(probing["fraction"].astype(str)) == {"0", "random", "50", "100"}
    for measure in ("accuracy", "macro_f1", "selectivity", "compression"):
        assert measure in set(probing["measure"]), measure

    change = pd.read_csv(tables / "change.csv")
    assert set(change["fraction"].astype(str)) == {"50", "100"}
    assert {"attention_cosine", "attention_js", "cka"} <= set(change["measure"])
    attention = pd.read_csv(tables / "attention.csv")
    assert len(attention) and attention["measure"].str.startswith("attention").all()

    correlations = pd.read_csv(tables / "correlations.csv")
    assert {"coefficient", "p_value", "q_value", "ci_low", "ci_high", "n"} <= set(correlations)
    assert set(correlations["task"]) == {"nli", "ner"}

    data = pd.read_csv(tables / "data.csv")
    assert set(data["task"]) == {"nli", "ner"}
    assert (workdir / "results" / "tables" / "measures.parquet").stat().st_size > 0


def test_every_figure_is_a_valid_image(tiny_run):
    workdir, _ = tiny_run
    for name in FIGURES:
        png = workdir / "results" / "figures" / f"{name}.png"
        with Image.open(png) as image:
            assert image.size[0] > 100 and image.size[1] > 100
        ET.parse(workdir / "results" / "figures" / f"{name}.svg")


def test_summary_and_metrics(tiny_run):
    workdir, _ = tiny_run
    summary = (workdir / "results" / "summary.md").read_text()
    assert "bert" in summary and "llama" in summary
    metrics = json.loads((workdir / "results/finetune/ner/bert/f100/s1/metrics.json").read_text())
    assert metrics["primary"] == "f1" and 0 <= metrics["score"] <= 1


def test_a_finished_run_plans_nothing_and_the_report_builds(tiny_run):
    workdir, config = tiny_run
    assert planned_jobs(workdir, "--configfile", str(config)) == {}
    snakemake(workdir, "--configfile", str(config), "--report", "results/report.html")
    assert (workdir / "results" / "report.html").stat().st_size > 10_000


def test_long_jobs_print_one_line_at_start_and_end(tiny_run):
    workdir, _ = tiny_run
    console = (workdir / "console.txt").read_text().splitlines()
    ours = [line for line in console if line.startswith("finescope: ")]
    # The run ends with its warning count (the tiny config's max_length cuts text).
    counts = [line for line in ours if re.fullmatch(r"finescope: \d+ warnings \(see .*\)", line)]
    assert len(counts) == 1 and ours[-1] == counts[0], ours[-3:]
    ours = ours[:-1]
    job = "finetune nli/bert/f100/s1"
    log = "logs/finetune/nli/bert/f100/s1.log"
    assert ours.count(f"finescope: {job} started (tail -f {log})") == 1
    done = [line for line in ours if line.startswith(f"finescope: {job} done in ")]
    assert len(done) == 1 and re.search(r": test macro_f1 \d\.\d{3}", done[0])
    # Every long job's log, and two console lines for each: one as it starts, one as it ends.
    logs = [
        p.relative_to(workdir)
        for stage in ("finetune", "extract", "probe", "compare")
        for p in (workdir / "logs" / stage).rglob("*.log")
    ]
    assert len(logs) == 8 + 16 + 16 + 8
    assert len(ours) == 2 * len(logs), ours
    for path in logs:
        assert sum(line.endswith(f"(tail -f {path})") for line in ours) == 1, path
    probes = [line for line in ours if line.startswith("finescope: probe") and "done" in line]
    assert all(re.search(r"linear macro_f1 \d\.\d{3} at layer \d", line) for line in probes)
    assert "fine-tune nli: " in (workdir / log).read_text()


def test_load_run_reads_the_finished_run(tiny_run):
    workdir, _ = tiny_run
    run = finescope.load_run(workdir)
    assert set(run.measures["source"]) == {"downstream", "probing", "change"}
    assert len(run.downstream) == 8 and set(run.correlations["task"]) == {"nli", "ner"}
    assert set(run.data["task"]) == {"nli", "ner"}
    assert run.config["fractions"] == [0, 50, 100] and run.config["tracking"]["backend"] == "none"
    assert run.config["finetune"]["weight_decay"] is not None  # defaults filled in
    assert set(run.models) == {"bert", "llama"} and run.models["bert"]["n_layers"] == 3
    for task in ("nli", "ner"):
        files = run.data_files[task]["files"]
        assert set(files) == {"train", "dev", "test", "probe"}
        train = workdir / "results" / "data" / task / "train.jsonl"
        assert files["train"]["sha256"] == hashlib.sha256(train.read_bytes()).hexdigest()
        assert "probe_pool" in run.data_files[task]["provenance"]
    assert set(FIGURES) <= set(run.figures)
    curves = run.curves()
    assert set(curves["fraction"]) == {"50", "100"} and curves["loss"].notna().all()
    predictions = run.predictions()
    nli = predictions[(predictions["task"] == "nli") & (predictions["fraction"] == "100")]
    assert len(nli) == 2 * 15  # two models, 15 test pairs
    assert finescope.load_run(workdir / "results").root == workdir


def test_the_readme_notebook_example_runs_as_written(tiny_run, monkeypatch):
    workdir, _ = tiny_run
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Notebooks", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(workdir)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    text = out.getvalue()
    assert "nli" in text and "ner" in text and "[0, 50, 100]" in text
