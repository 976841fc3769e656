"""The hidden-state cache: pooling, word alignment, round trip, batching, attention store."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from finescope import extract
from finescope.errors import FinescopeError
from finescope.extract import Cache, run_extract
from finescope.models import load_model, load_tokenizer

F32 = {"dtype": "float32"}
SEP = {"nli_view": "separate"}


def _direct_hidden(model_dir, text_or_words, *, words: bool = False):
    """Hidden states of one unpadded sequence, straight from the model: (L, T, D), ids."""
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, "nli", head=False).eval()
    enc = tokenizer(
        [text_or_words],
        is_split_into_words=words,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    special = enc.pop("special_tokens_mask")[0].bool()
    with torch.inference_mode():
        out = model(**enc, output_hidden_states=True)
    return torch.stack(out.hidden_states)[:, 0].numpy(), special.numpy(), enc


@pytest.mark.parametrize("view", ["separate", "pair"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_pooling_ignores_padding(tiny_model_dir, nli_items, tmp_path, side, view):
    base = F32 | {"nli_view": view}
    alone = run_extract("nli", tiny_model_dir, nli_items, tmp_path / "b1", base | {"batch_size": 1})
    padded = run_extract(
        "nli",
        tiny_model_dir,
        nli_items,
        tmp_path / "b7",
        base | {"batch_size": 7, "padding_side": side},
    )
    n_sequences = (2 if view == "separate" else 1) * len(nli_items)
    assert alone["forward_passes"] == n_sequences
    assert padded["forward_passes"] == math.ceil(n_sequences / 7)
    a, b = Cache(tmp_path / "b1"), Cache(tmp_path / "b7")
    assert a.views == extract.VIEWS[view]
    for view_name in a.views:
        for layer in range(a.n_layers):
            np.testing.assert_allclose(
                a.layer(view_name, layer), b.layer(view_name, layer), atol=1e-5
            )


@pytest.mark.parametrize("side", ["right", "left"])
def test_word_vectors_align_with_words(tiny_model_dir, ner_items, tmp_path, side):
    run_extract(
        "ner",
        tiny_model_dir,
        ner_items,
        tmp_path / "c",
        F32 | {"batch_size": 5, "padding_side": side, "ner_pooling": "mean"},
    )
    cache = Cache(tmp_path / "c")
    assert cache.labels == [tag for item in ner_items for tag in item["tags"]]
    assert cache.meta["word_item"] == [i for i, it in enumerate(ner_items) for _ in it["tokens"]]
    assert cache.meta["n_words_lost"] == 0
    layers = np.stack([cache.layer("word", layer) for layer in range(cache.n_layers)])
    row = 0
    for item in ner_items[:3]:
        hidden, _, enc = _direct_hidden(tiny_model_dir, item["tokens"], words=True)
        word_ids = enc.word_ids(0)
        for w in range(len(item["tokens"])):
            tokens = [t for t, wid in enumerate(word_ids) if wid == w]
            assert tokens, "every test word has sub-words"
            manual = hidden[:, tokens].mean(axis=1)
            np.testing.assert_allclose(layers[:, row], manual, atol=1e-5)
            row += 1


def test_nli_cache_round_trips(tiny_model_dir, nli_items, tmp_path):
    run_extract("nli", tiny_model_dir, nli_items, tmp_path / "c", F32 | SEP | {"batch_size": 1})
    cache = Cache(tmp_path / "c")
    assert cache.views == ["premise", "hypothesis"] and cache.nli_view == "separate"
    assert cache.ids == [item["id"] for item in nli_items]
    assert cache.labels == [item["label"] for item in nli_items]
    assert cache.meta["width"] == 32 and cache.n_layers == 3
    raw = np.load(tmp_path / "c" / "hypothesis.npy")
    assert raw.dtype == np.float32
    np.testing.assert_array_equal(cache.layer("hypothesis", 1), raw[1])
    for i in (0, 4):
        for view in ("premise", "hypothesis"):
            hidden, special, _ = _direct_hidden(tiny_model_dir, nli_items[i][view])
            keep = ~special if (~special).any() else np.ones_like(special)
            manual = hidden[:, keep].mean(axis=1)
            stored = np.stack([cache.layer(view, layer)[i] for layer in range(3)])
            np.testing.assert_allclose(stored, manual, rtol=1e-6, atol=1e-6)


def test_encoder_pooling_leaves_out_special_tokens(tiny_bert_dir, nli_items, tmp_path):
    run_extract("nli", tiny_bert_dir, nli_items[:2], tmp_path / "c", F32 | SEP)
    hidden, special, _ = _direct_hidden(tiny_bert_dir, nli_items[0]["premise"])
    assert special[0] and special[-1]  # [CLS] ... [SEP]
    stored = Cache(tmp_path / "c").layer("premise", 2)[0]
    np.testing.assert_allclose(stored, hidden[2, ~special].mean(axis=0), atol=1e-6)
    assert not np.allclose(stored, hidden[2].mean(axis=0), atol=1e-4)


def test_float16_is_the_default(tiny_gpt2_dir, ner_items, tmp_path):
    meta = run_extract("ner", tiny_gpt2_dir, ner_items, tmp_path / "c", {})
    assert meta["dtype"] == "float16"
    assert np.load(tmp_path / "c" / "word.npy", mmap_mode="r").dtype == np.float16
    assert Cache(tmp_path / "c").layer("word", 0).dtype == np.float32


def test_one_forward_pass_per_batch(tiny_bert_dir, nli_items, tmp_path, monkeypatch):
    calls = []
    load = extract._load_model

    def counting(*args, **kwargs):
        model = load(*args, **kwargs)
        model.register_forward_hook(lambda *_: calls.append(1))
        return model

    monkeypatch.setattr(extract, "_load_model", counting)
    meta = run_extract(
        "nli",
        tiny_bert_dir,
        nli_items,
        tmp_path / "c",
        SEP | {"batch_size": 4, "attention_items": 3},
    )
    # 6 attention sequences batched apart (2 batches), 30 others (8 batches)
    assert len(calls) == meta["forward_passes"] == meta["n_batches"] == 2 + 8
    assert meta["attn_implementation"] == "eager"
    on_disk = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert on_disk["forward_passes"] == 10 and on_disk["tokens_per_second"] > 0


def test_attention_store(tiny_model_dir, nli_items, tmp_path):
    run_extract(
        "nli",
        tiny_model_dir,
        nli_items,
        tmp_path / "c",
        SEP | {"batch_size": 4, "attention_items": 2},
    )
    cache = Cache(tmp_path / "c")
    tokenizer = load_tokenizer(tiny_model_dir)
    assert cache.n_attention == 4
    decoder = cache.meta["decoder"]
    for k in range(4):
        text = nli_items[k // 2]["premise" if k % 2 == 0 else "hypothesis"]
        maps = cache.attention(k)
        t = len(tokenizer(text)["input_ids"])
        assert maps.shape == (2, 2, t, t)
        np.testing.assert_allclose(maps.sum(-1), 1.0, atol=2e-3)
        if decoder:
            assert np.all(np.triu(maps, k=1) == 0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_attention_does_not_depend_on_padding(tiny_model_dir, ner_items, tmp_path, side):
    settings = F32 | {"attention_items": 5, "padding_side": side}
    run_extract("ner", tiny_model_dir, ner_items, tmp_path / "a", settings | {"batch_size": 1})
    run_extract("ner", tiny_model_dir, ner_items, tmp_path / "b", settings | {"batch_size": 5})
    a, b = Cache(tmp_path / "a"), Cache(tmp_path / "b")
    assert len(set(a.meta["attention"]["lengths"])) > 1  # the batch really is padded
    for k in range(5):
        np.testing.assert_allclose(a.attention(k), b.attention(k), atol=2e-3)  # float16 store


def test_truncated_words_are_counted_and_left_out(tiny_gpt2_dir, ner_items, tmp_path):
    meta = run_extract("ner", tiny_gpt2_dir, ner_items, tmp_path / "c", {"max_length": 4})
    cache = Cache(tmp_path / "c")
    n_words = sum(len(item["tokens"]) for item in ner_items)
    assert meta["n_words_lost"] > 0 and meta["n_truncated_sequences"] > 0
    assert cache.n_rows + meta["n_words_lost"] == n_words
    items, positions = cache.meta["word_item"], cache.meta["word_position"]
    assert cache.labels == [ner_items[i]["tags"][w] for i, w in zip(items, positions, strict=True)]
    assert cache.layer("word", 1).shape == (cache.n_rows, 32)


def test_random_init_is_seeded(tiny_bert_dir, nli_items, tmp_path):
    base = {"random_init": True, "dtype": "float32"}
    run_extract("nli", tiny_bert_dir, nli_items, tmp_path / "r1", base | {"seed": 3})
    run_extract("nli", tiny_bert_dir, nli_items, tmp_path / "r2", base | {"seed": 3})
    run_extract("nli", tiny_bert_dir, nli_items, tmp_path / "r3", base | {"seed": 4})
    run_extract("nli", tiny_bert_dir, nli_items, tmp_path / "pt", F32)
    r1, r2, r3, pt = (
        Cache(tmp_path / name).layer("premise", 2) for name in ("r1", "r2", "r3", "pt")
    )
    np.testing.assert_array_equal(r1, r2)
    assert not np.allclose(r1, r3) and not np.allclose(r1, pt)


def test_cache_detects_corruption(tiny_bert_dir, ner_items, tmp_path):
    folder = tmp_path / "c"
    run_extract("ner", tiny_bert_dir, ner_items, folder, {"attention_items": 2})
    Cache(folder)
    word = folder / "word.npy"
    data = word.read_bytes()
    word.write_bytes(data[: len(data) // 2])
    with pytest.raises(FinescopeError, match="corrupt cache at .*delete it and re-run"):
        Cache(folder)
    word.write_bytes(data)
    meta = json.loads((folder / "meta.json").read_text())
    meta["n_layers"] = 5
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FinescopeError, match="corrupt cache"):
        Cache(folder)
    (folder / "meta.json").unlink()
    with pytest.raises(FinescopeError, match="meta.json is missing"):
        Cache(folder)


def test_truncated_attention_file_is_detected(tiny_bert_dir, ner_items, tmp_path):
    folder = tmp_path / "c"
    run_extract("ner", tiny_bert_dir, ner_items, folder, {"attention_items": 2})
    att = folder / "attention.npy"
    att.write_bytes(att.read_bytes()[:-10])
    with pytest.raises(FinescopeError, match="corrupt cache"):
        Cache(folder)


def test_failure_leaves_no_cache(tiny_bert_dir, tmp_path):
    bad = [{"id": "x", "tokens": ["a", "b"], "tags": ["O"]}]
    with pytest.raises(FinescopeError, match="equal length"):
        run_extract("ner", tiny_bert_dir, bad, tmp_path / "c", {})
    assert not (tmp_path / "c").exists()
    with pytest.raises(FinescopeError, match="unknown key"):
        run_extract("ner", tiny_bert_dir, bad, tmp_path / "c", {"batchsize": 3})
