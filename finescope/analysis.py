"""Tidy every measure of the study into one long table and correlate the downstream score with
what the layers encode (probe scores) and how far fine-tuning moved them (change measures).

Vocabulary
----------
grid point
    One (task, model, fraction, seed). Only fine-tuned grid points (fraction > 0) have a
    downstream score, so only they enter the correlations.
fraction
    In the tidy table ``fraction`` is a string: the percent of training data as a decimal
    integer ("0" = pre-trained, "10", ..., "100") or ``"random"`` for the random-weights
    baseline. It is a string because the baseline shares the column with the numbers and a
    mixed column cannot be written to parquet. The downstream tables keep integer fractions
    (they never hold the baseline). The baseline stays in the tidy table and the figures and is
    left out of every correlation.
feature
    One internal measure at one layer, or one aggregate over layers per grid point:
    ``best`` (the best layer's value: maximum, or minimum for measures in ``LOWER_IS_BETTER``),
    ``mean`` (mean over layers), ``last`` (value at the deepest layer) and ``best_depth``
    (relative depth of the best layer, 0 = embeddings, 1 = last layer).

Correlation scopes
------------------
``across``
    All grid points of a task pooled (every model x fraction x seed); ``model == "all"``.
``seeds_averaged``
    As ``across`` after averaging score and measure over seeds per (model, fraction).
``within_model``
    One model at a time, its grid points across fractions and seeds.
``partial``
    All grid points, controlling for fraction. Spearman: both variables and the fraction are
    ranked (average ranks for ties), the ranks of the score and of the measure are each
    regressed by least squares on the fraction ranks (with intercept), and the Pearson
    correlation of the two residual series is reported. Pearson: the same on raw values.
    p-values use a t distribution with n - 3 degrees of freedom (one covariate). Kendall has no
    standard partial form with a p-value and is not reported for this scope.

p-values: Pearson and Kendall from scipy.stats (Kendall exact for small samples without ties).
Spearman from scipy.stats (t approximation) for n > 8; for n <= 8 (``EXACT_MAX_N``) Spearman and
partial p-values are exact permutation p-values over all n! pairings of the two (rank or
residual) series, because the t approximation is far too optimistic for tiny samples.

Bootstrap confidence intervals resample grid points with replacement (``n_boot`` resamples,
percentile interval); each resample is held as the count of every grid point in it, and every
coefficient is computed for all resamples at once from those counts (weighted moments, ranks by
cumulative counts, Kendall's tau from pairwise sign matrices). Each test draws from its own
generator seeded by ``(seed, crc32(test label))``, so an interval does not depend on which other
tests ran. q-values are Benjamini-Hochberg adjusted over all tests of one task (all scopes,
models, measures, layers and methods).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from finescope.errors import FinescopeError
from finescope.io import read_json

RANDOM = "random"
SOURCES = ("downstream", "probing", "change")
SCOPES = ("across", "seeds_averaged", "within_model", "partial")
METHODS = ("spearman", "pearson", "kendall")
PARTIAL_METHODS = ("spearman", "pearson")
AGGREGATES = ("best", "mean", "last", "best_depth")
# Measures where a smaller value means the layer encodes more (MDL code length in bits).
LOWER_IS_BETTER = frozenset({"codelength"})

GRID = ["task", "model", "fraction", "seed"]
FEATURE = ["measure_source", "probe", "measure", "layer"]

DOWNSTREAM_COLUMNS = [
    "task",
    "model",
    "family",
    "domain",
    "fraction",
    "seed",
    "primary",
    "measure",
    "value",
]
TIDY_COLUMNS = [
    "task",
    "model",
    "family",
    "domain",
    "fraction",
    "seed",
    "layer",
    "relative_depth",
    "head",
    "source",
    "probe",
    "measure",
    "value",
]
PROBING_COLUMNS = ["task", "model", "fraction", "seed", "layer", "probe", "measure", "value"]
CHANGE_COLUMNS = ["task", "model", "fraction", "seed", "layer", "head", "measure", "value"]
FEATURE_COLUMNS = [*GRID, "family", "domain", *FEATURE, "relative_depth", "x", "score"]
CORRELATION_COLUMNS = [
    "task",
    "scope",
    "model",
    "measure_source",
    "probe",
    "measure",
    "layer",
    "method",
    "coefficient",
    "p_value",
    "ci_low",
    "ci_high",
    "q_value",
    "n",
    "note",
]

# Up to this many points Spearman and partial p-values come from all n! pairings: the
# t approximation is far too optimistic there (n = 4 in perfect agreement gives p = 0, not 1/12).
EXACT_MAX_N = 8

NOTE_FEW = "too few points"
NOTE_CONSTANT = "constant input"
NOTE_CONSTANT_PARTIAL = "constant after controlling for fraction"


# --------------------------------------------------------------------------------------------
# Normalising grid coordinates
# --------------------------------------------------------------------------------------------


def normalize_fraction(value: Any, where: str = "fraction") -> str:
    """Return the canonical string form of a fraction: ``"0"`` .. ``"100"`` or ``"random"``.

    Parameters
    ----------
    value
        An int/float percent, its string form, or ``"random"``.
    where
        Where the value came from, for the error message.

    Returns
    -------
    str
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == RANDOM:
            return RANDOM
        try:
            number = float(text)
        except ValueError:
            number = math.nan
    elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        number = float(value)
    else:
        number = math.nan
    if not math.isfinite(number) or not 0 <= number <= 100:
        raise FinescopeError(
            f"{where}: fraction {value!r} is not a percent in 0..100 or 'random'; "
            "check the grid in config.yaml and the file that produced this row."
        )
    return str(int(number)) if number.is_integer() else f"{number:g}"


