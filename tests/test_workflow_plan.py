"""Planning the DAG: the study's grid, the embedded default, and the grid helper."""

from __future__ import annotations

import pytest
import yaml
from snakemake.utils import validate

from finescope.errors import FinescopeError
from finescope.workflow import Grid, check_unique_keys, schema_error
from tests.workflow_utils import ROOT, planned_jobs, snakemake


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
    assert jobs["extract"] == 2 * 4 * (2 + 4 * n_seeds)
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
    assert smol.learning_rate == 0.0001 and minilm.learning_rate == 0.0003
    assert smol.seed == 1 and smol.epochs == 2 and minilm.epochs == 4
    assert grid.extract_settings("minilm", "probe").attention_items == 0
    assert grid.extract_settings("minilm", "test").attention_items == 32
    # Only the random baseline's weights depend on the seed: no other extraction re-runs for it.
    assert "seed" not in grid.extract_settings("minilm", "test").to_params()
    random_init = {**grid.config, "probe": {**grid.config["probe"], "seed": 5}}
    assert Grid(random_init).extract_settings("minilm", "test", random_init=True).seed == 5
    assert "seed" not in Grid(random_init).extract_settings("minilm", "test").to_params()
    # NER: a decoder's head and probes read the last sub-word of a word, an encoder's the first.
    assert smol.ner_subword == "last" and minilm.ner_subword == "first"
    assert grid.extract_settings("smollm2", "probe", task="ner").ner_pooling == "last"
    assert grid.extract_settings("minilm", "probe", task="ner").ner_pooling == "first"
    # Each task's own setting only: a decoder's NLI caches do not depend on its NER pooling.
    assert "ner_pooling" not in grid.extract_settings("smollm2", "probe", task="nli").to_params()
    assert grid.extract_settings("minilm", "probe", task="nli").nli_view == "pair"
    assert grid.extract_settings("minilm", "probe").max_items is None  # the whole pool
    assert "svm" not in grid.probe_settings("ner").probes
    assert "bilstm_crf" not in grid.probe_settings("nli").probes


def test_repeated_keys_are_refused_with_their_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("models:\n  a: {ref: x}\n  b: {ref: y}\n  a: {ref: z}\n")
    with pytest.raises(FinescopeError, match=r"line 4: duplicate key 'a' under models \(first"):
        check_unique_keys([path])
    path.write_text("tasks:\n  ner:\n    data: {source: synthetic, source: files}\n")
    with pytest.raises(
        FinescopeError, match=r"line 3: duplicate key 'source' under tasks.ner.data"
    ):
        check_unique_keys([path])
    path.write_text("fractions: [0]\nfractions: [10]\n")
    with pytest.raises(FinescopeError, match="line 2: duplicate key 'fractions' at the top level"):
        check_unique_keys([path])
    check_unique_keys([ROOT / "config.yaml", ROOT / "config/paper.yaml", tmp_path / "absent"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"models": {"a": {"ref": "x", "famly": "decoder"}}},
            "config key models.a.famly in c.yaml: unknown key under models.a; did you mean "
            "'family'?",
        ),
        (
            {"finetune": {"learning_rate": "5e-5"}},
            "config key finetune.learning_rate in c.yaml: '5e-5' is not of type 'number' "
            "(YAML reads",
        ),
        ({"seeds": []}, "config key seeds in c.yaml: is empty; give at least one entry"),
    ],
)
def test_schema_errors_name_the_config_key(change, message):
    config = _config("config.yaml") | change
    with pytest.raises(Exception) as caught:
        validate(config, str(ROOT / "schemas" / "config.schema.yaml"))
    assert str(schema_error(caught.value, ["c.yaml"])).startswith(message)
    assert schema_error(ValueError("unrelated")) is None


def test_schema_errors_name_the_file_and_line_that_set_the_key(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("models:\n  a:\n    ref: x\n    finetune: {learning_rate: abc}\n")
    second.write_text("seeds: [1]\nmodels:\n  a:\n    finetune:\n      learning_rate: abc\n")
    config = _config("config.yaml") | {"models": {"a": {"ref": "x", "finetune": {}}}}
    config["models"]["a"]["finetune"]["learning_rate"] = "abc"
    with pytest.raises(Exception) as caught:
        validate(config, str(ROOT / "schemas" / "config.schema.yaml"))
    # The last file that gives the key is the one whose value Snakemake keeps.
    assert str(schema_error(caught.value, [first, second])).startswith(
        f"{second}:5: config key models.a.finetune.learning_rate: 'abc' is not of type"
    )
    assert str(schema_error(caught.value, [first])).startswith(
        f"{first}:4: config key models.a.finetune.learning_rate:"
    )
    # A value no file gives (from --config): every file is named.
    assert str(schema_error(caught.value, [tmp_path / "c.yaml"])).startswith(
        f"config key models.a.finetune.learning_rate in {tmp_path / 'c.yaml'}:"
    )


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        # Only the mapping form of mdl fits a mapping: the error inside it.
        ({"mdl": {"portions": [100]}}, "config key probe.mdl.portions: [100] is too short"),
        (
            {"svm": {"gamma": "abc"}},
            "config key probe.svm.gamma: 'abc' is none of the allowed forms: 'abc' is not one "
            "of ['scale', 'auto']; 'abc' is not of type 'number'",
        ),
        ({"svm": {"gamma": -1}}, "config key probe.svm.gamma: -1 is less than or equal to"),
        ({"linear": {"C": [0.1, "x"]}}, "config key probe.linear.C[1]: 'x' is not of type"),
    ],
)
def test_a_setting_with_alternative_forms_names_the_error_of_the_form_it_has(probe, message):
    config = _config("config.yaml") | {"probe": probe}
    with pytest.raises(Exception) as caught:
        validate(config, str(ROOT / "schemas" / "config.schema.yaml"))
    assert str(schema_error(caught.value)).startswith(message)


@pytest.mark.parametrize(
    "target",
    ["results/subsets/ner/f{}/s1.json", "results/finetune/ner/minilm/f{}/s1/metrics.json"],
)
def test_only_trained_fractions_have_a_subset_or_a_fine_tuning_job(tmp_path, target):
    """The random-weights baseline (fraction "random") is extracted and probed, never trained."""
    args = ("--configfile", str(ROOT / "config.yaml"))
    # The target goes first: --configfile takes every argument that follows it.
    assert planned_jobs(tmp_path, target.format(50), *args)
    refused = snakemake(tmp_path, "-n", target.format("random"), *args, check=False)
    assert refused.returncode != 0
    assert "MissingRuleException" in refused.stderr + refused.stdout
