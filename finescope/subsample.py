"""Stratified, nested training subsets.

For one seed, all items are put in a single order and a subset of size k is the first k items
of that order, so a smaller fraction is always contained in a larger one. The order is built
so that every prefix is stratified:

1. items are grouped into strata (NLI: the label; NER: the set of entity types in the
   sentence) and each stratum is sorted by id, then shuffled with a seed derived from the
   study seed and the stratum name (SHA-256, so Python's hash randomisation plays no part);
2. the first items cover every label (a stratum that adds the most labels not yet covered
   goes first), so any subset with at least as many items as needed has every label;
3. after that, each next item comes from the stratum that is furthest below its proportional
   share of the prefix, computed in integer arithmetic (a sequential largest-remainder rule),
   which keeps every stratum within about one item of its expected count at every size.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from finescope import io, job
from finescope.errors import FinescopeError
from finescope.io import read_json, write_json
from finescope.settings import tasks

TASKS = tasks()


def stratum_key(item: dict, task: str) -> str:
    """The stratum an item belongs to, as a stable string.

    Parameters
    ----------
    item
        Canonical NLI or NER item.
    task
        "nli" or "ner".

    Returns
    -------
    str
        NLI: the label. NER: the sorted entity types of the sentence joined by "|" ("" for a
        sentence without entities).
    """
    if task == "nli":
        return str(item["label"])
    return "|".join(sorted(item_labels(item, task)))


def item_labels(item: dict, task: str) -> set[str]:
    """Labels an item contributes, for label coverage.

    Parameters
    ----------
    item
        Canonical NLI or NER item (NER tags in IOB2).
    task
        "nli" or "ner".

    Returns
    -------
    set[str]
        ``{label}`` (NLI) or the entity types in the sentence (NER; empty without entities).
    """
    if task == "nli":
        return {str(item["label"])}
    # Tags are IOB2, so every entity starts with "B-".
    return {tag[2:] for tag in item["tags"] if tag.startswith("B-")}


def _seed_int(*parts: object) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise FinescopeError(f"task {task!r} is not known; use one of {', '.join(TASKS)}.")


def stratified_order(items: Sequence[dict], task: str, seed: int) -> list[int]:
    """A seeded order of all items in which every prefix is stratified and covers the labels.

    Parameters
    ----------
    items
        Canonical items with unique ``id`` values.
    task
        "nli" or "ner".
    seed
        Seed of the order; the order depends only on the seed and the set of items (not on
        their order in ``items``, nor on the Python process).

    Returns
    -------
    list[int]
        A permutation of ``range(len(items))``.
    """
    _check_task(task)
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(stratum_key(item, task), []).append(i)
    for key, members in groups.items():
        members.sort(key=lambda i: str(items[i]["id"]))
        random.Random(_seed_int("order", seed, task, key)).shuffle(members)
    # Larger strata first on ties, then by name: a total, process-independent order.
    keys = sorted(groups, key=lambda k: (-len(groups[k]), k))
    stratum_labels = {k: item_labels(items[groups[k][0]], task) for k in keys}
    total = len(items)
    taken = dict.fromkeys(keys, 0)
    order: list[int] = []

    def take(key: str) -> None:
        order.append(groups[key][taken[key]])
        taken[key] += 1

    # Cover every label first.
    uncovered = set().union(*stratum_labels.values()) if keys else set()
    while uncovered:
        best = max(keys, key=lambda k: len(stratum_labels[k] & uncovered) if not taken[k] else -1)
        if taken[best] or not stratum_labels[best] & uncovered:
            break
        take(best)
        uncovered -= stratum_labels[best]

    # Then the stratum with the largest deficit against its share of the next prefix:
    # deficit_s = (t + 1) * N_s / N - c_s, compared as (t + 1) * N_s - c_s * N in integers.
    while len(order) < total:
        nxt = len(order) + 1
        best_key, best_deficit = None, None
        for key in keys:  # ties keep the first key of the fixed order
            if taken[key] < len(groups[key]):
                deficit = nxt * len(groups[key]) - taken[key] * total
                if best_deficit is None or deficit > best_deficit:
                    best_key, best_deficit = key, deficit
        take(best_key)
    return order


def subset_size(n_items: int, fraction: float) -> int:
    """Number of items for a percentage, rounded half up exactly (no float drift).

    Parameters
    ----------
    n_items
        Size of the pool.
    fraction
        Percent, 0..100.

    Returns
    -------
    int
        ``floor(fraction * n_items / 100 + 1/2)``, e.g. 10 % of 25 items is 3.
    """
    return math.floor(Fraction(str(fraction)) * n_items / 100 + Fraction(1, 2))


def subsample_ids(
    items: Sequence[dict],
    task: str,
    seed: int,
    fraction: float | None = None,
    n: int | None = None,
) -> list[str]:
    """Ids of a stratified subset; subsets of one seed are nested across fractions.

    Parameters
    ----------
    items
        Canonical training items (unique ``id``).
    task
        "nli" (strata = labels) or "ner" (strata = set of entity types in a sentence).
    seed
        Subset seed.
    fraction
        Percent of the items, 0..100 (0 gives [], 100 gives all). Give this or ``n``.
    n
        Absolute number of items, 0..len(items). Give this or ``fraction``.

    Returns
    -------
    list[str]
        Ids of the chosen items, in the order of ``items``.
    """
    _check_task(task)
    if (fraction is None) == (n is None):
        raise FinescopeError(
            "subsample: give exactly one of fraction (percent 0..100) or n (item count)."
        )
    ids = [str(item["id"]) for item in items]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise FinescopeError(
            f"subsample: item id {dup!r} occurs more than once; ids must be unique "
            "(prepare the data again with the data stage)."
        )
    total = len(items)
    if fraction is not None:
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, (int, float))
            or not (0 <= fraction <= 100)
        ):
            raise FinescopeError(
                f"subsample: fraction {fraction!r} is not a percent between 0 and 100."
            )
        k = subset_size(total, fraction)
        if fraction > 0 and k == 0:
            raise FinescopeError(
                f"subsample: fraction {fraction}% of {total} items is less than one item; "
                f"use a fraction of at least {math.ceil(50 / max(total, 1))}% "
                "or a larger training set."
            )
    else:
        if isinstance(n, bool) or not isinstance(n, int) or not (0 <= n <= total):
            raise FinescopeError(f"subsample: n={n!r} must be an integer between 0 and {total}.")
        k = n
    if k == 0:
        return []
    if k == total:
        return ids
    order = stratified_order(items, task, seed)
    chosen = set(order[:k])
    present = set().union(*(item_labels(items[i], task) for i in chosen))
    wanted = set().union(*(item_labels(item, task) for item in items))
    missing = sorted(wanted - present)
    if missing:
        # A model fine-tuned on such a subset never sees these labels: its scores would measure
        # the gap, not the amount of data, so the grid point is refused.
        what = "labels" if task == "nli" else "entity types"
        need = _covering_size(items, task, order, wanted)
        size = f"fraction {fraction}%" if fraction is not None else f"n={n}"
        hint = f"at least {need} of the {total} items"
        if fraction is not None:
            least = next(f for f in range(1, 101) if subset_size(total, f) >= need)
            hint = f"a fraction of at least {least}% ({need} of the {total} items)"
        raise FinescopeError(
            f"subsample: the {task} training subset at {size}, seed {seed} has {k} items and "
            f"cannot hold every one of the {len(wanted)} {what}; missing: {', '.join(missing)}. "
            f"Use {hint} (raise the smallest value in `fractions`), or give "
            f"tasks.{task}.data more training items (or a smaller probe_pool.size)."
        )
    return [ids[i] for i in range(total) if i in chosen]


def _covering_size(items: Sequence[dict], task: str, order: list[int], wanted: set[str]) -> int:
    """The smallest prefix of ``order`` that holds every label in ``wanted``."""
    seen: set[str] = set()
    for size, i in enumerate(order, start=1):
        seen |= item_labels(items[i], task)
        if seen >= wanted:
            return size
    return len(order)


def write_subset(
    path: str | Path, ids: Sequence[str], task: str, fraction: float | None, seed: int
) -> None:
    """Write a subset file ``{"task", "fraction", "seed", "n", "ids"}`` atomically.

    Parameters
    ----------
    path
        Destination JSON file.
    ids
        Chosen item ids (from :func:`subsample_ids`).
    task, fraction, seed
        What the subset is; ``fraction`` may be None for an absolute-count subset.
    """
    _check_task(task)
    write_json(
        path,
        {"task": task, "fraction": fraction, "seed": seed, "n": len(ids), "ids": list(ids)},
    )


def read_subset(path: str | Path) -> dict:
    """Read a subset file written by :func:`write_subset`.

    Returns
    -------
    dict
        ``{"task": str, "fraction": number | None, "seed": int, "n": int, "ids": list[str]}``.
    """
    path = Path(path)
    if not path.is_file():
        raise FinescopeError(f"subset file {path} not found; run the subsample step first.")
    try:
        data = read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise FinescopeError(
            f"subset file {path} is not valid JSON ({err}); delete it and run again."
        ) from err
    missing = [
        k
        for k in ("task", "fraction", "seed", "ids")
        if not isinstance(data, dict) or k not in data
    ]
    if missing or not isinstance(data["ids"], list):
        raise FinescopeError(
            f"subset file {path} lacks {', '.join(missing) or 'a list of ids'}; "
            "delete it and run the subsample step again."
        )
    data["ids"] = [str(i) for i in data["ids"]]
    data.setdefault("n", len(data["ids"]))
    return data


def subsample_job(task: str, train_path: str, fraction: int, seed: int, out_path: str) -> None:
    """The ``subsample`` job: the seeded training subset of one fraction."""
    ids = subsample_ids(io.read_jsonl(train_path), task, seed, fraction=fraction)
    job.log.info("%s f%s s%s: %d items", task, fraction, seed, len(ids))
    write_subset(out_path, ids, task, fraction, seed)
