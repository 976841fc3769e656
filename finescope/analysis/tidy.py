"""The tidy table: every measure of every grid point, one row per value."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finescope import io
from finescope.analysis.downstream import _meta_field, collect_downstream, downstream_table
from finescope.analysis.grid import _normalize_head, fraction_sort_key, normalize_fraction
from finescope.analysis.settings import (
    CHANGE_COLUMNS,
    GRID,
    PROBING_COLUMNS,
    SOURCES,
    TIDY_COLUMNS,
)
from finescope.errors import FinescopeError
from finescope.io import write_csv
from finescope.settings.analysis import AnalysisSettings


def read_tables(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Concatenate long-form CSV files (probing or change results) into one frame.

    Parameters
    ----------
    paths
        CSV files with a header row; empty files (header only) are allowed.

    Returns
    -------
    pandas.DataFrame
        All rows, columns as in the files; ``head`` and ``fraction`` are read as text.
    """
    frames = [pd.read_csv(p, dtype={"fraction": str, "head": str, "probe": str}) for p in paths]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _as_frame(
    table: pd.DataFrame | Sequence[str | Path | pd.DataFrame] | None, columns: list[str]
) -> pd.DataFrame:
    if table is None:
        return pd.DataFrame(columns=columns)
    if isinstance(table, pd.DataFrame):
        return table
    frames = [t if isinstance(t, pd.DataFrame) else read_tables([t]) for t in table]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _check_columns(frame: pd.DataFrame, columns: list[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FinescopeError(
            f"{name} table: missing columns {missing} (has {list(frame.columns)}); "
            f"expected {columns}. Re-run the {name} stage."
        )


def tidy_measures(
    downstream: pd.DataFrame | Iterable[Mapping[str, Any]] | None,
    probing: pd.DataFrame | Sequence[str | Path | pd.DataFrame] | None,
    change: pd.DataFrame | Sequence[str | Path | pd.DataFrame] | None,
    model_meta: Mapping[str, Mapping[str, Any]] | None,
    *,
    entity_f1: str = AnalysisSettings.entity_f1,
) -> pd.DataFrame:
    """One long table with every downstream, probing and change measure.

    Parameters
    ----------
    downstream
        Output of :func:`collect_downstream`, or its records.
    probing
        Long probing rows (columns ``PROBING_COLUMNS``), or a list of CSV paths / frames.
    change
        Long change rows (columns ``CHANGE_COLUMNS``), or a list of CSV paths / frames.
    model_meta
        ``{model: {"family", "domain", "n_layers" (optional), "revision" (optional)}}``.
        ``n_layers`` counts the embeddings as layer 0; when absent it is the deepest layer
        seen for the model + 1.
    entity_f1
        Passed to :func:`collect_downstream` when ``downstream`` holds records.

    Returns
    -------
    pandas.DataFrame
        Columns ``TIDY_COLUMNS``: task, model, family, domain, model_revision (str: the
        model's hub commit or package version, "unknown" for a local folder), fraction (str,
        see module doc), seed (Int64), layer (Int64, NA for downstream), relative_depth (float,
        ``layer / (n_layers - 1)``), head (str: "all" or a head index; NA outside change),
        source ("downstream" | "probing" | "change"), probe (str, NA outside probing),
        measure (str), value (float). Sorted deterministically.
    """
    model_meta = model_meta or {}
    parts: list[pd.DataFrame] = []

    if downstream is not None:
        ds = (
            downstream
            if isinstance(downstream, pd.DataFrame)
            else collect_downstream(downstream, model_meta, entity_f1=entity_f1)
        )
        if not ds.empty:
            _check_columns(ds, [*GRID, "measure", "value"], "downstream")
            parts.append(
                pd.DataFrame(
                    {
                        "task": ds["task"].astype(str),
                        "model": ds["model"].astype(str),
                        "fraction": ds["fraction"],
                        "seed": ds["seed"],
                        "layer": pd.NA,
                        "head": None,
                        "source": "downstream",
                        "probe": None,
                        "measure": ds["measure"].astype(str),
                        "value": ds["value"],
                    }
                )
            )

    prob = _as_frame(probing, PROBING_COLUMNS)
    if not prob.empty:
        _check_columns(prob, PROBING_COLUMNS, "probing")
        parts.append(prob[PROBING_COLUMNS].assign(head=None, source="probing"))

    chg = _as_frame(change, CHANGE_COLUMNS)
    if not chg.empty:
        _check_columns(chg, CHANGE_COLUMNS, "change")
        chg = chg[CHANGE_COLUMNS].copy()
        chg["head"] = [_normalize_head(h) for h in chg["head"]]
        parts.append(chg.assign(probe=None, source="change"))

    if not parts:
        return _empty_tidy()
    cols = [
        "task",
        "model",
        "fraction",
        "seed",
        "layer",
        "head",
        "source",
        "probe",
        "measure",
        "value",
    ]
    tidy = pd.concat([p[cols] for p in parts], ignore_index=True)
    tidy["task"] = tidy["task"].astype(str)
    tidy["model"] = tidy["model"].astype(str)
    tidy["fraction"] = [normalize_fraction(f, "tidy table") for f in tidy["fraction"]]
    tidy["seed"] = pd.to_numeric(tidy["seed"], errors="raise").astype("Int64")
    tidy["layer"] = pd.to_numeric(tidy["layer"], errors="raise").astype("Int64")
    tidy["value"] = pd.to_numeric(tidy["value"], errors="coerce").astype("float64")
    # None becomes a missing value under the str dtype.
    tidy["head"] = tidy["head"].astype("str")
    tidy["probe"] = tidy["probe"].astype("str")
    tidy["measure"] = tidy["measure"].astype(str)
    tidy["source"] = tidy["source"].astype(str)
    tidy["family"] = [_meta_field(model_meta, m, "family") for m in tidy["model"]]
    tidy["domain"] = [_meta_field(model_meta, m, "domain") for m in tidy["model"]]
    # The hub commit (or package version) that resources/models/<model>.json records.
    tidy["model_revision"] = [_meta_field(model_meta, m, "revision") for m in tidy["model"]]

    n_layers = _n_layers(tidy, model_meta)
    denom = tidy["model"].map(n_layers).astype("float64") - 1.0
    layer = tidy["layer"].astype("float64")
    depth = np.where(denom > 0, layer / denom.where(denom > 0, 1.0), 0.0)
    tidy["relative_depth"] = np.where(layer.isna(), np.nan, depth)

    order = pd.DataFrame(
        {
            "fk": [fraction_sort_key(f) for f in tidy["fraction"]],
            "src": tidy["source"].map({s: i for i, s in enumerate(SOURCES)}),
        }
    )
    tidy["_fk0"] = [k[0] for k in order["fk"]]
    tidy["_fk1"] = [k[1] for k in order["fk"]]
    tidy["_src"] = order["src"].to_numpy()
    tidy["_head"] = [-1 if (isinstance(h, float) or h == "all") else int(h) for h in tidy["head"]]
    tidy = tidy.sort_values(
        ["task", "model", "_src", "probe", "measure", "_fk0", "_fk1", "seed", "layer", "_head"],
        kind="stable",
        na_position="first",
    )
    return tidy[TIDY_COLUMNS].reset_index(drop=True)


def _empty_tidy() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="str") for c in TIDY_COLUMNS})
    return frame.astype(
        {"seed": "Int64", "layer": "Int64", "relative_depth": "float64", "value": "float64"}
    )


