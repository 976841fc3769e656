"""The probe pool: items reserved for probing that no fine-tuning subset can ever contain.

A probe trained on items the model was fine-tuned on measures memorisation as much as encoded
task information, and the overlap grows with the fraction (all of it at 100 %). So before any
subset is drawn, a seeded, stratified slice of the training split is set aside (or, where the
user says so, the dev split is used); ``train.jsonl`` no longer holds these items, and every
fraction, seed and the random-weights baseline probe the same pool.

Inside the pool a second seeded, stratified split marks each item ``probe_split: "train"``
(fits the probes) or ``"dev"`` (chooses probe hyperparameters and the reported best layer).
The probes are scored on the task's test split, which fine-tuning never reads either.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction

from finescope.errors import FinescopeError
from finescope.settings.probe_pool import ProbePoolSettings
from finescope.subsample import stratified_order

POOL_SPLITS = ("train", "dev")


def _round(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def pool_size(n_items: int, size: float) -> int:
    """Items in the pool: ``size`` itself when it is a count, else a share rounded half up."""
    if size >= 1:
        return int(size)
    return _round(Fraction(str(size)) * n_items)


def reserve(
    splits: Mapping[str, list[dict]],
    task: str,
    settings: ProbePoolSettings | Mapping | None,
    seed: int,
) -> tuple[list[dict], list[dict], dict]:
    """Set the probe pool aside.

    Parameters
    ----------
    splits
        Canonical items per split (``train``, ``dev``, ``test``).
    task
        ``"nli"`` or ``"ner"`` (strata: the label, or the set of entity types of a sentence).
    settings
        ``source`` ("train": a slice of train that fine-tuning never sees; "dev": the dev
        split, which fine-tuning reads only to pick its best checkpoint), ``size`` (a share of
        the source split in (0, 1) or a count), ``dev_share`` (part of the pool that is probe-dev).
    seed
        Data seed; the pool depends only on it, the task and the items.

    Returns
    -------
    tuple
        ``(pool, train)``: the pool's items in source-file order, each with ``probe_split``
        ("train" | "dev"), and the training split that fine-tuning subsets are drawn from (train
        minus the pool when the pool comes from train; train unchanged otherwise); and the pool's
        provenance for ``labels.json``.
    """
    s = ProbePoolSettings.build(settings)
    source = splits[s.source]
    k = pool_size(len(source), s.size)
    if k > len(source):
        raise FinescopeError(
            f"config key probe_pool.size: {k} items asked for, but the {s.source} split of "
            f"{task} has only {len(source)}; lower probe_pool.size"
        )
    if s.source == "train" and k >= len(source):
        raise FinescopeError(
            f"config key probe_pool.size: reserving {k} of the {len(source)} training items of "
            f"{task} leaves nothing to fine-tune on; lower probe_pool.size"
        )
    n_dev = _round(Fraction(str(s.dev_share)) * k)
    if k < 2 or not 0 < n_dev < k:
        raise FinescopeError(
            f"config key probe_pool: a pool of {k} items with dev_share {s.dev_share} leaves "
            "an empty probe-train or probe-dev part; raise probe_pool.size"
        )
    order = stratified_order(source, task, _seed(seed, task, "pool"))
    chosen = set(order[:k])
    pool_items = [dict(item) for i, item in enumerate(source) if i in chosen]
    dev_order = stratified_order(pool_items, task, _seed(seed, task, "pool-dev"))
    dev = set(dev_order[:n_dev])
    for i, item in enumerate(pool_items):
        item["probe_split"] = "dev" if i in dev else "train"
    train = splits["train"]
    if s.source == "train":
        train = [item for i, item in enumerate(source) if i not in chosen]
    ids = [str(item["id"]) for item in pool_items]
    provenance = {
        "source": s.source,
        "size": s.size,
        "dev_share": s.dev_share,
        "seed": seed,
        "items": k,
        "probe_train": k - n_dev,
        "probe_dev": n_dev,
        "stratified_by": "label" if task == "nli" else "entity types per sentence",
        "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        "note": (
            "reserved from train before subsampling: no fine-tuning subset contains these items"
            if s.source == "train"
            else "the dev split: fine-tuning never trains on it, but picks its best checkpoint "
            "on it when finetune.select_on_dev is true"
        ),
    }
    return pool_items, train, provenance


def overlap(pool_ids: Iterable[str], subset_ids: Sequence[str]) -> int:
    """Items a fine-tuning subset shares with the pool (0 unless the data is stale)."""
    return len(set(map(str, pool_ids)) & set(map(str, subset_ids)))


def _seed(seed: int, task: str, what: str) -> int:
    digest = hashlib.sha256(f"probe-{what}/{seed}/{task}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def cap_items(ids: Sequence[str], max_items: int | None, seed: int) -> list[int]:
    """Indices (in the given order) of the items kept under a cap: a seeded sample of the sorted
    ids, so it depends only on the set of ids, the cap and the seed, and every grid point and
    the random baseline keep the same items. All of them when ``max_items`` is None."""
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise FinescopeError("item ids are not unique")
    if max_items is None or max_items >= len(ids):
        return list(range(len(ids)))
    chosen = set(random.Random(seed).sample(sorted(ids), max_items))
    return [i for i, item in enumerate(ids) if item in chosen]


def probe_items(items: list[dict], max_items: int | None, seed: int) -> list[dict]:
    """The items probed for a split: a seeded sample by id, the same for every grid point
    (all of them when ``max_items`` is None)."""
    return [items[i] for i in cap_items([item["id"] for item in items], max_items, seed)]
