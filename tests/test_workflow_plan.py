"""Planning the DAG: the study's grid, the embedded default, and the grid helper."""

from __future__ import annotations

import yaml
from snakemake.utils import validate

from finescope.workflow import Grid
from tests.workflow_utils import ROOT, planned_jobs


def _config(path):
    config = yaml.safe_load((ROOT / path).read_text())
    validate(config, str(ROOT / "schemas" / "config.schema.yaml"))
    return config


def test_paper_grid_schedules_one_finetune_job_per_trained_point(tmp_path):
    config = _config("config/paper.yaml")
    jobs = planned_jobs(tmp_path, "--configfile", str(ROOT / "config/paper.yaml"))
    n_seeds = len(config["seeds"])
    # 2 tasks x 4 models x 4 non-zero fractions x seeds; fraction 0 schedules no training.
    assert jobs["finetune"] == 2 * 4 * 4 * n_seeds
    assert jobs["prepare_model"] == 4
    assert jobs["prepare_data"] == 2
    assert jobs["subsample"] == 2 * 4 * n_seeds
    # Per task x model: pre-trained + random baseline + trained points, two splits each.
    assert jobs["extract"] == 2 * 4 * (2 + 4 * n_seeds) * 2
    assert jobs["probe"] == 2 * 4 * (2 + 4 * n_seeds)
    assert jobs["compare"] == 2 * 4 * 4 * n_seeds
    for rule in ("data_table", "tables", "correlations", "figures", "summary", "all"):
        assert jobs[rule] == 1


def test_default_config_plans_offline(tmp_path):
    jobs = planned_jobs(tmp_path, "--configfile", str(ROOT / "config.yaml"))
    # 2 tasks x 2 models x 2 non-zero fractions x 1 seed.
    assert jobs["finetune"] == 8
    assert jobs["prepare_model"] == 2


def test_grid_settings_merge_model_overrides():
    grid = Grid.from_config(_config("config.yaml"))
    assert grid.internal_points() == [("0", 0), ("random", 0), ("50", 1), ("100", 1)]
    smol = grid.finetune_settings("smollm2", seed=1)
    minilm = grid.finetune_settings("minilm", seed=1)
    assert smol["learning_rate"] == 0.0001 and minilm["learning_rate"] == 0.0003
    assert smol["seed"] == 1 and smol["epochs"] == 2 and minilm["epochs"] == 4
    assert grid.extract_settings("minilm", "train")["attention_items"] == 0
    assert grid.extract_settings("minilm", "test")["attention_items"] == 32
    assert "svm" not in grid.probe_settings("ner")["probes"]
    assert "bilstm_crf" not in grid.probe_settings("nli")["probes"]
