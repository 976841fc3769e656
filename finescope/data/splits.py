"""Assembling train, dev, test and the probe pool from a source, with their checks."""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

from finescope import job, synthetic
from finescope.data.config import (
    DEFAULT_DEV_FRACTION,
    PROBE_SPLIT,
    SPLITS,
    _BadRow,
    _BadRows,
    _Cfg,
    _Split,
)
from finescope.data.rows import _normalise_tags
from finescope.data.sources import _read_files, _read_hf, _synthetic_items
from finescope.errors import FinescopeError
from finescope.io import write_json, write_jsonl
from finescope.probe_pool import reserve as reserve_probe_pool
from finescope.settings.probe_pool import ProbePoolSettings
from finescope.subsample import item_labels, stratified_order


def _items(split: str, data: _Split, bad_rows: _BadRows) -> list[dict]:
    """Canonical items with ids; ids must be unique within the split (under ``on_bad_rows:
    skip`` a repeated id drops the later row)."""
    if not data.records:
        raise FinescopeError(
            f"{data.origin}: the {split} split has no items; give a file with data."
        )
    items = []
    first_seen: dict[str, str] = {}
    for index, record in enumerate(data.records):
        item_id = record.id if record.id is not None else f"{split}-{index}"
        if item_id in first_seen:
            bad_rows.reject(
                _BadRow(
                    "duplicate id",
                    record.where,
                    f"{record.where}: duplicate id {item_id!r} (first at "
                    f"{first_seen[item_id]}); ids must be unique within a split: fix the data "
                    "or drop the id column.",
                )
            )
            continue
        first_seen[item_id] = record.where
        items.append({"id": item_id, **record.fields})
    return items


def _count(fraction: float, n: int) -> int:
    return math.floor(Fraction(str(fraction)) * n + Fraction(1, 2))


def _split_off(
    items: list[dict],
    task: str,
    fraction: float,
    seed: int,
    salt: str,
    cfg: _Cfg,
    key: str,
    what: str,
) -> tuple[list[dict], list[dict]]:
    """Stratified seeded split: (a ``fraction`` share, the rest), both in file order."""
    k = _count(fraction, len(items))
    if not 0 < k < len(items):
        raise cfg.error(
            key,
            f"{fraction} of the {len(items)} {what} items leaves an empty split; "
            "use another fraction or give the split as data",
        )
    derive_seed = synthetic.split_seed(seed, task, f"derive-{salt}")
    chosen = set(stratified_order(items, task, derive_seed)[:k])
    taken = [item for i, item in enumerate(items) if i in chosen]
    rest = [item for i, item in enumerate(items) if i not in chosen]
    return taken, rest


def _derive(
    items: dict[str, list[dict]], provenance: dict[str, dict], cfg: _Cfg, seed: int
) -> None:
    """Fill missing splits in place (seeded, stratified) and record how in ``provenance``."""
    task = cfg.task
    dev_fraction = cfg.fraction("dev_fraction", DEFAULT_DEV_FRACTION)
    test_fraction = cfg.fraction("test_fraction", None)
    strata = "label" if task == "nli" else "entity types per sentence"

    def record(split: str, base: str, share: float, note: str) -> None:
        provenance[split] = {
            "source": provenance[base]["source"],
            "derived_from": base,
            "fraction": round(share, 12),
            "seed": seed,
            "stratified_by": strata,
            "note": note,
        }

    if "test" in items and test_fraction is not None and "train" in items:
        warnings.warn(
            f"{cfg.key('test_fraction')} is ignored: a test split was given.", stacklevel=3
        )
    if "train" not in items:
        if "dev" in items:
            base = "dev"
        elif test_fraction is not None:
            base = "test"
        else:
            raise cfg.error(
                "train",
                "no train split and only a test split; give a train or dev file, or set "
                f"{cfg.key('test_fraction')} to hold out part of the test file as test",
            )
        pool = items[base]
        if base == "test":
            test, pool = _split_off(
                pool, task, test_fraction, seed, "test", cfg, "test_fraction", "test"
            )
            items["test"] = test
            record("test", "test", test_fraction, "test_fraction of the test file kept as test")
            pool_share = 1 - test_fraction
        else:
            pool_share = 1.0
        dev, train = _split_off(pool, task, dev_fraction, seed, "dev", cfg, "dev_fraction", base)
        items["train"], items["dev"] = train, dev
        record(
            "train",
            base,
            pool_share * (1 - dev_fraction),
            f"no train file: train derived from {base}",
        )
        record(
            "dev",
            base,
            pool_share * dev_fraction,
            f"no train file: dev is the dev_fraction of {base} not used for train",
        )
        return
    share = 1.0
    if "test" not in items:
        if test_fraction is None:
            raise cfg.error(
                "test",
                "no test split; give a test file or set "
                f"{cfg.key('test_fraction')} (e.g. 0.2) to hold out part of train",
            )
        test, rest = _split_off(
            items["train"], task, test_fraction, seed, "test", cfg, "test_fraction", "train"
        )
        items["test"], items["train"] = test, rest
        record("test", "train", test_fraction, "no test file: test held out from train")
        share = 1 - test_fraction
    if "dev" not in items:
        dev, rest = _split_off(
            items["train"], task, dev_fraction, seed, "dev", cfg, "dev_fraction", "train"
        )
        items["dev"], items["train"] = dev, rest
        record("dev", "train", share * dev_fraction, "no dev file: dev held out from train")
        share *= 1 - dev_fraction
    if share != 1.0:
        record("train", "train", share, "train minus the held-out splits")


