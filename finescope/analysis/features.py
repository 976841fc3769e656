"""Features per grid point: one value per measure and layer, and depth-binned pools."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from finescope.analysis.grid import _normalize_head, normalize_fraction
from finescope.analysis.settings import (
    AGGREGATES,
    CHANGE_DIRECTION,
    DEPTH_BINS,
    DEV_PREFIX,
    FEATURE_COLUMNS,
    GRID,
    LOWER_IS_BETTER,
    NOT_CORRELATED,
    RANDOM,
    TIDY_COLUMNS,
)
from finescope.analysis.tidy import _check_columns, _empty_tidy


def normalize_tidy(tidy: pd.DataFrame | None) -> pd.DataFrame:
    """Bring a tidy table read back from parquet or CSV to the dtypes of :func:`tidy_measures`.

    CSV loses the text form of fractions and heads (``"10"`` is read as 10); this restores
    them, so every function here accepts a table from either file.

    Parameters
    ----------
    tidy
        A table with columns ``TIDY_COLUMNS`` (or None).

    Returns
    -------
    pandas.DataFrame
        A copy with canonical fraction and head strings, Int64 seed and layer, float values.
    """
    if tidy is None or tidy.empty:
        return _empty_tidy()
    if "model_revision" not in tidy:  # tables written before the column existed
        tidy = tidy.assign(model_revision="unknown")
    _check_columns(tidy, TIDY_COLUMNS, "measures")
    out = tidy[TIDY_COLUMNS].copy()
    fractions = {v: normalize_fraction(v, "measures table") for v in out["fraction"].unique()}
    out["fraction"] = out["fraction"].map(fractions).astype("str")
    heads = {v: _normalize_head(v) for v in out["head"].dropna().unique()}
    out["head"] = out["head"].map(heads).astype("str")
    out.loc[(out["source"] == "change") & out["head"].isna(), "head"] = "all"
    for col in (
        "task",
        "model",
        "family",
        "domain",
        "model_revision",
        "source",
        "probe",
        "measure",
    ):
        out[col] = out[col].astype("str")
    out["seed"] = pd.to_numeric(out["seed"]).astype("Int64")
    out["layer"] = pd.to_numeric(out["layer"]).astype("Int64")
    out["relative_depth"] = pd.to_numeric(out["relative_depth"]).astype("float64")
    out["value"] = pd.to_numeric(out["value"], errors="coerce").astype("float64")
    return out


def _pick_layer(rows: pd.DataFrame, key: pd.Series, group: list[str]) -> pd.DataFrame:
    """Row of each group where ``key`` is largest; ties go to the shallowest layer.

    ``rows`` is sorted by layer within each group, and idxmax returns the first maximum.
    """
    ok = key.notna()
    rows, key = rows[ok], key[ok]
    if rows.empty:
        return rows
    return rows.loc[key.groupby([rows[c] for c in group], dropna=False, sort=False).idxmax()]


def feature_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """Every internal measure per fine-tuned grid point, next to its downstream score.

    Probing rows and change rows of fine-tuned grid points (fraction > 0, random baseline
    excluded) are joined with the downstream score of the same grid point. Change measures use
    the ``head == "all"`` row; where a (grid point, layer, measure) has only per-head rows their
    mean is used. Besides one feature per layer, the aggregates over layers of ``AGGREGATES``
    are added per grid point (see the module doc). ``dev_*`` and ``chosen_C`` rows become no
    feature; the dev rows only choose ``best_layer``.

    Parameters
    ----------
    tidy
        Output of :func:`tidy_measures`.

    Returns
    -------
    pandas.DataFrame
        Columns ``FEATURE_COLUMNS``: task, model, fraction (float percent), seed, family, domain,
        measure_source ("probing" | "change"), probe (NA for change), measure, layer (str: the
        layer index or an aggregate name), relative_depth (of the layer; NA for aggregates),
        x (the measure's value), score (the downstream score).
    """
    empty = pd.DataFrame(columns=FEATURE_COLUMNS)
    tidy = normalize_tidy(tidy)
    if tidy.empty:
        return empty
    tidy = tidy[tidy["fraction"] != RANDOM]
    down = tidy[(tidy["source"] == "downstream") & (tidy["measure"] == "score")]
    if down.empty:
        return empty
    down = down.assign(fraction=down["fraction"].astype(float))
    scores = down.groupby(GRID, dropna=False)["value"].mean().rename("score").reset_index()
    meta = down.drop_duplicates("model").set_index("model")[["family", "domain"]]

    keys = [*GRID, "layer", "relative_depth", "measure"]
    prob = tidy[tidy["source"] == "probing"]
    prob = prob.assign(measure_source="probing")[[*keys, "probe", "measure_source", "value"]]

    chg = tidy[tidy["source"] == "change"]
    whole = chg[chg["head"] == "all"]
    heads = chg[chg["head"] != "all"]
    if not heads.empty:
        head_mean = heads.groupby(keys, dropna=False)["value"].mean().reset_index()
        have = whole[keys].drop_duplicates().assign(_have=True)
        head_mean = head_mean.merge(have, on=keys, how="left")
        head_mean = head_mean[head_mean["_have"].isna()].drop(columns="_have")
        whole = pd.concat([whole[[*keys, "value"]], head_mean], ignore_index=True)
    chg = whole[[*keys, "value"]].assign(probe=np.nan, measure_source="change")

    layers = pd.concat([prob, chg], ignore_index=True)
    if layers.empty:
        return empty
    layers = layers.rename(columns={"value": "x"}).dropna(subset=["x"])
    layers["fraction"] = layers["fraction"].astype(float)
    layers["layer"] = layers["layer"].astype("int64")
    layers["probe"] = layers["probe"].astype("str").where(layers["probe"].notna(), np.nan)
    # Keep only grid points that have a score: the others cannot be correlated.
    layers = layers.merge(scores[GRID], on=GRID, how="inner")
    if layers.empty:
        return empty
    layers = layers.sort_values(
        [*GRID, "measure_source", "probe", "measure", "layer"], kind="stable"
    ).reset_index(drop=True)

    is_dev = (layers["measure_source"] == "probing") & layers["measure"].str.startswith(DEV_PREFIX)
    dev = layers[is_dev]
    layers = layers[~is_dev & ~layers["measure"].isin(NOT_CORRELATED)].reset_index(drop=True)
    if layers.empty:
        return empty

    group = [*GRID, "measure_source", "probe", "measure"]
    g = layers.groupby(group, dropna=False, sort=False)
    mean = g["x"].mean().rename("x").reset_index().assign(layer="mean")
    last = layers.loc[g["layer"].idxmax()].assign(layer="last")
    parts = [mean, last]

    # best_layer: chosen on probe-dev, reported on test.
    if not dev.empty:
        dev = dev.assign(measure=dev["measure"].str.slice(len(DEV_PREFIX)))
        on = [*group, "layer"]
        paired = layers[layers["measure_source"] == "probing"].merge(
            dev[[*on, "x"]].rename(columns={"x": "dev"}), on=on, how="inner"
        )
        paired = paired.sort_values([*group, "layer"], kind="stable").reset_index(drop=True)
        sign = np.where(paired["measure"].isin(LOWER_IS_BETTER), -1.0, 1.0)
        best = _pick_layer(paired, paired["dev"] * sign, group).drop(columns="dev")
        parts += [
            best.assign(layer="best_layer"),
            best.assign(layer="best_layer_depth", x=best["relative_depth"]),
        ]

    # most_changed: the layer moved furthest from the pre-trained model, per measure.
    change = layers[layers["measure"].isin(CHANGE_DIRECTION.keys())]
    change = change[change["measure_source"] == "change"]
    if not change.empty:
        direction = change["measure"].map(CHANGE_DIRECTION)
        key = np.select(
            [direction == "min", direction == "max"],
            [-change["x"], change["x"]],
            default=change["x"].abs(),
        )
        moved = _pick_layer(change, pd.Series(key, index=change.index), group)
        parts += [
            moved.assign(layer="most_changed"),
            moved.assign(layer="most_changed_depth", x=moved["relative_depth"]),
        ]
    aggregates = pd.concat(parts, ignore_index=True)
    aggregates["relative_depth"] = np.nan

    per_layer = layers.assign(layer=layers["layer"].astype(str))
    features = pd.concat([per_layer, aggregates], ignore_index=True)
    features = features.merge(scores, on=GRID, how="inner")
    features["family"] = features["model"].map(meta["family"])
    features["domain"] = features["model"].map(meta["domain"])
    features["seed"] = features["seed"].astype("int64")
    return features[FEATURE_COLUMNS].reset_index(drop=True)


def depth_bin(relative_depth: np.ndarray | Sequence[float], bins: int) -> np.ndarray:
    """Index of the relative-depth bin of each layer: ``[0, 1/bins), ..., [1 - 1/bins, 1]``.

    Parameters
    ----------
    relative_depth
        Values in [0, 1].
    bins
        Number of equal-width bins (``analysis.depth_bins``).

    Returns
    -------
    numpy.ndarray
        Integers in ``0 .. bins - 1``.
    """
    depth = np.asarray(relative_depth, dtype=float)
    return np.clip(np.floor(depth * bins), 0, bins - 1).astype(np.int64)


def depth_bin_centres(bins: int) -> np.ndarray:
    """Centre of each relative-depth bin, ``(k + 0.5) / bins``."""
    return (np.arange(bins) + 0.5) / bins


def pooled_features(features: pd.DataFrame, depth_bins: int = DEPTH_BINS) -> pd.DataFrame:
    """Features comparable across models: per-layer measures averaged within depth bins.

    Parameters
    ----------
    features
        Output of :func:`feature_table`.
    depth_bins
        Number of equal-width relative-depth bins.

    Returns
    -------
    pandas.DataFrame
        Columns of ``features`` plus ``depth``: per-layer rows become one row per grid point,
        measure and depth bin (x = mean over the model's layers in the bin, ``layer`` NA,
        ``depth`` = bin centre); aggregates are kept with ``depth`` NA.
    """
    is_agg = features["layer"].isin(AGGREGATES)
    per_layer = features[~is_agg]
    aggregates = features[is_agg].assign(depth=np.nan)
    if per_layer.empty:
        return aggregates.reset_index(drop=True)
    k = depth_bin(per_layer["relative_depth"].to_numpy(float), int(depth_bins))
    per_layer = per_layer.assign(depth=depth_bin_centres(int(depth_bins))[k])
    keys = [*GRID, "family", "domain", "measure_source", "probe", "measure", "depth"]
    binned = (
        per_layer.groupby(keys, dropna=False, sort=False)
        .agg(x=("x", "mean"), score=("score", "first"))
        .reset_index()
        .assign(layer=np.nan, relative_depth=np.nan)
    )
    return pd.concat([binned[aggregates.columns], aggregates], ignore_index=True)
