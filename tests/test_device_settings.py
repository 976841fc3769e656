"""Device and precision settings: the schema accepts the values the code honours, refuses the
rest naming the key, and the grid hands them to the jobs."""

from __future__ import annotations

import pytest
import torch
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from finescope.devices import resolve_device
from finescope.errors import FinescopeError
from finescope.workflow import Grid, schema_error
from tests.workflow_utils import ROOT, merge_config

SCHEMA = str(ROOT / "schemas" / "config.schema.yaml")


def _validated(changes: dict) -> dict:
    config = merge_config(yaml.safe_load((ROOT / "config.yaml").read_text()), changes)
    validate(config, SCHEMA)
    return config


def _refusal(changes: dict) -> str:
    with pytest.raises(WorkflowError) as caught:
        _validated(changes)
    error = schema_error(caught.value)
    assert error is not None
    return str(error)


GOOD = [
    {"finetune": {"device": "cuda:1", "precision": "bf16"}},
    {"finetune": {"device": "mps", "precision": "fp32"}},
    {"finetune": {"precision": "fp16"}},
    {"extract": {"device": "cpu", "bf16_autocast": True, "padding_side": "left"}},
    {"models": {"smollm2": {"finetune": {"device": "cuda", "precision": "fp16"}}}},
    {"models": {"minilm": {"extract": {"bf16_autocast": True, "padding_side": "left"}}}},
    {"resources": {"gpus": 4}},
    {"resources": {"gpus": [2, 3]}},
]


@pytest.mark.parametrize("changes", GOOD, ids=lambda c: yaml.safe_dump(c, width=999).strip())
def test_valid_device_precision_and_gpu_settings_are_accepted(changes):
    _validated(changes)


BAD = [
    ({"finetune": {"device": "gpu"}}, "finetune.device", "does not match"),
    ({"finetune": {"device": "cuda:x"}}, "finetune.device", "does not match"),
    ({"finetune": {"precision": "int8"}}, "finetune.precision", "is not one of"),
    ({"extract": {"device": "tpu"}}, "extract.device", "does not match"),
    ({"extract": {"bf16_autocast": "yes"}}, "extract.bf16_autocast", "is not of type 'boolean'"),
    ({"extract": {"padding_side": "top"}}, "extract.padding_side", "is not one of"),
    (
        {"models": {"smollm2": {"finetune": {"precision": "half"}}}},
        "models.smollm2.finetune.precision",
        "is not one of",
    ),
    (
        {"models": {"minilm": {"extract": {"padding_side": "middle"}}}},
        "models.minilm.extract.padding_side",
        "is not one of",
    ),
    (
        {"models": {"minilm": {"extract": {"device": "cuda:"}}}},
        "models.minilm.extract.device",
        "does not match",
    ),
    ({"resources": {"gpus": -1}}, "resources.gpus", "is less than the minimum of 0"),
    ({"resources": {"gpu": 2}}, "resources.gpu", "unknown key under resources"),
]


@pytest.mark.parametrize(("changes", "key", "message"), BAD, ids=[b[1] for b in BAD])
def test_bad_device_precision_and_gpu_settings_are_refused_naming_the_key(changes, key, message):
    text = _refusal(changes)
    assert text.startswith(f"config key {key}"), text
    assert message in text, text


def test_the_grid_hands_device_settings_to_the_jobs_with_model_overrides():
    config = _validated(
        {
            "finetune": {"device": "cpu", "precision": "fp32"},
            "extract": {"bf16_autocast": True},
            "models": {
                "smollm2": {
                    "finetune": {"precision": "bf16"},
                    "extract": {"padding_side": "left", "device": "cpu"},
                }
            },
        }
    )
    grid = Grid.from_config(config)
    minilm, smol = grid.finetune_settings("minilm", 1), grid.finetune_settings("smollm2", 1)
    assert (minilm.device, minilm.precision) == ("cpu", "fp32")
    assert (smol.device, smol.precision) == ("cpu", "bf16")
    ex_minilm = grid.extract_settings("minilm", "test", task="ner")
    ex_smol = grid.extract_settings("smollm2", "test", task="ner")
    assert ex_minilm.bf16_autocast is True
    assert (ex_minilm.device, ex_minilm.padding_side) == ("auto", "right")
    assert (ex_smol.device, ex_smol.bf16_autocast, ex_smol.padding_side) == ("cpu", True, "left")
    # Settings at their default stay out of the job's params (finished jobs stay valid).
    params = ex_minilm.to_params()
    assert params["bf16_autocast"] is True
    assert "device" not in params and "padding_side" not in params
    default = Grid.from_config(_validated({})).finetune_settings("minilm", 1)
    assert default.device == "auto" and "device" not in default.to_params()


def test_defaults_are_filled_in():
    config = _validated({})
    assert config["finetune"]["device"] == "auto" and config["finetune"]["precision"] == "auto"
    assert config["extract"]["device"] == "auto"
    assert config["extract"]["bf16_autocast"] is False
    assert config["extract"]["padding_side"] == "right"
    assert config["resources"]["gpus"] == 0


def test_resolve_device_names_the_key_of_a_device_this_machine_lacks():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(FinescopeError, match=r"config key extract\.device: 'tpu' is not one"):
        resolve_device("tpu", key="extract.device")
    if not torch.cuda.is_available():
        with pytest.raises(FinescopeError, match=r"config key finetune\.device: 'cuda:1'"):
            resolve_device("cuda:1")
    if not torch.backends.mps.is_available():
        with pytest.raises(FinescopeError, match=r"config key extract\.device: 'mps' asked for"):
            resolve_device("mps", key="extract.device")


def test_every_stage_resolves_its_device_with_the_one_resolver():
    """Fine-tuning, extraction and the torch probe share finescope.devices.resolve_device; the
    probe, which runs on CPU or CUDA only, refuses MPS naming its own key."""
    import numpy as np

    from finescope import extract, finetune, torch_probe

    assert finetune.train.resolve_device is resolve_device
    assert extract.resolve_device is resolve_device
    assert torch_probe.resolve_device is resolve_device
    probe = torch_probe.TorchLogisticRegression(device="mps")
    with pytest.raises(FinescopeError, match=r"config key probe\.linear\.device: 'mps' is not"):
        probe.fit(np.zeros((4, 2)), [0, 1, 0, 1])
    assert torch_probe.TorchLogisticRegression(device="auto").fit(
        np.eye(4), [0, 1, 0, 1]
    ).device_ == ("cuda" if torch.cuda.is_available() else "cpu")
