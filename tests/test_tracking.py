"""Optional MLflow tracking: one run per fine-tuning job (params, step metrics, test metrics,
tags) and one for the analysis, written to a real local MLflow store and read back."""

from __future__ import annotations

import csv
import sys

import pandas as pd
import pytest

from finescope import tracking
from finescope.errors import FinescopeError
from finescope.finetune import finetune_job
from finescope.io import read_json
from finescope.settings.tracking import TrackingSettings
from finescope.subsample import write_subset
from tests.test_finetune import _train_ids, _write_toy

mlflow = pytest.importorskip("mlflow", reason="the optional extra 'tracking' is not installed")
from mlflow.tracking import MlflowClient  # noqa: E402

SETTINGS = {"threads": 1, "epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "seed": 1}


@pytest.fixture
def store(tmp_path):
    # mlflow-skinny has no SQL store; the file store is MLflow's own local backend.
    uri = (tmp_path / "mlruns").as_uri()
    yield {"backend": "mlflow", "uri": uri, "experiment": "finescope-test"}
    mlflow.set_tracking_uri(None)


def _finetune_job(tmp_path, tiny_bert_dir, settings, tracking_block):
    data = _write_toy("nli", tmp_path / "data" / "nli")
    ids = _train_ids(data)
    subset = tmp_path / "subsets" / "s1.json"
    write_subset(subset, ids, "nli", 100, 1)
    job = tmp_path / "results" / "finetune" / "nli" / "bert" / "f100" / "s1"
    finetune_job(
        "nli",
        {"task": "nli", "model": "bert", "fraction": "100", "seed": 1},
        str(tiny_bert_dir),
        str(data / "labels.json"),
        str(subset),
        str(job / "model"),
        str(tmp_path / "ckpt"),
        settings,
        tracking=tracking_block,
    )
    return job


def test_a_finetune_job_logs_one_mlflow_run(tmp_path, tiny_bert_dir, store):
    job = _finetune_job(tmp_path, tiny_bert_dir, SETTINGS, store)
    metrics = read_json(job / "metrics.json")
    with (job / "curve.csv").open() as fh:
        curve = list(csv.DictReader(fh))

    client = MlflowClient(tracking_uri=store["uri"])
    experiment = client.get_experiment_by_name("finescope-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "nli/bert/f100/s1"
    tags = run.data.tags
    assert (tags["task"], tags["model"], tags["fraction"], tags["seed"]) == (
        "nli",
        "bert",
        "100",
        "1",
    )
    assert tags["stage"] == "finetune"
    params = run.data.params
    assert params["learning_rate"] == str(SETTINGS["learning_rate"])
    assert params["epochs"] == "2" and params["lora.enabled"] == "False"
    assert float(run.data.metrics["test_score"]) == pytest.approx(metrics["score"])
    assert float(run.data.metrics["test_accuracy"]) == pytest.approx(metrics["accuracy"])
    # The learning curve, step by step.
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in loss] == [int(row["step"]) for row in curve]
    assert [m.value for m in loss] == pytest.approx([float(row["loss"]) for row in curve])
    dev = client.get_metric_history(run.info.run_id, "dev_score")
    assert len(dev) == sum(row["dev_score"] != "" for row in curve) == 2


def test_the_analysis_logs_one_run_with_headline_measures(tmp_path, store):
    downstream = pd.DataFrame(
        {
            "task": ["nli", "nli", "nli"],
            "model": ["bert"] * 3,
            "fraction": [50, 100, 100],
            "seed": [1, 1, 2],
            "measure": ["score"] * 3,
            "value": [0.4, 0.6, 0.8],
        }
    )
    correlations = pd.DataFrame(
        {"underpowered": [True, False, False], "q_value": [None, 0.01, 0.3]}
    )
    figure = tmp_path / "downstream.png"
    figure.write_bytes(b"\x89PNG\r\n")
    run_id = tracking.log_analysis_run(store, downstream, correlations, {"seeds": [1, 2]}, [figure])
    client = MlflowClient(tracking_uri=store["uri"])
    run = client.get_run(run_id)
    assert run.data.tags["stage"] == "analysis"
    assert run.data.metrics["score.nli.bert.f100"] == pytest.approx(0.7)
    assert run.data.metrics["tests_powered"] == 2
    assert run.data.metrics["tests_q_below_0.05"] == 1
    assert run.data.params["grid.seeds"] == "[1, 2]"
    assert [a.path for a in client.list_artifacts(run_id, "figures")] == ["figures/downstream.png"]


def test_backend_none_logs_nothing_and_mlflow_missing_is_a_clear_error(tmp_path, monkeypatch):
    assert tracking.log_finetune_run({"backend": "none"}, {}, {}, {}, tmp_path / "x") is None
    assert not tracking.enabled(None)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now fails
    with pytest.raises(FinescopeError, match=r"pip install '\.\[tracking\]'"):
        tracking.log_analysis_run({"backend": "mlflow"}, None, None)
    with pytest.raises(FinescopeError, match="tracking.backend"):
        TrackingSettings.build({"backend": "wandb"})


@pytest.mark.workflow
def test_a_workflow_run_logs_one_mlflow_run_per_finetuning_job(
    tmp_path, tiny_bert_dir, monkeypatch
):
    """Through Snakemake, two fine-tuning jobs at once: one run each in the store, with tags
    and test metrics equal to the jobs' metrics.json."""
    from tests.workflow_utils import snakemake, tiny_config

    # The jobs opt in to the local file store themselves; this process reads it back and must
    # opt in too (MLflow 3 refuses it otherwise), whichever tests ran before.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")

    uri = (tmp_path / "mlruns").as_uri()
    config = tiny_config(
        tmp_path,
        {"bert": (tiny_bert_dir, "encoder")},
        tracking={"backend": "mlflow", "uri": uri, "experiment": "wf"},
    )
    jobs = [f"results/finetune/ner/bert/f{f}/s1/metrics.json" for f in (50, 100)]
    snakemake(tmp_path, *jobs, "--cores", "2", "--configfile", str(config))

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("wf").experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    assert sorted(by_name) == ["ner/bert/f100/s1", "ner/bert/f50/s1"]
    for fraction in (50, 100):
        run = by_name[f"ner/bert/f{fraction}/s1"]
        metrics = read_json(tmp_path / f"results/finetune/ner/bert/f{fraction}/s1/metrics.json")
        assert run.info.status == "FINISHED" and run.data.tags["fraction"] == str(fraction)
        assert run.data.metrics["test_score"] == pytest.approx(metrics["score"])
