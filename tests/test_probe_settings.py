"""The probe stage's typed settings: schema defaults, the checks of each block, unknown keys,
and a round trip through the job's params."""

from __future__ import annotations

import dataclasses

import pytest

from finescope.errors import FinescopeError
from finescope.probe import (
    BilstmCrfSettings,
    LinearSettings,
    MdlSettings,
    ProbeSettings,
    make_probe,
)
from finescope.settings import defaults
from finescope.settings.probe import MDL_C_GRID, MDL_PORTIONS


def test_defaults_are_the_schemas():
    s = ProbeSettings()
    assert s == ProbeSettings.build({}) == ProbeSettings.build(None)
    schema = defaults("probe")
    schema.pop("random_baseline")  # the workflow's, not a probe setting
    assert ProbeSettings.build(schema) == s
    got = s.to_dict()
    assert got["probes"] == schema["probes"] == ["linear"]
    for block in ("linear", "mlp", "svm", "bilstm_crf"):
        assert got[block] == schema[block], block
    for key in ("selectivity", "nli_control", "nli_features", "nli_interactions", "seed"):
        assert got[key] == schema[key], key
    assert schema["mdl"] is True
    assert got["mdl"] == {
        "enabled": True,
        "probe": "linear",
        "portions": list(MDL_PORTIONS),
        "C_grid": list(MDL_C_GRID),
    }
    assert (got["max_train_items"], got["max_test_items"], got["n_jobs"]) == (None, None, 1)
    assert "random_baseline" not in got


def test_mdl_takes_a_bool_or_a_mapping():
    assert ProbeSettings.build({"mdl": False}).mdl == MdlSettings(enabled=False)
    assert ProbeSettings.build({"mdl": True}).mdl == MdlSettings()
    s = ProbeSettings.build({"mdl": {"portions": [50, 100], "probe": "mlp"}})
    assert s.mdl.portions == (50, 100) and s.mdl.probe == "mlp" and s.mdl.enabled
    assert s.to_dict()["mdl"]["portions"] == [50, 100]
    assert ProbeSettings().replace(mdl=False).mdl.enabled is False
    with pytest.raises(FinescopeError, match=r"expected true/false or \{enabled"):
        ProbeSettings.build({"mdl": "yes"})


def test_lists_become_tuples_and_a_C_list_is_sorted_without_duplicates():
    s = ProbeSettings.build(
        {"probes": ["mlp", "linear", "mlp"], "linear": {"C": [1, 0.1, 1.0]}, "svm": {"C": 2}}
    )
    assert s.probes == ("mlp", "linear")
    assert s.linear.C == (0.1, 1.0)
    assert s.svm.C == 2
    assert LinearSettings(C=[3, 1]).C == (1.0, 3.0)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"probes": []}, "config key probe.probes: expected a non-empty list of probe names"),
        ({"probes": "linear"}, "config key probe.probes: expected a non-empty list"),
        ({"probes": ["lstm"]}, "config key probe.probes: unknown probe 'lstm'"),
        ({"max_train_items": 0}, "config key probe.max_train_items: expected a positive"),
        ({"n_jobs": 0}, "config key probe.n_jobs: expected a non-zero integer (-1 = all)"),
        ({"linear": {"C": []}}, "config key probe.linear.C: expected a non-empty list of"),
        ({"svm": {"C": -1}}, "config key probe.svm.C: expected a number > 0 or a list of them"),
        ({"linear": {"backend": "jax"}}, "config key probe.linear.backend: 'jax'; use one of"),
        ({"bilstm_crf": {"lr": 0}}, "config key probe.bilstm_crf.lr: must be > 0"),
        ({"nli_features": "both"}, "config key probe.nli_features: 'both'; use one of"),
        ({"nli_control": "item"}, "config key probe.nli_control: 'item'; use one of"),
        ({"selectivity": "yes"}, "config key probe.selectivity: expected true or false"),
        ({"mdl": {"probe": "svm"}}, "config key probe.mdl.probe: 'svm' gives no probabilities"),
        ({"mdl": {"C_grid": []}}, "config key probe.mdl.C_grid: expected a list of positive"),
        ({"mdl": {"portions": [50, 90]}}, "config key probe.mdl.portions: [50.0, 90.0] must"),
    ],
)
def test_bad_values_keep_their_messages(given, message):
    with pytest.raises(FinescopeError) as err:
        ProbeSettings.build(given)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ({"max_train_item": 5}, "probe.max_train_item"),
        ({"random_baseline": True}, "probe.random_baseline"),
        ({"linear": {"CC": 1}}, "probe.linear.CC"),
        ({"mdl": {"portion": [100]}}, "probe.mdl.portion"),
    ],
)
def test_unknown_keys_are_named(given, key):
    with pytest.raises(FinescopeError, match=rf"config key {key}: unknown setting"):
        ProbeSettings.build(given)


def test_settings_are_frozen_and_replace_checks_again():
    s = ProbeSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.linear.C = 2.0
    with pytest.raises(FinescopeError, match="probe.n_jobs"):
        s.replace(n_jobs=0)
    assert s.replace(probes=["svm"]).probes == ("svm",)
    with pytest.raises(FinescopeError, match="probe.bilstm_crf.lr"):
        BilstmCrfSettings(lr=-1.0)


def test_params_round_trip_and_quiet_job_keys():
    s = ProbeSettings.build(
        {
            "probes": ["linear", "svm", "bilstm_crf"],
            "linear": {"C": [0.1, 10], "backend": "sklearn"},
            "svm": {"gamma": 0.5},
            "mdl": {"probe": "mlp", "C_grid": [0.5], "portions": [10, 100]},
            "nli_interactions": True,
            "seed": 3,
            "max_test_items": 7,
            "n_jobs": 4,
        }
    )
    params = s.to_params()
    assert params["linear"]["C"] == [0.1, 10.0] and params["mdl"]["portions"] == [10, 100]
    assert ProbeSettings.build(params) == s
    # Keys only a job sets stay out of the params at their defaults.
    assert not {"max_train_items", "max_test_items", "n_jobs"} & set(ProbeSettings().to_params())
    assert ProbeSettings.build(ProbeSettings().to_params()) == ProbeSettings()


def test_entry_points_take_an_object_or_a_mapping():
    s = ProbeSettings.build({"linear": {"C": 0.5, "max_iter": 7}, "seed": 2})
    assert ProbeSettings.build(s) is s
    by_object, by_mapping = make_probe("linear", s), make_probe("linear", s.to_dict())
    assert by_object.get_params() == by_mapping.get_params()
    assert (by_object.C, by_object.max_iter, by_object.random_state) == (0.5, 7, 2)
