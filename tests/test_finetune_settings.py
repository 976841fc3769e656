"""FinetuneSettings: schema defaults, checks with the config key in the message, frozen, the
job's params and what checkpoint fingerprints and tracking get."""

from __future__ import annotations

import dataclasses
import json

import pytest

from finescope.errors import FinescopeError
from finescope.finetune import FinetuneSettings, LoraSettings
from finescope.settings import defaults
from finescope.settings.finetune import _fingerprint_settings

# The keys the settings dict had before it was a class (fingerprints and tracking keep them).
KEYS = {
    *(set(defaults("finetune")) - {"keep_model"}),
    "seed",
    "trust_remote_code",
    "eval_batch_size",
    "mega_batch",
    "threads",
    "ner_subword",
}


def test_the_defaults_are_the_schema_defaults():
    s = FinetuneSettings()
    assert s == FinetuneSettings.build({}) == FinetuneSettings.build(None)
    assert FinetuneSettings.build(s) is s
    schema = defaults("finetune")
    assert s.learning_rate == schema["learning_rate"]
    for key, value in schema.items():
        if key != "keep_model":
            assert s.to_dict()[key] == value, key
    assert s.lora == LoraSettings() and s.lora.alpha == schema["lora"]["alpha"]
    assert set(s.to_dict()) == KEYS
    assert isinstance(s.lora.alpha, float)


def test_numeric_strings_are_coerced():
    s = FinetuneSettings.build(
        {"learning_rate": "5e-5", "epochs": "2", "threads": "1", "lora": {"alpha": "8"}}
    )
    assert s.learning_rate == 5e-5 and isinstance(s.learning_rate, float)
    assert s.epochs == 2 and isinstance(s.epochs, int)
    assert s.threads == 1
    assert s.lora.alpha == 8.0 and isinstance(s.lora.alpha, float)
    assert isinstance(FinetuneSettings(weight_decay=0).weight_decay, float)


@pytest.mark.parametrize(
    "given, message",
    [
        ({"batch_size": 0}, "config key finetune.batch_size: expected a number in [1, inf], got 0"),
        ({"learning_rate": "fast"}, "finetune.learning_rate: expected a number in [1e-12, inf]"),
        ({"epochs": 1.5}, "config key finetune.epochs: expected a number in [1, inf], got 1.5"),
        ({"warmup_ratio": 2}, "config key finetune.warmup_ratio: expected a number in [0, 1]"),
        ({"eval_batch_size": 0}, "finetune.eval_batch_size: expected a number in [1, inf]"),
        ({"threads": 0}, "config key finetune.threads: expected a number in [1, inf], got 0"),
        (
            {"precision": "fp8"},
            "config key finetune.precision: expected one of ['auto', 'fp32', 'bf16', 'fp16'], "
            "got 'fp8'. Fix it in config.yaml.",
        ),
        ({"select_on_dev": "yes"}, "finetune.select_on_dev: expected true or false, got 'yes'"),
        ({"ner_subword": "mid"}, 'finetune.ner_subword: expected "first" or "last", got \'mid\''),
        ({"device": 0}, 'config key finetune.device: expected "auto", "cpu", "cuda" or'),
        (
            {"lora": 5},
            "config key finetune.lora: expected a mapping with enabled, r, alpha, dropout, got 5",
        ),
        ({"lora": {"r": "many"}}, "config key finetune.lora.r: expected a number in [1, inf]"),
        ({"lora": {"enabled": 1}}, "config key finetune.lora.enabled: expected true or false"),
        ({"lora": {"dropout": 1.5}}, "config key finetune.lora.dropout: expected a number in"),
    ],
)
def test_a_bad_value_names_its_config_key(given, message):
    with pytest.raises(FinescopeError) as info:
        FinetuneSettings.build(given)
    assert message in str(info.value)


def test_an_unknown_key_is_an_error():
    with pytest.raises(FinescopeError, match="config key finetune.learnig_rate: unknown"):
        FinetuneSettings.build({"learnig_rate": 1e-4})
    with pytest.raises(FinescopeError, match="config key finetune.lora.rank: unknown"):
        FinetuneSettings.build({"lora": {"rank": 4}})
    with pytest.raises(FinescopeError, match="finetune.keep_model"):
        FinetuneSettings.build({"keep_model": True})  # the workflow's, not training's


def test_settings_are_frozen():
    s = FinetuneSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.epochs = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.lora.r = 2


def test_eval_batch_follows_batch_size_until_set():
    s = FinetuneSettings().replace(batch_size=8)
    assert s.eval_batch_size is None and s.eval_batch == 16
    assert s.replace(eval_batch_size=5).eval_batch == 5
    assert s.replace(lora={"enabled": True}).lora == LoraSettings(enabled=True)
    with pytest.raises(FinescopeError, match="finetune.batch_size"):
        s.replace(batch_size=0)


def test_params_leave_out_the_quiet_fields_at_their_default():
    quiet = {"device", "threads", "mega_batch", "eval_batch_size"}
    s = FinetuneSettings()
    assert not quiet & set(s.to_params())
    assert set(s.to_params()) == KEYS - quiet
    assert FinetuneSettings.build(s.to_params()) == s
    changed = FinetuneSettings.build(
        {"device": "cpu", "threads": 2, "mega_batch": 10, "eval_batch_size": 64, "seed": 3}
    )
    params = changed.to_params()
    assert {k: params[k] for k in quiet} == {
        "device": "cpu",
        "threads": 2,
        "mega_batch": 10,
        "eval_batch_size": 64,
    }
    assert FinetuneSettings.build(params) == changed
    assert json.loads(json.dumps(params)) == params  # builtin types only (Snakemake params)


def test_fingerprints_and_tracking_hold_the_resolved_eval_batch_size():
    s = FinetuneSettings(batch_size=8)
    resolved = s.resolved_dict()
    assert resolved["eval_batch_size"] == 16 and set(resolved) == KEYS
    assert resolved["lora"] == {"enabled": False, "r": 8, "alpha": 16.0, "dropout": 0.1}
    fingerprint = _fingerprint_settings(s)
    assert list(fingerprint) == sorted(KEYS - {"checkpoint_every", "device", "threads"})
    assert fingerprint["eval_batch_size"] == 16
    # Settings that do not change results leave the fingerprint as it is.
    assert _fingerprint_settings(s.replace(device="cpu", threads=1, checkpoint_every=0)) == (
        fingerprint
    )