def _stats(task: str, items: list[dict], labels: list[str]) -> dict:
    if task == "nli":
        counts = Counter(item["label"] for item in items)
        return {"items": len(items), "labels": {label: counts[label] for label in labels}}
    counts = Counter(tag[2:] for item in items for tag in item["tags"] if tag.startswith("B-"))
    return {
        "items": len(items),
        "tokens": sum(len(item["tokens"]) for item in items),
        "labels": {etype: counts[etype] for etype in labels},
    }


def _check_unseen_labels(items: dict[str, list[dict]], cfg: _Cfg, labels: list[str]) -> None:
    """A label of dev or test that train (what fine-tuning reads) never has is an error, or
    with ``allow_unseen_labels: true`` a warning."""
    task = cfg.task
    in_train = set().union(*(item_labels(i, task) for i in items["train"]))
    found: dict[str, str] = {}  # label -> "split (e.g. item id)"
    for split in ("dev", "test"):
        for item in items[split]:
            for label in sorted(item_labels(item, task) - in_train):
                found.setdefault(label, f"{split}, e.g. item {item['id']!r}")
    if not found:
        return
    what = "label" if task == "nli" else "entity type"
    listed = "; ".join(f"{label} ({where})" for label, where in sorted(found.items()))
    text = (
        f"tasks.{task}.data: {len(found)} {what}(s) occur in dev/test but never in the train "
        f"split that fine-tuning reads: {listed}"
    )
    if cfg.flag("allow_unseen_labels"):
        warnings.warn(
            f"{text}; kept as {cfg.key('allow_unseen_labels')} is true (a fine-tuned model "
            "cannot predict them).",
            stacklevel=3,
        )
        return
    raise FinescopeError(
        f"{text}. A fine-tuned model cannot learn them: fix the data (or a smaller "
        f"probe_pool.size, which takes items out of train), or set "
        f"{cfg.key('allow_unseen_labels')}: true to keep them."
    )


