"""The data report: split sizes and label counts of a prepared task."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from finescope.data.config import PROBE_SPLIT, SPLITS
from finescope.data.splits import _stats
from finescope.errors import FinescopeError
from finescope.io import read_json, read_jsonl, write_csv
from finescope.probe_pool import overlap
from finescope.subsample import read_subset

if TYPE_CHECKING:
    import pandas as pd


def data_report(task: str, data_dir: Path, subset_files: Iterable[Path] = ()) -> pd.DataFrame:
    """Counts per split and per training subset, for ``results/tables/data.csv``.

    Parameters
    ----------
    task
        "nli" or "ner".
    data_dir
        Folder written by :func:`prepare_task`.
    subset_files
        Subset JSON files (see ``finescope.subsample.write_subset``) over the train split.

    Returns
    -------
    pandas.DataFrame
        Columns task, split, fraction, seed, label, count, probe_overlap. ``split`` is "train",
        "dev", "test", "probe train" / "probe dev" (the reserved probe pool, when there is one)
        or "train f{fraction} s{seed}"; fraction and seed are empty for whole splits.
        Label "(items)" counts items and, for NER, "(tokens)" counts tokens; the other rows
        count items per label (NLI) or entities per type (NER). ``probe_overlap`` (subset rows
        only, with a pool) is the number of the subset's items that are also probe items,
        counted from the files: 0 unless the data is stale. Under ``on_bad_rows: skip``, rows
        with split "skipped" count the source rows left out, one per reason (the label).
    """
    import pandas as pd

    data_dir = Path(data_dir)
    meta_path = data_dir / "labels.json"
    if not meta_path.is_file():
        raise FinescopeError(f"{meta_path} not found; run the data stage for {task} first.")
    meta = read_json(meta_path)
    labels = meta["labels"] if task == "nli" else meta["entity_types"]
    rows: list[dict] = []
    splits = {split: read_jsonl(data_dir / f"{split}.jsonl") for split in SPLITS}

    pool_path = data_dir / f"{PROBE_SPLIT}.jsonl"
    pool = read_jsonl(pool_path) if pool_path.is_file() else None
    pool_ids = [str(item["id"]) for item in pool] if pool is not None else []
    if pool is not None and meta.get("provenance", {}).get("probe_pool", {}).get("source") == (
        "train"
    ):
        leaked = overlap(pool_ids, [str(item["id"]) for item in splits["train"]])
        if leaked:
            raise FinescopeError(
                f"{pool_path}: {leaked} probe items are also in {data_dir / 'train.jsonl'}; "
                "the data folder is stale, run the data stage again"
            )

    def add(split_name: str, fraction, seed, items: list[dict], probe_overlap=None) -> None:
        stats = _stats(task, items, labels)
        counts = [("(items)", stats["items"])]
        if task == "ner":
            counts.append(("(tokens)", stats["tokens"]))
        counts += list(stats["labels"].items())
        for label, count in counts:
            rows.append(
                {
                    "task": task,
                    "split": split_name,
                    "fraction": fraction,
                    "seed": seed,
                    "label": label,
                    "count": count,
                    "probe_overlap": probe_overlap,
                }
            )

    for split in SPLITS:
        add(split, None, None, splits[split])
    if pool is not None:
        for part in ("train", "dev"):
            add(f"probe {part}", None, None, [i for i in pool if i.get("probe_split") == part])
    for reason, entry in meta.get("skipped_rows", {}).items():
        rows.append(
            {
                "task": task,
                "split": "skipped",
                "fraction": None,
                "seed": None,
                "label": reason,
                "count": entry["count"],
                "probe_overlap": None,
            }
        )
    by_id = {item["id"]: item for item in splits["train"]}
    for path in subset_files:
        subset = read_subset(path)
        if subset["task"] != task:
            raise FinescopeError(f"{path}: a {subset['task']} subset, expected {task}.")
        unknown = [i for i in subset["ids"] if i not in by_id]
        if unknown:
            raise FinescopeError(
                f"{path}: {len(unknown)} ids (e.g. {unknown[0]!r}) are not in "
                f"{data_dir / 'train.jsonl'}; the subset is stale, run the subsample step again."
            )
        fraction = subset["fraction"]
        label = f"f{fraction}" if fraction is not None else f"n{subset['n']}"
        add(
            f"train {label} s{subset['seed']}",
            fraction,
            subset["seed"],
            [by_id[i] for i in subset["ids"]],
            overlap(pool_ids, subset["ids"]) if pool is not None else None,
        )
    columns = ["task", "split", "fraction", "seed", "label", "count", "probe_overlap"]
    frame = pd.DataFrame(rows, columns=columns)
    # Nullable integers so whole-split rows have empty fraction/seed cells in the CSV.
    if all(float(f).is_integer() for f in frame["fraction"].dropna()):
        frame["fraction"] = frame["fraction"].astype("Int64")
    frame["seed"] = frame["seed"].astype("Int64")
    frame["count"] = frame["count"].astype("int64")
    frame["probe_overlap"] = frame["probe_overlap"].astype("Int64")
    return frame


def data_table_job(labels_paths: list[str], subset_paths: list[str], out_csv: str) -> None:
    """The ``data_table`` job: ``results/tables/data.csv`` from the prepared tasks and subsets."""
    import pandas as pd

    frames = []
    for labels in labels_paths:
        data_dir = Path(labels).parent
        # labels.json and each subset file name their task.
        task = read_json(labels)["task"]
        subsets = [Path(p) for p in subset_paths if read_subset(p)["task"] == task]
        frames.append(data_report(task, data_dir, subsets))
    write_csv(pd.concat(frames, ignore_index=True), out_csv)
