"""Settings are defined once, in the schema: a stage function called with its defaults computes
what the workflow asks of it for an empty config block."""

from __future__ import annotations

import inspect

import pytest
import yaml
from snakemake.utils import validate

from finescope import analysis, compare, extract, finetune, probe, probe_pool, tracking
from finescope.settings import SCHEMA, defaults
from finescope.workflow import RUN_DEFAULTS, Grid
from tests.workflow_utils import ROOT

BLOCKS = ("finetune", "extract", "probe", "compare", "analysis", "probe_pool", "tracking")


@pytest.fixture(scope="module")
def empty_blocks() -> dict:
    """config.yaml with every settings block (top level and per model) left out, so the schema
    fills in its defaults as it does for a user who sets none."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for block in BLOCKS:
        config.pop(block, None)
    for model in config["models"].values():
        model.pop("finetune", None)
        model.pop("extract", None)
    validate(config, str(SCHEMA))
    return config


def test_the_schema_defaults_are_what_snakemake_fills_in(empty_blocks):
    for block in BLOCKS:
        assert empty_blocks[block] == defaults(block), block


def test_finetune_defaults_equal_what_the_workflow_passes(empty_blocks):
    grid = Grid.from_config(empty_blocks)
    for model in grid.models:
        passed = grid.finetune_settings(model, seed=0)
        # What the workflow adds from the model entry, not from the finetune block.
        model_keys = {k: passed[k] for k in ("trust_remote_code", "ner_subword")}
        assert finetune.resolve_settings(passed) == finetune.resolve_settings(model_keys), model


def test_extract_defaults_equal_what_the_workflow_passes(empty_blocks):
    grid = Grid.from_config(empty_blocks)
    for model in grid.models:
        for split in ("test", "probe"):
            passed = grid.extract_settings(model, split)
            # The item cap and its seed are applied before run_extract sees the items.
            passed.pop("max_items"), passed.pop("item_seed")
            model_keys = {k: passed[k] for k in ("trust_remote_code", "ner_pooling")}
            if split == "probe":
                # Attention maps are compared on the test split only.
                model_keys["attention_items"] = 0
            assert extract._settings(passed) == extract._settings(model_keys), (model, split)
    assert {k: extract.DEFAULTS[k] for k in RUN_DEFAULTS} == RUN_DEFAULTS
    assert finetune.DEFAULT_SETTINGS["device"] == RUN_DEFAULTS["device"]


def test_probe_compare_pool_and_tracking_defaults_equal_what_the_workflow_passes(empty_blocks):
    grid = Grid.from_config(empty_blocks)
    for task in grid.tasks:
        assert probe.resolve_settings(grid.probe_settings(task)) == probe.resolve_settings({})
    assert compare._settings(empty_blocks["compare"]) == compare._settings({})
    assert probe_pool.resolve(empty_blocks["probe_pool"]) == probe_pool.resolve({})
    assert tracking.resolve(empty_blocks["tracking"]) == tracking.resolve({})


def test_analysis_defaults_equal_what_the_workflow_passes(empty_blocks):
    passed = empty_blocks["analysis"]
    signature = inspect.signature(analysis.correlate).parameters
    for key in ("seed", "n_boot", "min_n", "depth_bins"):
        assert signature[key].default == passed[key], key
    for function in (analysis.collect_downstream, analysis.tidy_measures):
        assert inspect.signature(function).parameters["entity_f1"].default == passed["entity_f1"]


def test_no_stage_keeps_defaults_of_its_own_for_config_keys():
    """The stage modules hold no literal default of a config key: each one equals the schema's."""
    schema_keys = {
        "finetune": (finetune.DEFAULT_SETTINGS, set(defaults("finetune")) - {"keep_model"}),
        "probe": (probe.DEFAULT_SETTINGS, set(defaults("probe")) - {"random_baseline"}),
        "compare": (compare.DEFAULTS, set(defaults("compare"))),
        "extract": (extract.DEFAULTS, set(extract.DEFAULTS) & set(defaults("extract")) - {"seed"}),
    }
    for block, (code, keys) in schema_keys.items():
        assert keys, block
        for key in keys:
            assert code[key] == defaults(block)[key], f"{block}.{key}"