def _n_layers(tidy: pd.DataFrame, model_meta: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    seen = tidy.dropna(subset=["layer"]).groupby("model")["layer"].max()
    result: dict[str, int] = {}
    for model in tidy["model"].unique():
        from_data = int(seen[model]) + 1 if model in seen.index else 1
        declared = ((model_meta.get(model) or {}).get("n_layers")) if model_meta else None
        if declared is None:
            result[model] = from_data
            continue
        declared = int(declared)
        if from_data > declared:
            raise FinescopeError(
                f"models.{model}.n_layers = {declared} but the results hold layer "
                f"{from_data - 1}; n_layers counts embeddings + blocks. Fix the config or "
                "remove the key to take it from the data."
            )
        result[model] = declared
    return result


def tables_job(
    metrics_paths: list[str],
    points: list[dict],
    probe_paths: list[str],
    change_paths: list[str],
    facts_paths: list[str],
    models: list[str],
    model_meta: dict,
    entity_f1: str,
    outputs: dict,
) -> None:
    """Collect every job's numbers into the tidy tables of the run; ``points[i]`` is the grid
    point of ``metrics_paths[i]`` and ``facts_paths[i]`` the facts file of ``models[i]`` (its
    layer count and the revision, hub commit, that was loaded)."""
    meta = {name: dict(m) for name, m in model_meta.items()}
    for name, facts_path in zip(models, facts_paths, strict=True):
        facts = io.read_json(facts_path)
        meta[name].update(revision=facts.get("revision"), n_layers=facts["n_layers"])
    records = [
        {**point, "metrics": io.read_json(p)}
        for p, point in zip(metrics_paths, points, strict=True)
    ]
    downstream = collect_downstream(records, meta, entity_f1=entity_f1)
    probing = read_tables(probe_paths)
    change = read_tables(change_paths)
    tidy = tidy_measures(downstream, probing, change, meta)
    write_csv(downstream_table(downstream), outputs["downstream"])
    write_csv(probing, outputs["probing"])
    write_csv(change, outputs["change"])
    is_attention = change["measure"].astype(str).str.startswith("attention") if len(change) else []
    write_csv(change[is_attention] if len(change) else change, outputs["attention"])
    write_csv(tidy, outputs["measures"])
    with io.atomic_path(outputs["parquet"]) as tmp:
        tidy.to_parquet(tmp, index=False)
