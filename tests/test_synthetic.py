"""Synthetic corpus: determinism, balance, validity, no split overlap, no trivial shortcuts."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from finescope.data import prepare_task
from finescope.errors import FinescopeError
from finescope.io import read_json, read_jsonl
from finescope.synthetic import (
    GENES,
    MAX_TOKENS,
    MIN_TOKENS,
    NER_TYPES,
    generate,
    generate_splits,
    item_key,
    split_seed,
)


def test_generate_is_deterministic_and_seeded():
    for task in ("nli", "ner"):
        first = generate(task, 50, seed=3, id_prefix="train")
        assert generate(task, 50, seed=3, id_prefix="train") == first
        assert generate(task, 50, seed=4, id_prefix="train") != first
        assert [item["id"] for item in first] == [f"train-{i}" for i in range(50)]


def test_split_seeds_differ_and_are_stable():
    seeds = {split_seed(0, "nli", s) for s in ("train", "dev", "test")}
    assert len(seeds) == 3
    # A fixed value: a change here would silently change every synthetic data set.
    assert split_seed(0, "nli", "train") == 6453821042193079518
    assert split_seed(0, "nli", "train") != split_seed(1, "nli", "train")


@pytest.mark.parametrize("n", [300, 301, 7])
def test_nli_labels_balanced(n):
    items = generate("nli", n, seed=1, id_prefix="x")
    counts = Counter(item["label"] for item in items)
    assert set(counts) == {"entailment", "contradiction", "neutral"}
    assert max(counts.values()) - min(counts.values()) <= 1
    assert sum(counts.values()) == n
    for item in items:
        assert item["premise"].strip() and item["hypothesis"].strip()
        assert item["premise"] != item["hypothesis"]


def test_ner_items_are_valid_iob2():
    items = generate("ner", 400, seed=2, id_prefix="s")
    types = Counter()
    multiword = 0
    for item in items:
        tokens, tags = item["tokens"], item["tags"]
        assert len(tokens) == len(tags)
        assert MIN_TOKENS <= len(tokens) <= MAX_TOKENS
        assert all(" " not in token and token for token in tokens)
        prev = "O"
        for tag in tags:
            assert tag == "O" or tag[:2] in ("B-", "I-")
            if tag.startswith("I-"):
                assert prev[2:] == tag[2:], item  # I-X only continues an X entity
            if tag.startswith("B-"):
                types[tag[2:]] += 1
            multiword += tag.startswith("I-") and prev.startswith("B-")
            prev = tag
    assert set(types) == set(NER_TYPES)
    assert types["protein"] == max(types.values())  # as in JNLPBA
    assert multiword > 100
    assert any(set(item["tags"]) == {"O"} for item in items)  # sentences without entities


def test_ner_types_need_context():
    """The same gene symbol is tagged protein, DNA and RNA depending on the next word."""
    items = generate("ner", 1500, seed=0, id_prefix="s")
    seen: dict[str, set[str]] = {}
    for item in items:
        for token, tag in zip(item["tokens"], item["tags"], strict=True):
            if tag.startswith("B-") and token in GENES:
                seen.setdefault(token, set()).add(tag[2:])
    assert sum(types >= {"protein", "DNA", "RNA"} for types in seen.values()) >= 10


def _naive_bayes_accuracy(train: list[dict], test: list[dict], field: str) -> float:
    """Multinomial naive Bayes on the words of one field (add-one smoothing)."""
    words: dict[str, Counter] = {}
    priors = Counter(item["label"] for item in train)
    for item in train:
        words.setdefault(item["label"], Counter()).update(item[field].split())
    vocab = set().union(*words.values())
    correct = 0
    for item in test:
        scores = {}
        for label, counts in words.items():
            total = sum(counts.values()) + len(vocab)
            scores[label] = math.log(priors[label]) + sum(
                math.log((counts[w] + 1) / total) for w in item[field].split()
            )
        correct += max(scores, key=scores.get) == item["label"]
    return correct / len(test)


def test_hypothesis_alone_does_not_give_the_label():
    """A bag-of-words classifier on hypotheses only stays near chance (no annotation cues)."""
    splits = generate_splits("nli", {"train": 1500, "dev": 1, "test": 600}, seed=0)
    accuracy = _naive_bayes_accuracy(splits["train"], splits["test"], "hypothesis")
    assert accuracy < 0.45


def test_negation_is_not_a_label_cue():
    items = generate("nli", 900, seed=5, id_prefix="x")
    negated = Counter(
        item["label"]
        for item in items
        if {"not", "None", "no", "fewer"} & set(item["hypothesis"].split())
    )
    total = sum(negated.values())
    assert total > 100
    assert sum(count / total > 0.2 for count in negated.values()) >= 2


def test_splits_do_not_share_items():
    for task in ("nli", "ner"):
        splits = generate_splits(task, {"train": 400, "dev": 100, "test": 200}, seed=0)
        keys = {split: {item_key(i) for i in items} for split, items in splits.items()}
        assert [len(keys[s]) for s in ("train", "dev", "test")] == [400, 100, 200]
        assert not keys["train"] & keys["test"]
        assert not keys["train"] & keys["dev"]
        assert not keys["dev"] & keys["test"]
        assert splits["test"][0]["id"] == "test-0"


def test_exclude_is_respected():
    first = generate("nli", 30, seed=0, id_prefix="a")
    again = generate("nli", 30, seed=0, id_prefix="a", exclude={item_key(i) for i in first})
    assert not {item_key(i) for i in first} & {item_key(i) for i in again}


def test_generate_rejects_bad_arguments():
    with pytest.raises(FinescopeError, match="unknown task 'qa'"):
        generate("qa", 3, 0, "x")
    with pytest.raises(FinescopeError, match="negative"):
        generate("nli", -1, 0, "x")


def test_prepare_task_synthetic(tmp_path):
    stats = prepare_task(
        "ner", {"source": "synthetic", "train": 60, "dev": 10, "test": 20}, tmp_path / "a", 0
    )
    assert {s: v["items"] for s, v in stats.items()} == {"train": 60, "dev": 10, "test": 20}
    meta = read_json(tmp_path / "a" / "labels.json")
    assert meta["entity_types"] == sorted(NER_TYPES)
    assert meta["labels"][:3] == ["O", "B-DNA", "I-DNA"]
    assert meta["provenance"]["test"]["source"] == "synthetic"
    train = read_jsonl(tmp_path / "a" / "train.jsonl")
    assert len(train) == 60 and set(train[0]) == {"id", "tokens", "tags"}
    assert stats["train"]["tokens"] == sum(len(i["tokens"]) for i in train)

    prepare_task(
        "ner", {"source": "synthetic", "train": 60, "dev": 10, "test": 20}, tmp_path / "b", 0
    )
    prepare_task(
        "ner", {"source": "synthetic", "train": 60, "dev": 10, "test": 20}, tmp_path / "c", 1
    )
    text = (tmp_path / "a" / "train.jsonl").read_text()
    assert (tmp_path / "b" / "train.jsonl").read_text() == text
    assert (tmp_path / "c" / "train.jsonl").read_text() != text

    nli = prepare_task("nli", {"source": "synthetic"}, tmp_path / "nli", 0)
    assert {s: v["items"] for s, v in nli.items()} == {"train": 200, "dev": 40, "test": 80}
    assert nli["train"]["labels"] == {"contradiction": 67, "entailment": 67, "neutral": 66}
    assert read_json(tmp_path / "nli" / "labels.json")["labels"] == [
        "contradiction",
        "entailment",
        "neutral",
    ]


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"source": "synthetic", "train": 0}, r"tasks\.nli\.data\.train: 0 must be a positive"),
        ({"source": "synthetic", "scheme": "iob2"}, r"tasks\.nli\.data\.scheme: unknown key"),
    ],
)
def test_synthetic_config_errors(tmp_path, cfg, match):
    with pytest.raises(FinescopeError, match=match):
        prepare_task("nli", cfg, tmp_path / "out", 0)
    assert not (tmp_path / "out").exists()
