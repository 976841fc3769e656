"""The probe pool is kept out of every fine-tuning subset, at every fraction and seed."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest
import yaml

from finescope import probe_pool
from finescope.data import prepare_task
from finescope.errors import FinescopeError
from finescope.io import read_jsonl
from finescope.subsample import read_subset, subsample_ids
from tests.workflow_utils import snakemake, tiny_config


def _items(n, labels=("entailment", "neutral", "contradiction")):
    return [
        {"id": f"i{k}", "premise": f"p{k}", "hypothesis": f"h{k}", "label": labels[k % 3]}
        for k in range(n)
    ]


def test_reserve_takes_a_stratified_slice_out_of_train():
    splits = {"train": _items(90), "dev": _items(9), "test": _items(9)}
    pool, train, prov = probe_pool.reserve(splits, "nli", {"size": 0.2, "dev_share": 0.25}, 3)
    assert len(pool) == 18 and len(train) == 72
    assert not {i["id"] for i in pool} & {i["id"] for i in train}
    # Stratified: every label equally often, in the pool and in its probe-dev part.
    assert set(Counter(i["label"] for i in pool).values()) == {6}
    dev = [i for i in pool if i["probe_split"] == "dev"]
    assert len(dev) == 5 and len(set(i["label"] for i in dev)) == 3  # 4.5 rounds up
    assert prov["probe_train"] == 13 and prov["probe_dev"] == 5 and prov["source"] == "train"
    again, _, _ = probe_pool.reserve(splits, "nli", {"size": 0.2}, 3)
    assert [i["id"] for i in again] == [i["id"] for i in pool]
    other, _, _ = probe_pool.reserve(splits, "nli", {"size": 0.2}, 4)
    assert [i["id"] for i in other] != [i["id"] for i in pool]


def test_reserve_from_dev_keeps_train_whole():
    splits = {"train": _items(30), "dev": _items(12), "test": _items(9)}
    pool, train, prov = probe_pool.reserve(splits, "nli", {"source": "dev", "size": 8}, 0)
    assert len(pool) == 8 and train is splits["train"] and prov["source"] == "dev"


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"size": 30}, "leaves nothing to fine-tune on"),
        ({"size": 31}, "has only 30"),
        ({"size": 2, "dev_share": 0.1}, "empty probe-train or probe-dev"),
        ({"size": 1.5}, "whole count"),
        ({"source": "test"}, "probe_pool.source"),
        ({"sizes": 3}, "probe_pool.sizes"),
    ],
)
def test_reserve_refuses_impossible_pools(settings, words):
    with pytest.raises(FinescopeError, match=words):
        probe_pool.reserve({"train": _items(30), "dev": [], "test": []}, "nli", settings, 0)


def test_prepare_task_writes_the_pool_and_train_lacks_it(tmp_path):
    cfg = {"source": "synthetic", "train": 100, "dev": 10, "test": 20}
    stats = prepare_task("ner", cfg, tmp_path, 5, probe_pool={"size": 40})
    assert stats["train"]["items"] == 60 and stats["probe"]["items"] == 40
    pool, train = read_jsonl(tmp_path / "probe.jsonl"), read_jsonl(tmp_path / "train.jsonl")
    assert not {i["id"] for i in pool} & {i["id"] for i in train}
    meta = json.loads((tmp_path / "labels.json").read_text())
    assert meta["provenance"]["probe_pool"]["items"] == 40
    # Every fraction's subset is drawn from what is left: none can reach a probe item.
    for seed in (1, 2):
        for fraction in (10, 50, 100):
            ids = subsample_ids(train, "ner", seed, fraction=fraction)
            assert not set(ids) & {i["id"] for i in pool}


def test_no_probe_item_is_in_any_fine_tuning_subset_of_a_run(tmp_path, tiny_bert_dir):
    """The workflow's own data and subsample jobs, four fractions x two seeds, both tasks."""
    config = tiny_config(tmp_path, {"bert": (tiny_bert_dir, "encoder")})
    cfg = yaml.safe_load(config.read_text())
    cfg["fractions"], cfg["seeds"] = [0, 10, 50, 100], [1, 2]
    # 34 items after the pool of 16, so 10 % (3 items) can hold each of the 3 NLI labels.
    for task in ("nli", "ner"):
        cfg["tasks"][task]["data"]["train"] = 50
    config.write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, "results/tables/data.csv", "--cores", "2", "--configfile", str(config))
    for task in ("nli", "ner"):
        data = tmp_path / "results" / "data" / task
        pool = read_jsonl(data / "probe.jsonl")
        test = read_jsonl(data / "test.jsonl")
        content = (
            (lambda i: (i["premise"], i["hypothesis"]))
            if task == "nli"
            else (lambda i: tuple(i["tokens"]))
        )
        train = {i["id"]: i for i in read_jsonl(data / "train.jsonl")}
        probe_ids = {i["id"] for i in pool}
        probe_content = {content(i) for i in pool} | {content(i) for i in test}
        subsets = sorted((tmp_path / "results" / "subsets" / task).glob("f*/s*.json"))
        assert len(subsets) == 6  # fractions 10, 50, 100 x seeds 1, 2
        for path in subsets:
            ids = read_subset(path)["ids"]
            assert ids and not set(ids) & probe_ids, path
            assert not {content(train[i]) for i in ids} & probe_content, path
    table = pd.read_csv(tmp_path / "results" / "tables" / "data.csv")
    subset_rows = table[table["split"].str.startswith("train f")]
    assert len(subset_rows) and (subset_rows["probe_overlap"] == 0).all()
    assert {"probe train", "probe dev"} <= set(table["split"])


def test_the_data_report_counts_overlap_and_refuses_a_stale_pool(tmp_path):
    from finescope.data import data_report
    from finescope.io import write_jsonl
    from finescope.subsample import write_subset

    cfg = {"source": "synthetic", "train": 60, "dev": 9, "test": 12}
    prepare_task("nli", cfg, tmp_path, 0, probe_pool={"size": 12})
    train = read_jsonl(tmp_path / "train.jsonl")
    subset = tmp_path / "f50.json"
    write_subset(subset, subsample_ids(train, "nli", 1, fraction=50), "nli", 50, 1)
    frame = data_report("nli", tmp_path, [subset])
    rows = frame[frame["split"] == "train f50 s1"]
    assert len(rows) and (rows["probe_overlap"] == 0).all()
    items = frame[frame["label"] == "(items)"].set_index("split")["count"]
    assert items["probe train"] == 9 and items["probe dev"] == 3 and items["train"] == 48
    # A pool that train also holds (a data folder edited by hand) is refused.
    write_jsonl(tmp_path / "probe.jsonl", [*read_jsonl(tmp_path / "probe.jsonl"), train[0]])
    with pytest.raises(FinescopeError, match="also in"):
        data_report("nli", tmp_path, [subset])
