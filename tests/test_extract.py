"""The hidden-state cache: pooling, word alignment, round trip, batching, attention store, the
NLI pair view (against the fine-tuned head) and NER sub-word pooling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import finescope.finetune as ft
import finescope.finetune.batches as ft_batches
from finescope import cache, extract
from finescope.cache import Cache
from finescope.errors import FinescopeError
from finescope.extract import run_extract
from finescope.models import is_decoder, load_model, load_tokenizer

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
    assert a.views == cache.VIEWS[view]
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
    unknown = r"config key extract\.batchsize: unknown setting; did you mean .batch_size."
    with pytest.raises(FinescopeError, match=unknown):
        run_extract("ner", tiny_bert_dir, bad, tmp_path / "c", {"batchsize": 3})


# --------------------------------------------------------------------------------------------
# NLI pair view

NLI_LABELS = ["contradiction", "entailment", "neutral"]


@pytest.fixture(scope="module", params=["bert", "gpt2", "llama"])
def nli_head_dir(request, tmp_path_factory):
    """A tiny sequence-classification model (random head) saved like a fine-tuned model."""
    model_dir = request.getfixturevalue(f"tiny_{request.param}_dir")
    folder = tmp_path_factory.mktemp(f"nli_head_{request.param}") / "model"
    model = load_model(model_dir, "nli", NLI_LABELS, seed=0)
    with torch.no_grad():  # a head with large enough weights that a wrong token shows
        for module in (getattr(model, "classifier", None), getattr(model, "score", None)):
            if module is not None:
                module.weight.normal_(0, 1)
    model.save_pretrained(folder)
    load_tokenizer(model_dir).save_pretrained(folder)
    return folder


def _head_logits(model_dir, items):
    """The fine-tuned model's own logits, on fine-tuning's encoding and collator (padded)."""
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, "nli", NLI_LABELS).eval()
    enc = ft.encode_items(
        "nli",
        tokenizer,
        items,
        NLI_LABELS,
        128,
        token_type_ids=ft.uses_token_type_ids(model),
        decoder=is_decoder(model.config),
    )
    batch = ft.make_collator("nli", tokenizer, position_ids=ft_batches.uses_position_ids(model))(
        enc.features
    )
    batch.pop("labels")
    assert batch["attention_mask"].sum(1).unique().numel() > 1  # the batch really is padded
    if is_decoder(model.config):  # the hard case: pad == eos == the pair separator
        assert model.config.pad_token_id == tokenizer.eos_token_id
    with torch.no_grad():
        return model, model(**batch).logits


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_pair_cls_vector_gives_the_heads_logits(nli_head_dir, nli_items, tmp_path, dtype):
    items = nli_items[:6]
    run_extract("nli", nli_head_dir, items, tmp_path / "c", {"nli_view": "pair", "dtype": dtype})
    cache = Cache(tmp_path / "c")
    assert cache.views == ["cls", "premise", "hypothesis"] and cache.nli_view == "pair"
    assert cache.meta["forward_passes"] == 1  # all lengths in one padded batch
    model, logits = _head_logits(nli_head_dir, items)
    cls = torch.from_numpy(cache.layer("cls", cache.n_layers - 1))
    with torch.no_grad():
        if hasattr(model, "bert"):  # BERT: pooler (tanh dense on [CLS]) + classifier
            from_cache = model.classifier(model.bert.pooler(cls[:, None, :]))
        else:  # decoders: the score layer on the token the head reads
            from_cache = model.score(cls)
        # Another vector of the same pass does not give them: the check can fail.
        other = torch.from_numpy(cache.layer("hypothesis", cache.n_layers - 1))
        wrong = (
            model.classifier(model.bert.pooler(other[:, None, :]))
            if hasattr(model, "bert")
            else model.score(other)
        )
    atol = 1e-5 if dtype == "float32" else 1e-2  # float16 store: about 3 significant digits
    torch.testing.assert_close(from_cache, logits, atol=atol, rtol=0)
    assert (wrong - logits).abs().max() > 0.1


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_pair_segments_leave_out_special_tokens_and_separator(arch, nli_items, tmp_path, request):
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    items = nli_items[:4]
    meta = run_extract(
        "nli", model_dir, items, tmp_path / "c", F32 | {"nli_view": "pair", "attention_items": 3}
    )
    cache = Cache(tmp_path / "c")
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, "nli", head=False).eval()
    for i, item in enumerate(items):
        # The joint sequence and each segment's tokens, built by hand from the tokenizer.
        if arch == "bert":
            enc = tokenizer(item["premise"], item["hypothesis"])
            ids, types = enc["input_ids"], enc["token_type_ids"]
            segment = enc.sequence_ids(0)
            premise = [t for t, s in enumerate(segment) if s == 0]
            hypothesis = [t for t, s in enumerate(segment) if s == 1]
            cls = 0
            assert meta["pair_separator"] is None
        else:
            a = tokenizer(item["premise"])["input_ids"]
            b = tokenizer(item["hypothesis"])["input_ids"]
            ids, types = [*a, tokenizer.eos_token_id, *b], None
            premise = list(range(len(a)))
            hypothesis = list(range(len(a) + 1, len(ids)))
            cls = len(ids) - 1
            assert meta["pair_separator"] == tokenizer.eos_token == "<|endoftext|>"
        inputs = {"input_ids": torch.tensor([ids])}
        if types is not None:
            inputs["token_type_ids"] = torch.tensor([types])
        with torch.no_grad():
            hidden = torch.stack(model(**inputs, output_hidden_states=True).hidden_states)[:, 0]
        hidden = hidden.numpy()
        for view, positions in (("cls", [cls]), ("premise", premise), ("hypothesis", hypothesis)):
            stored = np.stack([cache.layer(view, layer)[i] for layer in range(cache.n_layers)])
            np.testing.assert_allclose(stored, hidden[:, positions].mean(1), atol=1e-5)
        all_tokens = hidden[-1].mean(0)
        assert not np.allclose(cache.layer("premise", cache.n_layers - 1)[i], all_tokens, atol=1e-3)
        if i < 3:  # one attention map per item, over the joint sequence
            assert cache.meta["attention"]["lengths"][i] == len(ids)
            assert cache.attention(i).shape == (2, 2, len(ids), len(ids))
    assert cache.n_attention == 3 and meta["attention"]["n_items"] == 3


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_pair_encoding_is_the_same_in_finetuning_and_extraction(arch, nli_items, tmp_path, request):
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    seen = []
    load = extract._load_model

    def recording(*args, **kwargs):
        model = load(*args, **kwargs)

        def hook(module, args, kwargs, output):
            for ids, mask in zip(kwargs["input_ids"], kwargs["attention_mask"], strict=True):
                seen.append(tuple(ids[mask.bool()].tolist()))

        model.register_forward_hook(hook, with_kwargs=True)
        return model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(extract, "_load_model", recording)
        meta = run_extract("nli", model_dir, nli_items, tmp_path / "c", {"batch_size": 5})
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, "nli", NLI_LABELS)
    enc = ft_batches._encode_for(
        model, tokenizer, "nli", nli_items, NLI_LABELS, ft.FinetuneSettings(), "x"
    )
    expected = [tuple(f["input_ids"]) for f in enc.features]
    assert sorted(seen) == sorted(expected) and len(seen) == len(nli_items)
    if arch == "bert":
        assert meta["pair_separator"] is None
    else:  # exactly one separator, between premise and hypothesis
        assert meta["pair_separator"] == tokenizer.eos_token
        for ids, item in zip(expected, nli_items, strict=True):
            n = len(tokenizer(item["premise"])["input_ids"])
            assert ids.count(tokenizer.eos_token_id) == 1 and ids[n] == tokenizer.eos_token_id


def test_pair_view_is_the_default_and_settings_are_checked(tiny_bert_dir, nli_items, tmp_path):
    meta = run_extract("nli", tiny_bert_dir, nli_items[:3], tmp_path / "c", {})
    assert meta["nli_view"] == "pair" and meta["views"] == ["cls", "premise", "hypothesis"]
    assert meta["settings"]["nli_view"] == "pair" and "ner_pooling" not in meta
    with pytest.raises(FinescopeError, match="`nli_view`"):
        run_extract("nli", tiny_bert_dir, nli_items, tmp_path / "d", {"nli_view": "joint"})
    with pytest.raises(FinescopeError, match="`ner_pooling`"):
        run_extract("nli", tiny_bert_dir, nli_items, tmp_path / "d", {"ner_pooling": "max"})
    with pytest.raises(FinescopeError, match="max_length=4 is too short for a sentence pair"):
        run_extract("nli", tiny_bert_dir, nli_items, tmp_path / "d", {"max_length": 4})


def test_max_length_is_capped_by_the_position_table(tiny_bert_dir, nli_items, tmp_path):
    tokenizer = load_tokenizer(tiny_bert_dir)
    assert tokenizer.model_max_length > 10_000  # only the model (128 positions) limits it
    long = [nli_items[0] | {"premise": " ".join(["cells"] * 300)}]
    meta = run_extract("nli", tiny_bert_dir, long, tmp_path / "c", {"max_length": 1000})
    assert meta["max_length"] == 128 and meta["n_truncated_sequences"] == 1


# --------------------------------------------------------------------------------------------
# NER sub-word pooling


@pytest.mark.parametrize("pooling", ["first", "last", "mean"])
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_ner_pooling_picks_the_subwords(arch, pooling, ner_items, tmp_path, request):
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    items = ner_items[:3]
    meta = run_extract(
        "ner", model_dir, items, tmp_path / "c", F32 | {"ner_pooling": pooling, "batch_size": 3}
    )
    assert meta["ner_pooling"] == pooling and "nli_view" not in meta
    cache = Cache(tmp_path / "c")
    layers = np.stack([cache.layer("word", layer) for layer in range(cache.n_layers)])
    row, longest = 0, 0
    for item in items:
        hidden, _, enc = _direct_hidden(model_dir, item["tokens"], words=True)
        word_ids = enc.word_ids(0)
        for w in range(len(item["tokens"])):
            tokens = [t for t, wid in enumerate(word_ids) if wid == w]
            longest = max(longest, len(tokens))
            picked = {"first": tokens[:1], "last": tokens[-1:], "mean": tokens}[pooling]
            np.testing.assert_allclose(layers[:, row], hidden[:, picked].mean(1), atol=1e-5)
            row += 1
    assert longest >= 3  # words of several sub-words, so the three poolings differ


@pytest.mark.parametrize("random_init", [False, True])
def test_one_job_writes_both_caches_as_two_separate_extractions_would(
    tiny_model_dir, ner_items, tmp_path, random_init
):
    # The probe pool without attention maps (default kernels), the test split with them (eager):
    # one load serves both, switching kernels between them.
    data = {"probe": tmp_path / "probe.jsonl", "test": tmp_path / "test.jsonl"}
    for path, items in zip(data.values(), (ner_items, ner_items[:3]), strict=True):
        path.write_text("".join(json.dumps(item) + "\n" for item in items))
    common = F32 | {"batch_size": 2, "item_seed": 0, "random_init": random_init, "seed": 3}
    settings = {
        "probe": common | {"max_items": None, "attention_items": 0},
        "test": common | {"max_items": 2, "attention_items": 2},
    }
    merged = {split: tmp_path / "job" / split for split in data}
    extract.extract_job("ner", str(tiny_model_dir), data, merged, settings)
    for split, path in data.items():
        alone = dict(settings[split])
        items = extract.probe_items(
            [json.loads(line) for line in path.read_text().splitlines()],
            alone.pop("max_items"),
            alone.pop("item_seed"),
        )
        run_extract("ner", tiny_model_dir, items, tmp_path / "alone" / split, alone)
        one, other = Cache(merged[split]), Cache(tmp_path / "alone" / split)
        assert one.meta["attn_implementation"] == other.meta["attn_implementation"]
        assert one.ids == other.ids
        for layer in range(one.n_layers):
            np.testing.assert_array_equal(one.layer("word", layer), other.layer("word", layer))
        if split == "test":
            assert one.meta["attn_implementation"] == "eager"
            np.testing.assert_array_equal(
                np.load(merged[split] / "attention.npy"),
                np.load(tmp_path / "alone" / split / "attention.npy"),
            )


def test_a_loaded_model_refuses_settings_it_was_not_loaded_under(
    tiny_bert_dir, ner_items, tmp_path
):
    loaded = extract.load_for_extraction("ner", tiny_bert_dir, F32)
    with pytest.raises(FinescopeError, match="random_init"):
        run_extract(
            "ner", tiny_bert_dir, ner_items, tmp_path / "c", F32 | {"random_init": True}, loaded
        )
