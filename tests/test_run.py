"""finescope.load_run on folders that are not finished runs, and the resolved config file.
(A real run is loaded in tests/test_end_to_end.py.)"""

from __future__ import annotations

import pytest
import yaml

import finescope
from finescope.errors import FinescopeError
from finescope.run import write_resolved_config


def test_a_folder_without_results_is_not_a_run(tmp_path):
    with pytest.raises(FinescopeError, match="is not a finescope run: it has no results/"):
        finescope.load_run(tmp_path)


def test_an_unfinished_run_names_the_missing_table(tmp_path):
    (tmp_path / "results" / "tables").mkdir(parents=True)
    with pytest.raises(FinescopeError, match=r"results/tables/measures\.parquet is missing"):
        finescope.load_run(tmp_path / "results")


def test_the_resolved_config_round_trips(tmp_path):
    config = {"fractions": [0, 50], "models": {"m": {"ref": "x", "finetune": {}}}, "seed": None}
    write_resolved_config(config, tmp_path / "config.resolved.yaml")
    text = (tmp_path / "config.resolved.yaml").read_text()
    assert text.startswith("# The config this run used")
    assert yaml.safe_load(text) == config
