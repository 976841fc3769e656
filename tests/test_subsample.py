"""Stratified nested subsets: nesting, proportions, label coverage, determinism, errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from finescope.errors import FinescopeError
from finescope.subsample import (
    read_subset,
    stratified_order,
    stratum_key,
    subsample_ids,
    subset_size,
    write_subset,
)

ROOT = Path(__file__).resolve().parents[1]


def nli_pool(counts: dict[str, int], seed: int = 0) -> list[dict]:
    labels = [label for label, n in counts.items() for _ in range(n)]
    random.Random(seed).shuffle(labels)
    return [
        {"id": f"p{i}", "premise": f"premise {i}", "hypothesis": "h", "label": label}
        for i, label in enumerate(labels)
    ]


def ner_pool(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    types = ["protein", "DNA", "RNA", "cell_type", "cell_line"]
    weights = [50, 20, 3, 15, 12]
    items = []
    for i in range(n):
        tags = []
        for _ in range(rng.randint(0, 3)):
            etype = rng.choices(types, weights)[0]
            tags += ["O", f"B-{etype}", f"I-{etype}"]
        tags.append("O")
        items.append({"id": f"s{i}", "tokens": ["w"] * len(tags), "tags": tags})
    return items


NLI = nli_pool({"neutral": 300, "entailment": 150, "contradiction": 50})


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("task", ["nli", "ner"])
def test_subsets_are_nested(task, seed):
    items = NLI if task == "nli" else ner_pool(400)
    subsets = [set(subsample_ids(items, task, seed, fraction=f)) for f in (10, 30, 50, 100)]
    assert [len(s) for s in subsets] == [subset_size(len(items), f) for f in (10, 30, 50, 100)]
    assert subsets[0] < subsets[1] < subsets[2] < subsets[3]
    assert subsets[3] == {item["id"] for item in items}


@pytest.mark.parametrize("seed", [0, 3])
def test_nli_label_proportions_within_one(seed):
    totals = Counter(item["label"] for item in NLI)
    by_id = {item["id"]: item["label"] for item in NLI}
    for fraction in (5, 10, 30, 50, 77):
        ids = subsample_ids(NLI, "nli", seed, fraction=fraction)
        got = Counter(by_id[i] for i in ids)
        for label, total in totals.items():
            expected = len(ids) * total / len(NLI)
            assert abs(got[label] - expected) <= 1, (fraction, label, got[label], expected)


def test_ner_strata_proportions_within_one():
    items = ner_pool(600, seed=2)
    totals = Counter(stratum_key(item, "ner") for item in items)
    by_id = {item["id"]: stratum_key(item, "ner") for item in items}
    for k in (60, 180, 300):
        got = Counter(by_id[i] for i in subsample_ids(items, "ner", 0, n=k))
        for key, total in totals.items():
            assert abs(got[key] - k * total / len(items)) <= 1, (k, key)


def test_every_label_present_in_small_subsets():
    items = nli_pool({"neutral": 400, "entailment": 97, "contradiction": 3})
    by_id = {item["id"]: item["label"] for item in items}
    for k in (3, 4, 10):
        assert {by_id[i] for i in subsample_ids(items, "nli", 5, n=k)} == {
            "neutral",
            "entailment",
            "contradiction",
        }
    ner = ner_pool(300)
    ner_by_id = {item["id"]: item for item in ner}
    for fraction in (2, 5):
        types = {
            tag[2:]
            for i in subsample_ids(ner, "ner", 1, fraction=fraction)
            for tag in ner_by_id[i]["tags"]
            if tag != "O"
        }
        assert types == {"protein", "DNA", "RNA", "cell_type", "cell_line"}


def test_a_subset_too_small_for_every_label_is_an_error_that_says_what_to_do():
    # 7 pairs at 10 % is one pair: two of the three labels cannot be in it.
    items = nli_pool({"neutral": 3, "entailment": 2, "contradiction": 2})
    with pytest.raises(FinescopeError) as err:
        subsample_ids(items, "nli", 4, fraction=10)
    message = str(err.value)
    first = items[stratified_order(items, "nli", 4)[0]]["label"]
    missing = sorted({"neutral", "entailment", "contradiction"} - {first})
    assert "the nli training subset at fraction 10%, seed 4 has 1 items" in message
    assert f"missing: {', '.join(missing)}." in message
    # Three labels need three pairs: the smallest percent of 7 that rounds to 3 is 36.
    assert "a fraction of at least 36% (3 of the 7 items)" in message
    assert "`fractions`" in message and "tasks.nli.data more training items" in message
    assert len(subsample_ids(items, "nli", 4, fraction=36)) == 3
    # NER: the entity types of the sentences, and absolute counts say how many items.
    ner = ner_pool(300)
    with pytest.raises(FinescopeError, match=r"ner training subset at n=1, seed 0 .*entity types"):
        subsample_ids(ner, "ner", 0, n=1)


def test_the_error_names_exactly_the_missing_labels():
    items = nli_pool({"neutral": 50, "entailment": 30, "contradiction": 2})
    first = items[stratified_order(items, "nli", 0)[0]]["label"]
    with pytest.raises(FinescopeError) as err:
        subsample_ids(items, "nli", 0, n=1)
    missing = sorted({"neutral", "entailment", "contradiction"} - {first})
    assert f"missing: {', '.join(missing)}." in str(err.value)
    assert len(subsample_ids(items, "nli", 0, n=3)) == 3


def test_absolute_counts_and_extremes():
    for n in (0, 3, 17, 250, 500):
        assert len(subsample_ids(NLI, "nli", 0, n=n)) == n
    assert subsample_ids(NLI, "nli", 0, fraction=0) == []
    assert subsample_ids(NLI, "nli", 0, fraction=100) == [item["id"] for item in NLI]
    # n= and fraction= select along the same order.
    assert subsample_ids(NLI, "nli", 4, fraction=20) == subsample_ids(NLI, "nli", 4, n=100)


def test_rounding_is_half_up():
    assert subset_size(25, 10) == 3  # 2.5 -> 3
    assert subset_size(1917, 10) == 192
    assert subset_size(20, 2.5) == 1  # 0.5 -> 1


def test_ids_in_file_order_and_independent_of_input_order():
    ids = subsample_ids(NLI, "nli", 9, fraction=30)
    positions = {item["id"]: i for i, item in enumerate(NLI)}
    assert ids == sorted(ids, key=positions.get)
    shuffled = list(NLI)
    random.Random(123).shuffle(shuffled)
    assert set(subsample_ids(shuffled, "nli", 9, fraction=30)) == set(ids)


def test_deterministic_and_seed_dependent():
    first = subsample_ids(NLI, "nli", 11, fraction=30)
    assert subsample_ids(NLI, "nli", 11, fraction=30) == first
    assert subsample_ids(NLI, "nli", 12, fraction=30) != first
    order = stratified_order(NLI, "nli", 11)
    assert sorted(order) == list(range(len(NLI)))


def _ids_in_subprocess(hash_seed: str) -> list[str]:
    code = (
        "import json, sys\n"
        "from finescope.subsample import subsample_ids\n"
        "items = json.loads(sys.stdin.read())\n"
        "print(json.dumps([subsample_ids(items['nli'], 'nli', 3, fraction=25),\n"
        "                  subsample_ids(items['ner'], 'ner', 3, fraction=25)]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps({"nli": NLI, "ner": ner_pool(200)}),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(result.stdout)


def test_independent_of_python_hash_seed():
    in_process = [
        subsample_ids(NLI, "nli", 3, fraction=25),
        subsample_ids(ner_pool(200), "ner", 3, fraction=25),
    ]
    assert _ids_in_subprocess("1") == _ids_in_subprocess("987654") == in_process


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of fraction"),
        ({"fraction": 10, "n": 5}, "exactly one of fraction"),
        ({"fraction": 150}, "between 0 and 100"),
        ({"fraction": -1}, "between 0 and 100"),
        ({"n": 501}, "between 0 and 500"),
        ({"n": 2.5}, "must be an integer"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(FinescopeError, match=match):
        subsample_ids(NLI, "nli", 0, **kwargs)


def test_fraction_too_small_for_data():
    items = NLI[:20]
    with pytest.raises(FinescopeError, match=r"fraction 1% of 20 items .* at least 3%"):
        subsample_ids(items, "nli", 0, fraction=1)


def test_duplicate_ids_and_unknown_task():
    items = NLI[:5] + [dict(NLI[0])]
    with pytest.raises(FinescopeError, match="'p0' occurs more than once"):
        subsample_ids(items, "nli", 0, fraction=50)
    with pytest.raises(FinescopeError, match="task 'qa'"):
        subsample_ids(NLI, "qa", 0, fraction=50)


def test_subset_file_roundtrip(tmp_path):
    ids = subsample_ids(NLI, "nli", 2, fraction=10)
    path = tmp_path / "subsets" / "nli_f10_s2.json"
    write_subset(path, ids, "nli", 10, 2)
    assert read_subset(path) == {"task": "nli", "fraction": 10, "seed": 2, "n": 50, "ids": ids}


def test_subset_file_errors(tmp_path):
    with pytest.raises(FinescopeError, match="not found"):
        read_subset(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FinescopeError, match="bad.json is not valid JSON"):
        read_subset(bad)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"task": "nli", "ids": []}))
    with pytest.raises(FinescopeError, match="lacks fraction, seed"):
        read_subset(partial)
