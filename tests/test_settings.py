"""Settings are defined once: the schema holds every config key's default, each stage takes a
frozen, typed settings object, and a stage's default object is what the workflow passes for an
empty config block."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from finescope import analysis
from finescope.errors import FinescopeError
from finescope.settings import SCHEMA, Settings, defaults
from finescope.settings.analysis import AnalysisSettings
from finescope.settings.compare import CompareSettings
from finescope.settings.extract import ExtractSettings
from finescope.settings.finetune import FinetuneSettings
from finescope.settings.probe import ProbeSettings
from finescope.settings.probe_pool import ProbePoolSettings
from finescope.settings.tracking import TrackingSettings
from finescope.workflow import Grid
from tests.workflow_utils import ROOT

BLOCKS = ("finetune", "extract", "probe", "compare", "analysis", "probe_pool", "tracking")
# Each config block and the settings class that holds it.
CLASSES = {
    "finetune": FinetuneSettings,
    "extract": ExtractSettings,
    "probe": ProbeSettings,
    "compare": CompareSettings,
    "analysis": AnalysisSettings,
    "probe_pool": ProbePoolSettings,
    "tracking": TrackingSettings,
}


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
        assert isinstance(passed, FinetuneSettings)
        # What the workflow adds from the model entry, not from the finetune block.
        model_keys = {k: getattr(passed, k) for k in ("trust_remote_code", "ner_subword")}
        assert passed == FinetuneSettings(**model_keys), model


def test_extract_defaults_equal_what_the_workflow_passes(empty_blocks):
    grid = Grid.from_config(empty_blocks)
    for model in grid.models:
        for split in ("test", "probe"):
            passed = grid.extract_settings(model, split)
            assert isinstance(passed, ExtractSettings)
            model_keys = {k: getattr(passed, k) for k in ("trust_remote_code", "ner_pooling")}
            if split == "probe":
                # Attention maps are compared on the test split only; the pool is not capped.
                model_keys |= {"attention_items": 0, "max_items": None}
            else:
                model_keys["max_items"] = defaults("extract")["max_test_items"]
            assert passed == ExtractSettings(**model_keys), (model, split)


def test_probe_compare_analysis_pool_and_tracking_defaults_equal_what_the_workflow_passes(
    empty_blocks,
):
    grid = Grid.from_config(empty_blocks)
    for task in grid.tasks:
        assert grid.probe_settings(task) == ProbeSettings(), task
    assert grid.compare_settings() == CompareSettings()
    assert grid.probe_pool_settings() == ProbePoolSettings()
    assert grid.analysis_settings() == AnalysisSettings()
    assert TrackingSettings.build(empty_blocks["tracking"]) == TrackingSettings()


def test_analysis_functions_default_to_the_analysis_settings():
    signature = inspect.signature(analysis.correlate).parameters
    for key in ("seed", "n_boot", "min_n", "depth_bins"):
        assert signature[key].default == getattr(AnalysisSettings(), key), key
    for function in (analysis.collect_downstream, analysis.tidy_measures):
        entity_f1 = inspect.signature(function).parameters["entity_f1"].default
        assert entity_f1 == AnalysisSettings().entity_f1


def _config_fields(cls: type[Settings], block: dict, key: str):
    """(dotted key, field value, schema default) of every field that is a config key."""
    value = cls()
    for f in dataclasses.fields(cls):
        if f.name not in block:
            continue
        nested = getattr(value, f.name)
        if isinstance(nested, Settings) and isinstance(block[f.name], dict):
            yield from _config_fields(type(nested), block[f.name], f"{key}.{f.name}")
        else:
            yield f"{key}.{f.name}", nested, block[f.name]


def test_every_config_key_of_a_settings_class_defaults_to_the_schema():
    for block, cls in CLASSES.items():
        found = list(_config_fields(cls, defaults(block), block))
        assert found, block
        for key, value, default in found:
            if isinstance(default, list):
                default = tuple(default)
            if key == "probe.mdl":  # the schema's true is the default online code
                assert value.enabled is default, key
                continue
            assert value == default, key


def test_the_workflow_drops_no_config_key_of_a_stage():
    """Every key of a config block is a field of its class, but for the few the workflow
    keeps to itself (what it keeps on disk, which caches exist, how many test items)."""
    kept_apart = {
        "finetune": {"keep_model"},
        "extract": {"keep", "max_test_items", "seed"},
        "probe": {"random_baseline"},
    }
    for block, cls in CLASSES.items():
        names = {f.name for f in dataclasses.fields(cls)}
        missing = set(defaults(block)) - names - kept_apart.get(block, set())
        assert not missing, (block, missing)


def test_settings_are_frozen_and_round_trip_through_the_job_params(empty_blocks):
    grid = Grid.from_config(empty_blocks)
    objects = [
        grid.finetune_settings("minilm", seed=3).replace(learning_rate=1e-4, device="cpu"),
        grid.extract_settings("smollm2", "test", random_init=True, task="ner"),
        grid.probe_settings("nli").replace(probes=("linear", "mlp"), mdl=False),
        grid.compare_settings(),
        grid.probe_pool_settings(),
        grid.analysis_settings(),
    ]
    for value in objects:
        with pytest.raises(dataclasses.FrozenInstanceError):
            value.seed = 1 if hasattr(value, "seed") else value.source
        params = value.to_params()
        # Plain builtin values: Snakemake only tracks those.
        assert yaml.safe_load(yaml.safe_dump(params)) == params
        assert type(value).build(params) == value, type(value).__name__


def test_quiet_settings_stay_out_of_the_params_at_their_default(empty_blocks):
    """Hardware choices at their default do not enter a job's params, so finished jobs of a
    config that does not set them stay valid; set, they do."""
    grid = Grid.from_config(empty_blocks)
    params = grid.finetune_settings("minilm", 1).to_params()
    assert "device" not in params and "threads" not in params
    assert grid.finetune_settings("minilm", 1).replace(device="cpu").to_params()["device"] == "cpu"
    extract = grid.extract_settings("minilm", "test", task="ner").to_params()
    assert not {"device", "padding_side", "bf16_autocast", "nli_view"} & set(extract)


def test_an_unknown_setting_is_refused_naming_the_config_key():
    with pytest.raises(FinescopeError, match=r"config key compare\.cka_max: .*cka_max_items"):
        CompareSettings.build({"cka_max": 10})
    with pytest.raises(FinescopeError, match=r"config key analysis\.min_n: 2 must be"):
        AnalysisSettings.build({"min_n": 2})


def test_no_module_keeps_a_second_defaults_dict():
    """Defaults live in the schema and the settings classes: no module builds a dict of its own
    defaults (the name a second home would take). The data block is the exception: its keys
    depend on the source (synthetic, files, hf), which finescope.data checks; the schema only
    knows ``source``."""
    pattern = re.compile(r"^\s*_?[A-Z_]*DEFAULT(S|_SETTINGS)\s*(:[^=]*)?=", re.MULTILINE)
    for path in sorted(Path(ROOT / "finescope").rglob("*.py")):
        if path.parent.name == "data":
            continue
        text = path.read_text(encoding="utf-8")
        assert not pattern.findall(text), path
        # Only the settings classes read the schema's defaults.
        if path.parent.name != "settings":
            assert "defaults(" not in text, path
