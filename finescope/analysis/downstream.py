"""Downstream scores: the fine-tuning metrics of every grid point as one table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finescope.analysis.grid import normalize_fraction
from finescope.analysis.settings import DOWNSTREAM_COLUMNS, ENTITY_F1, GRID, RANDOM
from finescope.errors import FinescopeError
from finescope.io import read_json
from finescope.settings.analysis import AnalysisSettings


def _meta_field(model_meta: Mapping[str, Any] | None, model: str, key: str) -> str:
    info = (model_meta or {}).get(model) or {}
    value = info.get(key)
    return str(value) if value not in (None, "") else "unknown"


def _check_entity_f1(entity_f1: str) -> str:
    if entity_f1 not in ENTITY_F1:
        raise FinescopeError(
            f"analysis.entity_f1 = {entity_f1!r} is not one of {sorted(ENTITY_F1)}: 'strict' "
            "(strict IOB2 entity F1) or 'conlleval' (conlleval-style entity F1)."
        )
    return ENTITY_F1[entity_f1]


def _is_ner(metrics: Mapping[str, Any]) -> bool:
    task = metrics.get("task")
    return task == "ner" or (task is None and metrics.get("primary") == "f1")


def collect_downstream(
    records: Iterable[Mapping[str, Any]],
    model_meta: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    entity_f1: str = AnalysisSettings.entity_f1,
) -> pd.DataFrame:
    """Long table of downstream metrics, one row per numeric metric of each grid point.

    Parameters
    ----------
    records
        Dicts with keys ``task``, ``model``, ``fraction``, ``seed`` and ``metrics`` (the dict of
        ``metrics.json``, or a path to it; ``None`` for grid points without a training run, such
        as fraction 0, which are skipped). ``metrics["score"]`` is the downstream score;
        ``metrics["primary"]`` names the metric it copies.
    model_meta
        ``{model: {"family": ..., "domain": ..., "n_layers": ...}}`` from the config; models
        absent from it get family and domain ``"unknown"``.
    entity_f1
        Which NER entity F1 becomes the correlated ``score``: ``"strict"`` (strict IOB2, metric
        ``f1``) or ``"conlleval"`` (conlleval-style, metric ``f1_conlleval``). NLI scores are
        unaffected.

    Returns
    -------
    pandas.DataFrame
        Columns ``DOWNSTREAM_COLUMNS``: task, model, family, domain, fraction (int), seed (int),
        primary (the primary metric named by ``metrics.json``), score_metric (the metric copied
        into ``score``), measure, value (float). One row with measure ``"score"`` per grid point
        plus one per other top-level numeric metric (so NER keeps both ``f1`` and
        ``f1_conlleval``).
    """
    score_key = _check_entity_f1(entity_f1)
    rows: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        where = f"downstream record {i}"
        missing = [k for k in ("task", "model", "fraction", "seed") if k not in record]
        if missing:
            raise FinescopeError(f"{where}: missing keys {missing}; got {sorted(record)}.")
        metrics = record.get("metrics")
        if metrics is None:
            continue
        if isinstance(metrics, (str, Path)):
            where = str(metrics)
            metrics = read_json(metrics)
        if not isinstance(metrics, Mapping):
            raise FinescopeError(
                f"{where}: metrics must be a dict (metrics.json), got {metrics!r}."
            )
        score = metrics.get("score")
        if not _is_number(score):
            raise FinescopeError(
                f"{where}: metrics has no numeric 'score' (the downstream score); "
                "re-run the fine-tuning job of this grid point."
            )
        primary = str(metrics.get("primary") or "score")
        score_metric = primary
        if _is_ner(metrics) and score_key != "f1":
            if not _is_number(metrics.get(score_key)):
                raise FinescopeError(
                    f"{where}: analysis.entity_f1 = {entity_f1!r} needs {score_key!r} in "
                    "metrics.json, which this NER run lacks; re-run its fine-tuning job or set "
                    "analysis.entity_f1: strict."
                )
            score, score_metric = metrics[score_key], score_key
        fraction = normalize_fraction(record["fraction"], where)
        if fraction == RANDOM:
            raise FinescopeError(f"{where}: the random baseline has no downstream score.")
        model = str(record["model"])
        base = {
            "task": str(record["task"]),
            "model": model,
            "family": _meta_field(model_meta, model, "family"),
            "domain": _meta_field(model_meta, model, "domain"),
            "fraction": int(float(fraction)),
            "seed": int(record["seed"]),
            "primary": primary,
            "score_metric": score_metric,
        }
        rows.append({**base, "measure": "score", "value": float(score)})
        for key in sorted(metrics):
            # Grid keys are columns already; timings differ between identical runs.
            timing = key.endswith(("_seconds", "per_second"))
            if key != "score" and key not in base and not timing and _is_number(metrics[key]):
                rows.append({**base, "measure": str(key), "value": float(metrics[key])})
    frame = pd.DataFrame(rows, columns=DOWNSTREAM_COLUMNS)
    return frame.astype({"fraction": "int64", "seed": "int64", "value": "float64"})


def _reselect_score(downstream: pd.DataFrame, entity_f1: str) -> pd.DataFrame:
    """Copy the requested NER entity F1 into ``score`` for grid points that have both F1s."""
    key = _check_entity_f1(entity_f1)
    point = GRID
    have = downstream[downstream["measure"].isin(["f1", "f1_conlleval"])]
    ner = have.groupby(point)["measure"].nunique()
    ner = ner[ner == 2].index
    if key != "f1" and have.groupby(point).ngroups > len(ner):
        raise FinescopeError(
            "analysis.entity_f1 = 'conlleval' but some NER results have no 'f1_conlleval'; "
            "re-run their fine-tuning jobs or set analysis.entity_f1: strict."
        )
    if len(ner) == 0:
        return downstream
    out = downstream.copy()
    keys = pd.MultiIndex.from_frame(out[point])
    is_ner = keys.isin(ner)
    chosen = out[is_ner & (out["measure"] == key)].set_index(point)["value"]
    score_rows = is_ner & (out["measure"] == "score")
    out.loc[score_rows, "value"] = chosen.reindex(
        pd.MultiIndex.from_frame(out.loc[score_rows, point])
    ).to_numpy()
    out.loc[is_ner, "score_metric"] = key
    return out


def downstream_table(
    downstream: pd.DataFrame | Iterable[Mapping[str, Any]],
    *,
    entity_f1: str | None = None,
) -> pd.DataFrame:
    """Wide table: the correlated score and every other metric per grid point.

    Parameters
    ----------
    downstream
        Output of :func:`collect_downstream` (or the records it takes).
    entity_f1
        ``"strict"`` | ``"conlleval"``: which NER entity F1 is the ``score`` (see
        :func:`collect_downstream`); ``None`` keeps the choice already made (records are then
        collected with ``"strict"``).

    Returns
    -------
    pandas.DataFrame
        Columns task, model, family, domain, fraction, seed, primary, score_metric (the metric
        copied into ``score``), score, then the other metrics in alphabetical order (NER: both
        ``f1`` and ``f1_conlleval``; NaN where a task has no such metric); one row per grid
        point, sorted by task, model, fraction, seed.
    """
    if not isinstance(downstream, pd.DataFrame):
        downstream = collect_downstream(
            downstream, entity_f1=entity_f1 or AnalysisSettings.entity_f1
        )
    elif entity_f1 is not None and not downstream.empty:
        downstream = _reselect_score(downstream, entity_f1)
    index = ["task", "model", "family", "domain", "fraction", "seed", "primary", "score_metric"]
    if "score_metric" not in downstream.columns:
        downstream = downstream.assign(score_metric=downstream.get("primary", "score"))
    if downstream.empty:
        return pd.DataFrame(columns=[*index, "score"])
    wide = downstream.pivot_table(index=index, columns="measure", values="value", aggfunc="mean")
    others = sorted(c for c in wide.columns if c != "score")
    wide = wide.reset_index()
    wide.columns.name = None
    wide = wide[[*index, "score", *others]]
    return wide.sort_values(GRID, kind="stable").reset_index(drop=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
