"""Hub datasets: the local fetch_data job downloads them into resources/data/<task>/, and
prepare_data reads that folder offline. The Hub is unreachable here, so the download is fed
from a folder built in the test, laid out as the Hub serves it (the Parquet branch); everything
after the download (grouping the files into splits, loading, saving, reading back) is real."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
import yaml

from finescope.data import (
    FETCHED_FILE,
    PARQUET_BRANCH,
    fetch_hub_dataset,
    hub_data_dir,
    is_hub_dataset,
    prepare_task,
)
from finescope.errors import FinescopeError
from finescope.io import read_json, read_jsonl
from tests.workflow_utils import ROOT, dry_run_jobs, snakemake

TAGS = ["O", "B-DNA", "I-DNA", "B-protein", "I-protein"]
SENTENCES = [
    (["IL-2", "gene", "expression"], [1, 2, 0]),
    (["NF-kappa", "B", "binds"], [3, 4, 0]),
    (["the", "IL-2", "promoter"], [0, 1, 2]),
    (["p50", "and", "p65"], [3, 0, 3]),
]
DATA = {
    "source": "hf",
    "name": "example-org/bio-ner",
    "revision": PARQUET_BRANCH,
    "splits": {"train": "train", "dev": "validation", "test": "test"},
    "columns": {"tokens": "tokens", "tags": "tags"},
    "tag_names": TAGS,
}
SIZES = {"train": 24, "validation": 6, "test": 8}


def _rows(n: int, offset: int) -> dict:
    picked = [SENTENCES[(offset + i) % len(SENTENCES)] for i in range(n)]
    return {"tokens": [t for t, _ in picked], "tags": [g for _, g in picked]}


def parquet_branch(root: Path, config: str = "bio-ner", old_names: bool = False) -> Path:
    """A Parquet conversion as the Hub lays it out: <config>/<split>/0000.parquet (older
    conversions: <config>/<name>-<split>.parquet)."""
    import datasets

    for i, (split, n) in enumerate(SIZES.items()):
        table = datasets.Dataset.from_dict(_rows(n, i))
        name = f"{config}-{split}.parquet" if old_names else f"{split}/0000.parquet"
        path = root / config / name
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(str(path))
    return root


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """snapshot_download copies a local Parquet branch; dataset_info names a commit."""
    served = parquet_branch(tmp_path / "served")
    calls = []

    def snapshot_download(repo_id, repo_type, revision, local_dir, allow_patterns=None):
        calls.append((repo_id, repo_type, revision, allow_patterns))
        shutil.copytree(served, local_dir, dirs_exist_ok=True)
        return str(local_dir)

    class Info:
        sha = "0123abcd"

    class Api:
        def dataset_info(self, repo_id, revision=None):
            calls.append(("info", repo_id, revision))
            return Info()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    return calls


def test_only_hub_ids_are_fetched():
    assert is_hub_dataset(DATA)
    assert not is_hub_dataset({**DATA, "name": "json", "data_files": {"train": "x.jsonl"}})
    assert not is_hub_dataset({**DATA, "name": "./local/folder"})
    assert not is_hub_dataset({"source": "files", "train": "a.jsonl"})
    assert not is_hub_dataset({"source": "synthetic"})


def test_fetch_then_prepare_reads_the_folder_offline(fake_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = hub_data_dir("ner")
    fetched = fetch_hub_dataset("ner", DATA, out)
    assert fetched == {
        "name": "example-org/bio-ner",
        "config": None,
        "revision": PARQUET_BRANCH,
        "sha": "0123abcd",
        "splits": SIZES,
    }
    assert ("example-org/bio-ner", "dataset", PARQUET_BRANCH, None) in fake_hub
    assert read_json(out / FETCHED_FILE) == fetched
    assert (out / "dataset_dict.json").is_file()
    # No download leftovers beside the folder.
    assert sorted(p.name for p in out.parent.iterdir()) == ["ner"]

    # prepare_data: offline, from the folder alone.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", None)
    prepare_task("ner", DATA, tmp_path / "results" / "data" / "ner", seed=13)
    train = read_jsonl(tmp_path / "results" / "data" / "ner" / "train.jsonl")
    test = read_jsonl(tmp_path / "results" / "data" / "ner" / "test.jsonl")
    assert len(train) == SIZES["train"] and len(test) == SIZES["test"]
    assert train[0]["tokens"] == ["IL-2", "gene", "expression"]
    assert train[0]["tags"] == ["B-DNA", "I-DNA", "O"]
    labels = read_json(tmp_path / "results" / "data" / "ner" / "labels.json")
    text = yaml.safe_dump(labels)
    assert "0123abcd" in text and PARQUET_BRANCH in text  # the commit read is recorded


def test_older_parquet_names_and_a_named_config(tmp_path, monkeypatch):
    served = parquet_branch(tmp_path / "served", config="bionlp2004", old_names=True)
    parquet_branch(served, config="other")
    patterns = []

    def snapshot_download(repo_id, repo_type, revision, local_dir, allow_patterns=None):
        patterns.append(allow_patterns)
        shutil.copytree(served, local_dir, dirs_exist_ok=True)

    class Api:
        def dataset_info(self, repo_id, revision=None):
            return type("Info", (), {"sha": "feed"})()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.chdir(tmp_path)
    # Two configs and none named: the error lists them.
    with pytest.raises(FinescopeError, match="has the configs bionlp2004, other; name one"):
        fetch_hub_dataset("ner", DATA, hub_data_dir("ner"))
    assert not hub_data_dir("ner").exists()
    fetched = fetch_hub_dataset("ner", {**DATA, "config": "bionlp2004"}, hub_data_dir("ner"))
    assert fetched["splits"] == SIZES and patterns[-1] == ["bionlp2004/**"]


def test_a_missing_folder_names_the_command_that_fetches_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FinescopeError) as caught:
        prepare_task("ner", DATA, tmp_path / "out", seed=13)
    message = str(caught.value)
    assert message.startswith("tasks.ner.data.name: hub dataset 'example-org/bio-ner' is not")
    assert f"{(tmp_path / 'resources' / 'data' / 'ner').resolve()} is missing" in message
    assert "run `snakemake --cores 1 resources/data/ner`" in message
    assert not (tmp_path / "out").exists()


def test_an_unreachable_hub_fails_with_the_key(tmp_path, monkeypatch):
    # The real client, offline: the error names the key and the dataset.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FinescopeError, match=r"^tasks\.ner\.data\.name: could not download "):
        fetch_hub_dataset("ner", {**DATA, "revision": None}, tmp_path / "ner")
    assert not (tmp_path / "ner").exists()


@pytest.mark.workflow
def test_prepare_data_job_runs_offline_from_a_fetched_folder(fake_hub, tmp_path, tiny_bert_dir):
    """The workflow: fetch_data is planned while the folder is missing, not once it exists,
    and the prepare_data job then reads it (HF_HUB_OFFLINE=1, as every test run)."""
    config = {
        "tasks": {"ner": {"data": DATA}},
        "models": {"tiny": {"ref": str(tiny_bert_dir)}},
        "fractions": [0, 100],
        "probe_pool": {"size": 8},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    jobs = dry_run_jobs(tmp_path, "--configfile", str(path), "--cores", "1")
    assert [j["rule"] for j in jobs].count("fetch_data") == 1
    fetch_hub_dataset("ner", DATA, tmp_path / "resources" / "data" / "ner")
    jobs = dry_run_jobs(tmp_path, "--configfile", str(path), "--cores", "1")
    assert "fetch_data" not in [j["rule"] for j in jobs]
    snakemake(tmp_path, "--configfile", str(path), "--cores", "1", "results/data/ner/labels.json")
    assert len(read_jsonl(tmp_path / "results" / "data" / "ner" / "test.jsonl")) == SIZES["test"]


def test_the_paper_grid_reads_bionlp2004_from_the_parquet_conversion():
    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    ner = config["tasks"]["ner"]["data"]
    assert is_hub_dataset(ner) and ner["revision"] == PARQUET_BRANCH
