"""The whole DAG through Snakemake on tiny random models: every table and figure, expected rows."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
from PIL import Image

from finescope.figures import FIGURES
from tests.workflow_utils import planned_jobs, snakemake, tiny_config

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert_dir, tiny_llama_dir):
    workdir = tmp_path_factory.mktemp("e2e")
    config = tiny_config(
        workdir, {"bert": (tiny_bert_dir, "encoder"), "llama": (tiny_llama_dir, "decoder")}
    )
    snakemake(workdir, "--cores", "2", "--configfile", str(config))
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