def fraction_number(value: Any) -> float:
    """Numeric percent of a fraction (``nan`` for the random baseline)."""
    text = normalize_fraction(value)
    return math.nan if text == RANDOM else float(text)


def fraction_sort_key(value: Any) -> tuple[int, float]:
    """Sort key putting the random baseline first, then fractions in increasing order."""
    text = normalize_fraction(value)
    return (0, 0.0) if text == RANDOM else (1, float(text))


def sorted_fractions(values: Iterable[Any]) -> list[str]:
    """Distinct fractions as canonical strings, random baseline first then increasing."""
    return sorted({normalize_fraction(v) for v in values}, key=fraction_sort_key)


def layer_sort_key(layer: Any) -> tuple[int, float]:
    """Sort key for correlation layers: numeric layers first, then the aggregates in order."""
    text = str(layer)
    if text in AGGREGATES:
        return (1, float(AGGREGATES.index(text)))
    try:
        return (0, float(text))
    except ValueError:
        return (2, 0.0)


def _normalize_head(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "all"
    text = str(value).strip()
    if text.lower() == "all" or text == "":
        return "all"
    try:
        number = float(text)
    except ValueError as exc:
        raise FinescopeError(
            f"change table: head {value!r} is neither 'all' nor an integer head index; "
            "re-run the change stage for this grid point."
        ) from exc
    if not number.is_integer():
        raise FinescopeError(f"change table: head {value!r} is not an integer head index.")
    return str(int(number))


# --------------------------------------------------------------------------------------------
# Downstream scores
# --------------------------------------------------------------------------------------------


def _meta_field(model_meta: Mapping[str, Any] | None, model: str, key: str) -> str:
    info = (model_meta or {}).get(model) or {}
    value = info.get(key)
    return str(value) if value not in (None, "") else "unknown"


def collect_downstream(
    records: Iterable[Mapping[str, Any]],
    model_meta: Mapping[str, Mapping[str, Any]] | None = None,
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

    Returns
    -------
    pandas.DataFrame
        Columns ``DOWNSTREAM_COLUMNS``: task, model, family, domain, fraction (int), seed (int),
        primary (name of the primary metric), measure, value (float). One row with measure
        ``"score"`` per grid point plus one per other top-level numeric metric.
    """
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
            "primary": str(metrics.get("primary") or "score"),
        }
        rows.append({**base, "measure": "score", "value": float(score)})
        for key in sorted(metrics):
            # Grid keys are columns already; timings differ between identical runs.
            timing = key.endswith(("_seconds", "per_second"))
            if key != "score" and key not in base and not timing and _is_number(metrics[key]):
                rows.append({**base, "measure": str(key), "value": float(metrics[key])})
    frame = pd.DataFrame(rows, columns=DOWNSTREAM_COLUMNS)
    return frame.astype({"fraction": "int64", "seed": "int64", "value": "float64"})


def downstream_table(downstream: pd.DataFrame | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Wide table: the primary score and every other metric per grid point.

    Parameters
    ----------
    downstream
        Output of :func:`collect_downstream` (or the records it takes).

    Returns
    -------
    pandas.DataFrame
        Columns task, model, family, domain, fraction, seed, primary, score, then the other
        metrics in alphabetical order (NaN where a task has no such metric); one row per grid
        point, sorted by task, model, fraction, seed.
    """
    if not isinstance(downstream, pd.DataFrame):
        downstream = collect_downstream(downstream)
    index = ["task", "model", "family", "domain", "fraction", "seed", "primary"]
    if downstream.empty:
        return pd.DataFrame(columns=[*index, "score"])
    wide = downstream.pivot_table(index=index, columns="measure", values="value", aggfunc="mean")
    others = sorted(c for c in wide.columns if c != "score")
    wide = wide.reset_index()
    wide.columns.name = None
    wide = wide[[*index, "score", *others]]
    return wide.sort_values(["task", "model", "fraction", "seed"], kind="stable").reset_index(
        drop=True
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Tidy table
# --------------------------------------------------------------------------------------------


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
        ``{model: {"family", "domain", "n_layers" (optional)}}``. ``n_layers`` counts the
        embeddings as layer 0; when absent it is the deepest layer seen for the model + 1.

    Returns
    -------
    pandas.DataFrame
        Columns ``TIDY_COLUMNS``: task, model, family, domain (str), fraction (str, see module
        doc), seed (Int64), layer (Int64, NA for downstream), relative_depth (float,
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
            else collect_downstream(downstream, model_meta)
        )
        if not ds.empty:
            _check_columns(
                ds, ["task", "model", "fraction", "seed", "measure", "value"], "downstream"
            )
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


# --------------------------------------------------------------------------------------------
# Features per grid point
# --------------------------------------------------------------------------------------------


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
    _check_columns(tidy, TIDY_COLUMNS, "measures")
    out = tidy[TIDY_COLUMNS].copy()
    fractions = {v: normalize_fraction(v, "measures table") for v in out["fraction"].unique()}
    out["fraction"] = out["fraction"].map(fractions).astype("str")
    heads = {v: _normalize_head(v) for v in out["head"].dropna().unique()}
    out["head"] = out["head"].map(heads).astype("str")
    out.loc[(out["source"] == "change") & out["head"].isna(), "head"] = "all"
    for col in ("task", "model", "family", "domain", "source", "probe", "measure"):
        out[col] = out[col].astype("str")
    out["seed"] = pd.to_numeric(out["seed"]).astype("Int64")
    out["layer"] = pd.to_numeric(out["layer"]).astype("Int64")
    out["relative_depth"] = pd.to_numeric(out["relative_depth"]).astype("float64")
    out["value"] = pd.to_numeric(out["value"], errors="coerce").astype("float64")
    return out


def feature_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """Every internal measure per fine-tuned grid point, next to its downstream score.

    Probing rows and change rows of fine-tuned grid points (fraction > 0, random baseline
    excluded) are joined with the downstream score of the same grid point. Change measures use
    the ``head == "all"`` row; where a (grid point, layer, measure) has only per-head rows their
    mean is used. Besides one feature per layer, four aggregates over layers are added per grid
    point (``AGGREGATES``, see the module doc).

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

    group = [*GRID, "measure_source", "probe", "measure"]
    g = layers.groupby(group, dropna=False, sort=False)
    mean = g["x"].mean().rename("x").reset_index().assign(layer="mean")
    last = layers.loc[g["layer"].idxmax()].assign(layer="last")
    signed = layers["x"] * np.where(layers["measure"].isin(LOWER_IS_BETTER), -1.0, 1.0)
    best_rows = layers.loc[signed.groupby([layers[c] for c in group], dropna=False).idxmax()]
    best = best_rows.assign(layer="best")
    best_depth = best_rows.assign(layer="best_depth", x=best_rows["relative_depth"])
    aggregates = pd.concat([best, mean, last, best_depth], ignore_index=True)
    aggregates["relative_depth"] = np.nan

    per_layer = layers.assign(layer=layers["layer"].astype(str))
    features = pd.concat([per_layer, aggregates], ignore_index=True)
    features = features.merge(scores, on=GRID, how="inner")
    features["family"] = features["model"].map(meta["family"])
    features["domain"] = features["model"].map(meta["domain"])
    features["seed"] = features["seed"].astype("int64")
    return features[FEATURE_COLUMNS].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def bh_adjust(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values; NaN p-values stay NaN and are not counted as tests.

    Parameters
    ----------
    p_values
        Shape (m,).

    Returns
    -------
    numpy.ndarray
        Shape (m,), float; ``scipy.stats.false_discovery_control(method="bh")`` over the finite
        entries.
    """
    p = np.asarray(p_values, dtype=float).reshape(-1)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(np.clip(p[ok], 0.0, 1.0), method="bh")
    return q


def _residualize(values: np.ndarray, covariate: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones_like(covariate), covariate])
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    return values - design @ coef


def _is_constant(values: np.ndarray, reference: np.ndarray | None = None) -> bool:
    scale = np.max(np.abs(values if reference is None else reference)) if values.size else 0.0
    return bool(np.std(values) <= 1e-10 * max(scale, 1e-300))


def _t_pvalue(r: float, df: int) -> float:
    if not math.isfinite(r) or df < 1:
        return math.nan
    if abs(r) >= 1.0:
        return 0.0
    t = r * math.sqrt(df / (1.0 - r * r))
    return float(2.0 * stats.t.sf(abs(t), df))


def _partial(
    x: np.ndarray, y: np.ndarray, covariate: np.ndarray, rank: bool
) -> tuple[float, float, str]:
    n = len(x)
    if n < 4:
        return math.nan, math.nan, NOTE_FEW
    if _is_constant(x) or _is_constant(y):
        return math.nan, math.nan, NOTE_CONSTANT
    if rank:
        x, y, covariate = stats.rankdata(x), stats.rankdata(y), stats.rankdata(covariate)
    rx, ry = _residualize(x, covariate), _residualize(y, covariate)
    if _is_constant(rx, x) or _is_constant(ry, y):
        return math.nan, math.nan, NOTE_CONSTANT_PARTIAL
    r = float(np.clip(np.corrcoef(rx, ry)[0, 1], -1.0, 1.0))
    p = _permutation_p(rx, ry, r) if n <= EXACT_MAX_N else _t_pvalue(r, n - 3)
    return r, p, ""


@functools.lru_cache(maxsize=EXACT_MAX_N + 1)
def _permutations(n: int) -> np.ndarray:
    """All n! orderings of range(n): (n!, n)."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.int64)


def _permutation_p(a: np.ndarray, b: np.ndarray, r: float) -> float:
    """Exact two-sided p-value of Pearson ``r`` between a and b over all n! pairings."""
    a = a - a.mean()
    b = b - b.mean()
    scale = np.sqrt((a @ a) * (b @ b))
    if not scale > 0:
        return math.nan
    null = (a[_permutations(len(a))] @ b) / scale
    return float(np.mean(np.abs(null) >= abs(r) - 1e-9))


def partial_spearman(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    covariate: Sequence[float] | np.ndarray,
) -> tuple[float, float]:
    """Spearman correlation of ``x`` and ``y`` controlling for ``covariate``.

    Ranks all three (average ranks for ties), regresses the ranks of ``x`` and of ``y`` on the
    ranks of ``covariate`` (least squares with intercept) and returns the Pearson correlation of
    the residuals, with a two-sided p-value from a t distribution with n - 3 degrees of freedom
    (for n <= ``EXACT_MAX_N``: exact, over all n! pairings of the two residual series).

    Parameters
    ----------
    x, y, covariate
        Shape (n,). Pairs with a non-finite entry are dropped.

    Returns
    -------
    tuple[float, float]
        (rho, p_value); both NaN when fewer than 4 points remain or a variable is constant
        (before or after removing the covariate).
    """
    x, y, z = (np.asarray(a, dtype=float).reshape(-1) for a in (x, y, covariate))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    r, p, _ = _partial(x[ok], y[ok], z[ok], rank=True)
    return r, p


def _point(method: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "spearman":
            res = stats.spearmanr(x, y)
            if len(x) <= EXACT_MAX_N:
                rho = float(res.statistic)
                return rho, _permutation_p(stats.rankdata(x), stats.rankdata(y), rho)
        elif method == "pearson":
            res = stats.pearsonr(x, y)
        elif method == "kendall":
            res = stats.kendalltau(x, y)
        else:
            raise FinescopeError(f"unknown correlation method {method!r}; use {METHODS}.")
    return float(res.statistic), float(res.pvalue)


def _draw_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicity of each of ``n`` points in ``n_boot`` resamples with replacement: (B, n)."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (idx + (np.arange(n_boot) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)


def _weighted_ranks(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Average ranks of each original point inside each resample given by multiplicity counts.

    weights: (B, n) counts; values: (n,). Returns (B, n). Points are grouped by distinct value;
    a group's rank is (copies of smaller values) + (copies in the group + 1) / 2.
    """
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group_of = np.empty(len(values), dtype=np.int64)
    group_of[order] = np.cumsum(new_group) - 1
    counts = np.add.reduceat(weights[:, order], np.flatnonzero(new_group), axis=1)
    below = np.cumsum(counts, axis=1) - counts
    return (below + (counts + 1.0) / 2.0)[:, group_of]


def _centered(weights: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deviations from the resample mean, their weighted sum of squares, and a zero tolerance.

    weights (B, n) with every row summing to n; a (n,) or (B, n). Returns (B, n), (B,), (B,).
    """
    n = weights.shape[1]
    mean = weights @ a / n if a.ndim == 1 else np.einsum("bi,bi->b", weights, a) / n
    dev = a - mean[:, None]
    ss = np.einsum("bi,bi->b", weights * dev, dev)
    # Below this the variable is constant up to rounding in that resample.
    tol = n * (1e-10 * max(float(np.max(np.abs(a))), 1e-300)) ** 2
    return dev, ss, np.full(ss.shape, tol)


def _corr_of(
    weights: np.ndarray,
    a: tuple[np.ndarray, np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> np.ndarray:
    cov = np.einsum("bi,bi->b", weights * a[0], b[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        r = cov / np.sqrt(a[1] * b[1])
    r[(a[1] <= a[2]) | (b[1] <= b[2])] = np.nan
    return np.clip(r, -1.0, 1.0)


def _weighted_corr(weights: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation inside each resample. weights (B, n); a, b (n,) or (B, n)."""
    return _corr_of(weights, _centered(weights, a), _centered(weights, b))


def _weighted_kendall(weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall tau-b inside each resample, from the pairwise sign matrices (B, n) -> (B,)."""
    sx = np.sign(x[:, None] - x[None, :])
    sy = np.sign(y[:, None] - y[None, :])
    # Copies of one point are tied in both variables, so they add to no count (sign 0).
    s = ((weights @ (sx * sy)) * weights).sum(axis=1) / 2.0
    tx = ((weights @ np.abs(sx)) * weights).sum(axis=1) / 2.0
    ty = ((weights @ np.abs(sy)) * weights).sum(axis=1) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = s / np.sqrt(tx * ty)
    tau[(tx <= 0) | (ty <= 0)] = np.nan
    return np.clip(tau, -1.0, 1.0)


def _weighted_partial(
    weights: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> np.ndarray:
    cx, cy, cz = (_centered(weights, v) for v in (x, y, z))
    rxy = _corr_of(weights, cx, cy)
    # A resample with one fraction only: controlling for it changes nothing.
    z_const = cz[1] <= cz[2]
    rxz = np.where(z_const, 0.0, _corr_of(weights, cx, cz))
    ryz = np.where(z_const, 0.0, _corr_of(weights, cy, cz))
    den = np.sqrt((1.0 - rxz**2) * (1.0 - ryz**2))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (rxy - rxz * ryz) / den
    r[~(den > 1e-6)] = np.nan
    return np.clip(r, -1.0, 1.0)


def bootstrap_coefficients(
    x: np.ndarray,
    y: np.ndarray,
    method: str,
    n_boot: int,
    rng: np.random.Generator,
    covariate: np.ndarray | None = None,
) -> np.ndarray:
    """Coefficient in each of ``n_boot`` resamples of the points (drawn with replacement).

    Parameters
    ----------
    x, y
        Shape (n,).
    method
        "spearman" | "pearson" | "kendall" (kendall not with a covariate).
    n_boot
        Number of resamples.
    rng
        Random generator used to draw the resamples.
    covariate
        Shape (n,). When given, the partial coefficient controlling for it (see module doc).

    Returns
    -------
    numpy.ndarray
        Shape (n_boot,); NaN for resamples where the coefficient is undefined.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(x)
    if n_boot <= 0 or n == 0:
        return np.full(max(n_boot, 0), np.nan)
    weights = _draw_weights(n, n_boot, rng)
    return _coefficients_for(weights, x, y, method, covariate)


def _coefficients_for(
    weights: np.ndarray, x: np.ndarray, y: np.ndarray, method: str, covariate: np.ndarray | None
) -> np.ndarray:
    if covariate is not None:
        if method == "spearman":
            return _weighted_partial(
                weights,
                _weighted_ranks(weights, x),
                _weighted_ranks(weights, y),
                _weighted_ranks(weights, covariate),
            )
        if method == "pearson":
            return _weighted_partial(weights, x, y, np.asarray(covariate, dtype=float))
        raise FinescopeError(f"no partial form for {method!r}; use {PARTIAL_METHODS}.")
    if method == "spearman":
        return _weighted_corr(weights, _weighted_ranks(weights, x), _weighted_ranks(weights, y))
    if method == "pearson":
        return _weighted_corr(weights, x, y)
    if method == "kendall":
        return _weighted_kendall(weights, x, y)
    raise FinescopeError(f"unknown correlation method {method!r}; use {METHODS}.")


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _test_rows(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray | None,
    methods: Sequence[str],
    n_boot: int,
    rng: np.random.Generator,
    ci: float,
) -> list[dict[str, Any]]:
    """All methods for one (x, y) pair; z given means partial on z."""
    ok = np.isfinite(x) & np.isfinite(y)
    if z is not None:
        ok &= np.isfinite(z)
        z = z[ok]
    x, y = x[ok], y[ok]
    n = int(len(x))
    minimum = 4 if z is not None else 3
    if n < minimum:
        note = NOTE_FEW
    elif _is_constant(x) or _is_constant(y):
        note = NOTE_CONSTANT
    else:
        note = ""
    weights = None
    if not note and n_boot > 0:
        weights = _draw_weights(n, n_boot, rng)
    rows = []
    for method in methods:
        coef = p = low = high = math.nan
        row_note = note
        if not note:
            if z is None:
                coef, p = _point(method, x, y)
            else:
                coef, p, row_note = _partial(x, y, z, rank=(method == "spearman"))
            if not row_note and not math.isfinite(coef):
                row_note = "undefined"
            if weights is not None and not row_note:
                # Resamples where the coefficient is undefined (e.g. all copies of one point)
                # are left out of the percentile interval.
                low, high = _interval(_coefficients_for(weights, x, y, method, z), ci)
        rows.append(
            {
                "method": method,
                "coefficient": coef,
                "p_value": p,
                "ci_low": low,
                "ci_high": high,
                "n": n,
                "note": row_note,
            }
        )
    return rows


def _scope_frames(
    features: pd.DataFrame, scopes: Sequence[str]
) -> Iterator[tuple[str, str, pd.DataFrame]]:
    for scope in scopes:
        if scope in ("across", "partial"):
            yield scope, "all", features
        elif scope == "seeds_averaged":
            averaged = (
                features.groupby(["model", "fraction", *FEATURE], dropna=False, sort=False)[
                    ["x", "score"]
                ]
                .mean()
                .reset_index()
            )
            yield scope, "all", averaged
        elif scope == "within_model":
            for model in sorted(features["model"].unique()):
                yield scope, str(model), features[features["model"] == model]
        else:
            raise FinescopeError(f"unknown correlation scope {scope!r}; use {SCOPES}.")


def correlate(
    tidy: pd.DataFrame,
    seed: int = 0,
    n_boot: int = 1000,
    *,
    methods: Sequence[str] = METHODS,
    scopes: Sequence[str] = SCOPES,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Correlate the downstream score with every internal measure, per task.

    Parameters
    ----------
    tidy
        Output of :func:`tidy_measures`.
    seed
        Seeds the bootstrap generators (non-negative int).
    n_boot
        Bootstrap resamples per test (0 disables the intervals).
    methods
        Subset of ``METHODS``; the partial scope uses only those in ``PARTIAL_METHODS``.
    scopes
        Subset of ``SCOPES`` (see the module doc).
    ci
        Confidence level of the percentile interval.

    Returns
    -------
    pandas.DataFrame
        Columns ``CORRELATION_COLUMNS``: task, scope, model ("all" or the model), measure_source
        ("probing" | "change"), probe (NA for change), measure, layer (str: layer index or
        "best" | "mean" | "last" | "best_depth"), method, coefficient, p_value, ci_low, ci_high,
        q_value (BH over all tests of the task), n (points used), note ("" or why the
        coefficient is NaN: "too few points" (n < 3, or n < 4 for partial), "constant input",
        "constant after controlling for fraction", "undefined"). Empty (with these columns)
        when no grid point has both a score and a measure.
    """
    if int(seed) < 0:
        raise FinescopeError(f"analysis seed must be a non-negative integer, got {seed}.")
    for method in methods:
        if method not in METHODS:
            raise FinescopeError(f"unknown correlation method {method!r}; use {METHODS}.")
    features = feature_table(tidy)
    # The matrices are small: BLAS threads only add contention (and stalls on busy machines).
    with _single_threaded_blas():
        return _correlate_features(features, int(seed), n_boot, methods, scopes, ci)


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only a speed-up
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _correlate_features(
    features: pd.DataFrame,
    seed: int,
    n_boot: int,
    methods: Sequence[str],
    scopes: Sequence[str],
    ci: float,
) -> pd.DataFrame:
    out: list[pd.DataFrame] = []
    for task in sorted(features["task"].unique()):
        task_rows: list[dict[str, Any]] = []
        task_features = features[features["task"] == task]
        for scope, model, data in _scope_frames(task_features, scopes):
            scope_methods = (
                [m for m in methods if m in PARTIAL_METHODS] if scope == "partial" else methods
            )
            if not scope_methods:
                continue
            for key, group in data.groupby(FEATURE, dropna=False, sort=False):
                source, probe, measure, layer = key
                probe = None if pd.isna(probe) else str(probe)
                label = "|".join(map(str, (task, scope, model, source, probe, measure, layer)))
                rng = np.random.default_rng([int(seed), zlib.crc32(label.encode())])
                z = group["fraction"].to_numpy(float) if scope == "partial" else None
                for row in _test_rows(
                    group["x"].to_numpy(float),
                    group["score"].to_numpy(float),
                    z,
                    scope_methods,
                    n_boot,
                    rng,
                    ci,
                ):
                    task_rows.append(
                        {
                            "task": task,
                            "scope": scope,
                            "model": model,
                            "measure_source": source,
                            "probe": probe,
                            "measure": measure,
                            "layer": str(layer),
                            **row,
                        }
                    )
        frame = pd.DataFrame(task_rows)
        if frame.empty:
            continue
        frame["q_value"] = bh_adjust(frame["p_value"].to_numpy(float))
        out.append(frame)
    if not out:
        return _empty_correlations()
    result = pd.concat(out, ignore_index=True)
    result["probe"] = result["probe"].astype("str").where(result["probe"].notna(), np.nan)
    result["n"] = result["n"].astype("int64")
    result["_scope"] = result["scope"].map({s: i for i, s in enumerate(SCOPES)})
    result["_layer0"] = [layer_sort_key(v)[0] for v in result["layer"]]
    result["_layer1"] = [layer_sort_key(v)[1] for v in result["layer"]]
    result["_method"] = result["method"].map({m: i for i, m in enumerate(METHODS)})
    result = result.sort_values(
        [
            "task",
            "_scope",
            "model",
            "measure_source",
            "probe",
            "measure",
            "_layer0",
            "_layer1",
            "_method",
        ],
        kind="stable",
        na_position="first",
    )
    return result[CORRELATION_COLUMNS].reset_index(drop=True)


def _empty_correlations() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="str") for c in CORRELATION_COLUMNS})
    floats = ["coefficient", "p_value", "ci_low", "ci_high", "q_value"]
    return frame.astype({**{c: "float64" for c in floats}, "n": "int64"})


# --------------------------------------------------------------------------------------------
# Small summaries shared by the figures and the text summary
# --------------------------------------------------------------------------------------------


def downstream_stats(tidy: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd and count over seeds of the downstream score per task x model x fraction.

    Parameters
    ----------
    tidy
        Output of :func:`tidy_measures`.

    Returns
    -------
    pandas.DataFrame
        Columns task, model, fraction (float percent), mean, sd (NaN with one seed), n.
    """
    tidy = normalize_tidy(tidy)
    down = tidy[(tidy["source"] == "downstream") & (tidy["measure"] == "score")]
    down = down[down["fraction"] != RANDOM]
    if down.empty:
        return pd.DataFrame(columns=["task", "model", "fraction", "mean", "sd", "n"])
    down = down.assign(fraction=down["fraction"].astype(float))
    return (
        down.groupby(["task", "model", "fraction"])["value"]
        .agg(mean="mean", sd="std", n="count")
        .reset_index()
        .sort_values(["task", "model", "fraction"], kind="stable")
        .reset_index(drop=True)
    )


def primary_metric(tidy: pd.DataFrame, task: str) -> str:
    """Name of the metric the downstream ``score`` copies for ``task`` ("score" if unclear)."""
    down = tidy[(tidy["source"] == "downstream") & (tidy["task"] == task)]
    if down.empty:
        return "score"
    wide = down.pivot_table(
        index=["model", "fraction", "seed"], columns="measure", values="value", aggfunc="mean"
    )
    if "score" not in wide.columns:
        return "score"
    for name in sorted(c for c in wide.columns if c != "score"):
        if np.allclose(wide[name], wide["score"], rtol=0, atol=1e-12, equal_nan=True):
            return str(name)
    return "score"


def feature_label(measure_source: str, probe: Any, measure: str) -> str:
    """Human-readable name of a feature, e.g. "mlp probe macro_f1" or "change cka"."""
    if measure_source == "probing" and isinstance(probe, str) and probe:
        return f"{probe} probe {measure}"
    return f"{measure_source} {measure}"