def prepare_task(
    task: str,
    data_cfg: dict,
    out_dir: Path,
    seed: int,
    probe_pool: ProbePoolSettings | Mapping | None = None,
) -> dict:
    """Read, validate and normalise one task's data; write the canonical split files.

    Parameters
    ----------
    task
        "nli" or "ner".
    data_cfg
        The mapping at ``tasks.<task>.data`` (forms: source synthetic / files / hf).
    out_dir
        Folder that receives ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` and
        ``labels.json``. Nothing is written unless every check passes.
    seed
        Seed for synthetic data, for deriving missing splits and for the probe pool.
    probe_pool
        :class:`~finescope.settings.probe_pool.ProbePoolSettings` (or a mapping of them):
        the pool is set aside before any fine-tuning subset is drawn and written to
        ``probe.jsonl`` (train.jsonl then lacks it). None: no pool, no ``probe.jsonl``.

    Returns
    -------
    dict
        ``{split: {"items": n, "labels": {label: count}}}``; NER counts entities per type and
        adds ``"tokens"``; with a pool, also ``"probe"``.
    """
    cfg = _Cfg(task, data_cfg)
    cfg.flag("allow_unseen_labels")  # validate early
    provenance: dict[str, dict] = {}
    if cfg.source == "synthetic":
        items, provenance = _synthetic_items(cfg, seed)
    else:
        strict = cfg.flag("strict")
        scheme = cfg.scheme()
        cfg.fraction("dev_fraction", DEFAULT_DEV_FRACTION)  # validate early
        raw = _read_files(cfg) if cfg.source == "files" else _read_hf(cfg)
        items = {}
        for split, data in raw.items():
            if task == "ner":
                repairs, kept = 0, []
                for record in data.records:
                    try:
                        repairs += _normalise_tags(record, scheme, strict, cfg)
                        kept.append(record)
                    except _BadRow as bad:
                        cfg.bad_rows.reject(bad)
                data.records = kept
                if repairs:
                    warnings.warn(
                        f"{data.origin}: repaired {repairs} tag(s) 'I-X' that followed 'O' or "
                        f"another type to 'B-X'; set {cfg.key('strict')}: true to make this "
                        "an error.",
                        stacklevel=2,
                    )
            items[split] = _items(split, data, cfg.bad_rows)
            provenance[split] = data.provenance
        skipped = cfg.bad_rows.total()
        if skipped:
            reasons = "; ".join(
                f"{reason}: {entry['count']} (e.g. {', '.join(entry['examples'])})"
                for reason, entry in cfg.bad_rows.report().items()
            )
            warnings.warn(
                f"{cfg.key('on_bad_rows')} is skip: {skipped} bad row(s) left out of the data: "
                f"{reasons}.",
                stacklevel=2,
            )
        _derive(items, provenance, cfg, seed)

    # What produced this folder, so that a reader (the plan) can tell it belongs to a config.
    if probe_pool is not None:
        probe_pool = ProbePoolSettings.build(probe_pool)
    provenance["settings"] = {
        "data": data_cfg,
        "seed": seed,
        "probe_pool": None if probe_pool is None else probe_pool.to_dict(),
    }
    pool = None
    if probe_pool is not None:
        pool, items["train"], provenance["probe_pool"] = reserve_probe_pool(
            items, task, probe_pool, seed
        )

    if task == "nli":
        declared = cfg.labels() if cfg.source != "synthetic" else None
        labels = declared or sorted({item["label"] for split in SPLITS for item in items[split]})
        if len(labels) < 2:
            raise FinescopeError(
                f"{cfg.key('source')}: the data has only the label(s) {labels}; NLI needs "
                "at least two labels. Check the label column."
            )
        meta = {"task": task, "labels": labels, "provenance": provenance}
        stat_labels = labels
    else:
        types = sorted(
            {
                tag[2:]
                for split in SPLITS
                for item in items[split]
                for tag in item["tags"]
                if tag != "O"
            }
        )
        if not types:
            raise FinescopeError(
                f"{cfg.key('source')}: the NER data has no entities (all tags are O); "
                "check the tag column."
            )
        labels = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
        meta = {"task": task, "labels": labels, "entity_types": types, "provenance": provenance}
        stat_labels = types
    for split in SPLITS:
        if not items[split]:
            raise FinescopeError(f"{cfg.key(split)}: the {split} split is empty.")
    _check_unseen_labels(items, cfg, stat_labels)
    for split in SPLITS:
        missing = sorted(
            set(stat_labels) - set().union(*(item_labels(i, task) for i in items[split]))
        )
        if missing and split != "test":
            warnings.warn(
                f"tasks.{task}.data: the {split} split has no {', '.join(missing)}.", stacklevel=2
            )

    out_dir = Path(out_dir)
    for split in SPLITS:
        write_jsonl(out_dir / f"{split}.jsonl", items[split])
    stats = {split: _stats(task, items[split], stat_labels) for split in SPLITS}
    if pool is not None:
        write_jsonl(out_dir / f"{PROBE_SPLIT}.jsonl", pool)
        stats[PROBE_SPLIT] = _stats(task, pool, stat_labels)
    if cfg.bad_rows.reasons:
        meta["skipped_rows"] = cfg.bad_rows.report()
    write_json(out_dir / "labels.json", meta)
    return stats


def prepare_data_job(
    task: str, data_cfg: dict, seed: int, probe_pool: ProbePoolSettings | Mapping, labels_path: str
) -> None:
    """The ``prepare_data`` job: split files and ``labels.json`` beside ``labels_path``."""
    stats = prepare_task(task, data_cfg, Path(labels_path).parent, seed, probe_pool=probe_pool)
    job.log.info("prepared %s: %s", task, stats)
