"""Tidy every measure of the study into one long table and correlate the downstream score with
what the layers encode (probe scores) and how far fine-tuning moved them (change measures).

Vocabulary
----------
grid point
    One (task, model, fraction, seed). Only fine-tuned grid points (fraction > 0) have a
    downstream score, so only they enter the correlations.
cell
    The grid points of one model at one fraction: the seeds are its replicates.
fraction
    In the tidy table ``fraction`` is a string: the percent of training data as a decimal
    integer ("0" = pre-trained, "10", ..., "100") or ``"random"`` for the random-weights
    baseline. It is a string because the baseline shares the column with the numbers and a
    mixed column cannot be written to parquet. The downstream tables keep integer fractions
    (they never hold the baseline). The baseline stays in the tidy table and the figures and is
    left out of every correlation.
feature
    One internal measure at one layer, or one aggregate over layers per grid point
    (``AGGREGATES``):

    ``best_layer`` (probe measures)
        The TEST value at the layer whose probe-DEV score (the ``dev_<measure>`` row of the
        same probe) is best: highest, or lowest for ``LOWER_IS_BETTER`` (code length); ties go
        to the shallower layer. Without dev rows for a measure there is no ``best_layer`` row:
        the layer is never chosen on the test split.
    ``best_layer_depth``
        Relative depth (0 = embeddings, 1 = last layer) of that layer.
    ``most_changed`` (change measures)
        The value at the layer fine-tuning moved most, in the direction of each measure
        (``CHANGE_DIRECTION``): the minimum for similarities (``attention_cosine``, ``cka``,
        ``cka_debiased``), the maximum for ``attention_js``, the largest absolute value for
        ``attention_entropy_change`` (reported with its sign). A change measure with no known
        direction gets no ``most_changed`` row.
    ``most_changed_depth``
        Relative depth of that layer.
    ``mean``, ``last``
        Mean over layers; value at the deepest layer.

    Probe-dev rows (``dev_*``) serve only to pick the best layer, and ``chosen_C`` (the
    regularisation picked on probe-dev) only documents the probe: neither is ever correlated.

Correlation scopes
------------------
Every scope correlates the downstream score y with one feature x over grid points. The amount
of training data drives both (scores and most measures rise with the fraction), so a
correlation over fractions says little about whether x and y go together beyond that. The
tested scopes therefore remove the fraction (and, pooled, the model) by centring both variables
within cells, so that only the differences between seeds of the same model and fraction are
correlated.

``within_model`` (``model`` = the model)
    Unit of replication: a seed at one fraction. Controls: the fraction level, as a factor
    (x and y centred within each fraction level). Per-layer features use the model's raw layer
    index (``layer``) and its relative depth (``depth``).
``pooled`` (``model == "all"``)
    All models of a task. Unit of replication: a seed within a model x fraction cell.
    Controls: model fixed effects and fraction, i.e. the model x fraction cell (x and y centred
    within each cell). Layers of different models are pooled by relative depth only: the
    per-layer measures of a grid point are averaged within ``depth_bins`` equal-width bins of
    relative depth (``[0, 1/k), ..., [(k-1)/k, 1]``); ``depth`` is the bin centre and ``layer``
    is empty (NA), since a layer index means different depths in different models. A model with
    no layer in a bin adds no points to it. Aggregates are pooled as they are.
``raw`` (descriptive, not in the default scopes)
    All grid points of a task, per-layer features on the same depth bins, nothing controlled.
    It mixes the fraction effect with everything else; it gets no q-value, belongs to no BH
    family and is never reported as a finding.

Pearson is the correlation of the values centred within cells. Spearman is Spearman's rho of
those within-cell deviations (average ranks of the deviations over all points of the test, then
their Pearson correlation): an aligned-rank statistic. Ranking the raw values first and centring
the ranks within cells would be invariant to increasing transforms of x and y, but where the
fraction separates the cells (the usual case) it reduces each cell to the order of its few
seeds and discards how far they differ: in simulated grids (4 fractions x 3 seeds, x and y
sharing a within-fraction component with correlation 0.89) it detected the link in 75 % of grids
against 88 % for the aligned ranks (Pearson 92 %), with the same null rejection rate (about 4 %
at the 5 % level, also under heavy-tailed noise). Both are partial correlations given the cell
indicators, and the permutation null below is exact for either.

Grid points of one cell are exchangeable replicates; the same seed number at different
fractions or models is not treated as a link (each grid point is its own cluster within its
cell).

``n`` counts the grid points that enter a test: points with both values, in cells holding at
least two of them (a lone seed has no within-cell deviation and carries no information).
``n_clusters`` counts those cells and ``df = n - n_clusters - 1`` is the residual degrees of
freedom of the correlation after removing the cell means (for ``raw``: ``n - 2``). A test is
``underpowered`` when ``n < min_n`` or ``df < 1``: it keeps its coefficient and permutation
p-value as descriptive numbers but gets no interval and no q-value.

p-values come from a permutation test that shuffles x within cells (across all points for
``raw``), so the null "no association beyond the cell means" holds by construction. All
arrangements are enumerated when there are at most ``EXACT_LIMIT`` (``p = share of arrangements
with |r| >= observed``); otherwise ``n_perm`` arrangements are drawn (``p = (1 + hits) /
(1 + n_perm)``). Confidence intervals are percentile intervals of a stratified cluster bootstrap
that resamples seeds with replacement within each model x fraction cell (``n_boot`` resamples;
resamples where the coefficient is undefined are left out); each resample is held as the count
of every grid point in it and every coefficient is computed for all resamples at once from
those counts. Each test draws from generators seeded by ``(seed, crc32(test label))``, so a
result does not depend on which other tests ran. q-values are Benjamini-Hochberg adjusted within
each family ``<task>/<scope>`` (both methods, all models, measures and layers of the scope) over
its non-underpowered tests.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from finescope import columns
from finescope.errors import FinescopeError
from finescope.io import read_json
from finescope.settings import defaults

RANDOM = "random"
SOURCES = ("downstream", "probing", "change")
SCOPES = ("within_model", "pooled", "raw")
DEFAULT_SCOPES = ("within_model", "pooled")
# Scopes whose tests are inferential: BH families and findings come only from these.
TESTED_SCOPES = ("within_model", "pooled")
METHODS = ("spearman", "pearson")
AGGREGATES = (
    "best_layer",
    "best_layer_depth",
    "most_changed",
    "most_changed_depth",
    "mean",
    "last",
)
# Measures where a smaller value means the layer encodes more (MDL code length in bits).
LOWER_IS_BETTER = frozenset({"codelength"})
DEV_PREFIX = "dev_"
# Probe bookkeeping, never correlated.
NOT_CORRELATED = frozenset({"chosen_C"})
# Which extreme of a change measure marks the layer fine-tuning moved most.
CHANGE_DIRECTION = {
    "attention_cosine": "min",
    "cka": "min",
    "cka_debiased": "min",
    "attention_js": "max",
    "attention_entropy_change": "absmax",
}
_DEFAULTS = defaults("analysis")  # the schema's, their one home
MIN_N = _DEFAULTS["min_n"]
DEPTH_BINS = _DEFAULTS["depth_bins"]
N_BOOT = _DEFAULTS["n_boot"]
N_PERM = 2000
# Up to this many within-cell arrangements the permutation p-value is exact.
EXACT_LIMIT = 10_000

CONTROLS = {
    "within_model": "fraction level (centred)",
    "pooled": "model × fraction cell (centred)",
    "raw": "none",
}
UNITS = {
    "within_model": "seed within fraction level",
    "pooled": "seed within model × fraction cell",
    "raw": "grid point",
}
_CELLS_WORDS = {
    "within_model": "within fraction levels",
    "pooled": "within model × fraction cells",
    "raw": "across all grid points",
}

GRID = columns.GRID
FEATURE = ["measure_source", "probe", "measure", "layer"]

DOWNSTREAM_COLUMNS = [
    "task",
    "model",
    "family",
    "domain",
    "fraction",
    "seed",
    "primary",
    "score_metric",
    "measure",
    "value",
]
ENTITY_F1 = {"strict": "f1", "conlleval": "f1_conlleval"}
TIDY_COLUMNS = [
    "task",
    "model",
    "family",
    "domain",
    "model_revision",
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
# The probe input (features) is a setting of the probe job, not part of a measure's key.
PROBING_COLUMNS = [c for c in columns.PROBING if c != "features"]
CHANGE_COLUMNS = columns.CHANGE
FEATURE_COLUMNS = [*GRID, "family", "domain", *FEATURE, "relative_depth", "x", "score"]
CORRELATION_COLUMNS = [
    "task",
    "scope",
    "family",
    "model",
    "measure_source",
    "probe",
    "measure",
    "layer",
    "depth",
    "method",
    "coefficient",
    "p_value",
    "ci_low",
    "ci_high",
    "q_value",
    "n",
    "n_clusters",
    "df",
    "underpowered",
    "controls",
    "unit",
    "p_method",
    "ci_method",
    "note",
]

NOTE_FEW = "too few points"
NOTE_CONSTANT = "constant input"
NOTE_CONSTANT_CELLS = "constant within cells"
NOTE_NO_REPLICATES = "no cell with 2 or more seeds"


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
    """Sort key for correlation layers: numeric layers (and depth bins, NA) first, then the
    aggregates in order."""
    if layer is None or (isinstance(layer, float) and math.isnan(layer)) or layer is pd.NA:
        return (0, -1.0)
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
    entity_f1: str = _DEFAULTS["entity_f1"],
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
        downstream = collect_downstream(downstream, entity_f1=entity_f1 or _DEFAULTS["entity_f1"])
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
    *,
    entity_f1: str = _DEFAULTS["entity_f1"],
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


def _is_constant(values: np.ndarray, reference: np.ndarray | None = None) -> bool:
    scale = np.max(np.abs(values if reference is None else reference)) if values.size else 0.0
    return bool(np.std(values) <= 1e-10 * max(scale, 1e-300))


class Cells:
    """Cell structure of one test: points sorted so that each cell is a contiguous block.

    Parameters
    ----------
    codes
        Shape (n,): the cell of each point (any hashable labels).

    Attributes
    ----------
    order
        Positions of the points in cell order (apply to x and y before use).
    cell_of
        Shape (n,): the cell index (0 .. n_cells - 1) of each point in cell order.
    sizes, starts
        Points per cell and the first position of each cell.
    """

    def __init__(self, codes: np.ndarray | Sequence[Any]) -> None:
        codes = np.asarray(codes)
        inverse = np.unique(codes, return_inverse=True)[1].reshape(-1) if codes.size else codes
        inverse = inverse.astype(np.int64)
        self.order = np.argsort(inverse, kind="stable")
        self.cell_of = inverse[self.order]
        self.sizes = np.bincount(self.cell_of) if len(inverse) else np.zeros(0, dtype=np.int64)
        self.starts = np.r_[0, np.cumsum(self.sizes)[:-1]] if len(self.sizes) else self.sizes
        self.n = int(len(inverse))
        self.n_cells = int(len(self.sizes))

    def centre(self, a: np.ndarray) -> np.ndarray:
        """Deviation of each point from its cell mean (``a`` in cell order, shape (n,))."""
        means = np.bincount(self.cell_of, weights=a, minlength=self.n_cells) / self.sizes
        return a - means[self.cell_of]

    def arrangements(self) -> float:
        """Number of distinct within-cell permutations, ``prod(size!)``."""
        return float(np.prod([math.factorial(int(m)) for m in self.sizes])) if self.n else 0.0


@functools.lru_cache(maxsize=64)
def _exact_permutations(sizes: tuple[int, ...]) -> np.ndarray:
    """Every within-cell permutation of contiguous cells of these sizes: (prod(size!), n)."""
    out = np.zeros((1, 0), dtype=np.int64)
    start = 0
    for m in sizes:
        block = np.array(list(itertools.permutations(range(start, start + m))), dtype=np.int64)
        out = np.concatenate(
            [np.repeat(out, len(block), axis=0), np.tile(block, (len(out), 1))], axis=1
        )
        start += m
    return out


def _permutations(cells: Cells, n_perm: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Index arrays permuting points within cells, and whether they are all of them."""
    if cells.arrangements() <= EXACT_LIMIT:
        return _exact_permutations(tuple(int(m) for m in cells.sizes)), True
    # Sorting cell index + uniform noise shuffles each contiguous block independently.
    keys = cells.cell_of[None, :] + rng.random((n_perm, cells.n))
    return np.argsort(keys, axis=1), False


def _centred_inputs(x: np.ndarray, y: np.ndarray, cells: Cells, method: str) -> tuple:
    """The two series a test correlates (both with mean 0).

    Pearson: values centred within cells. Spearman: average ranks of those within-cell
    deviations, centred (so their plain Pearson correlation is Spearman's rho of the
    deviations).
    """
    if method not in METHODS:
        raise FinescopeError(f"unknown correlation method {method!r}; use {METHODS}.")
    a, b = cells.centre(x), cells.centre(y)
    if method == "spearman":
        ones = np.ones((1, len(a)))
        a, b = _weighted_ranks(ones, a)[0], _weighted_ranks(ones, b)[0]
        a, b = a - a.mean(), b - b.mean()
    return a, b


def _permutation_p(
    a: np.ndarray, b: np.ndarray, r: float, cells: Cells, n_perm: int, rng: np.random.Generator
) -> tuple[float, bool, int]:
    """Two-sided p of ``r = corr(a, b)`` (centred, cell order) over within-cell permutations.

    Returns (p, exact, arrangements used). Permuting x within a cell leaves its cell mean alone,
    so the centred values can be permuted directly.
    """
    perms, exact = _permutations(cells, n_perm, rng)
    null = (a[perms] @ b) / math.sqrt(float(a @ a) * float(b @ b))
    hits = int(np.count_nonzero(np.abs(null) >= abs(r) - 1e-9))
    p = hits / len(perms) if exact else (1 + hits) / (1 + len(perms))
    return float(min(p, 1.0)), exact, len(perms)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(np.clip((a @ b) / den, -1.0, 1.0)) if den > 0 else math.nan


def permutation_test(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    cells: Sequence[Any] | np.ndarray | None = None,
    method: str = "spearman",
    *,
    n_perm: int = N_PERM,
    rng: np.random.Generator | None = None,
) -> tuple[float, float, bool]:
    """Correlation of the within-cell deviations of x and y, with a within-cell permutation p.

    Parameters
    ----------
    x, y
        Shape (n,), finite.
    cells
        Shape (n,): cell label of each point (e.g. the fraction, or "model|fraction"); None =
        one cell (no control).
    method
        "spearman" (ranks over all points, then centred within cells) or "pearson" (values
        centred within cells).
    n_perm
        Monte Carlo draws when the arrangements exceed ``EXACT_LIMIT``.
    rng
        Generator for the Monte Carlo draws (default ``numpy.random.default_rng(0)``).

    Returns
    -------
    tuple[float, float, bool]
        (coefficient, two-sided p-value, exact). NaN when a centred variable is constant.
    """
    x = np.asarray(x, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    c = Cells(np.zeros(len(x)) if cells is None else np.asarray(cells))
    xs, ys = x[c.order], y[c.order]
    a, b = _centred_inputs(xs, ys, c, method)
    r = _corr(a, b)
    if not math.isfinite(r):
        return math.nan, math.nan, False
    p, exact, _ = _permutation_p(a, b, r, c, n_perm, rng or np.random.default_rng(0))
    return r, p, exact


def _stratified_weights(cells: Cells, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicity of each point in ``n_boot`` resamples drawn with replacement within cells.

    Returns (B, n) counts; every cell keeps its size in every resample.
    """
    n = cells.n
    size = cells.sizes[cells.cell_of]
    start = cells.starts[cells.cell_of]
    idx = start[None, :] + np.floor(rng.random((n_boot, n)) * size[None, :]).astype(np.int64)
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


def _row_ranks(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Average rank of each point among the copies drawn in its resample.

    weights (B, n) counts, values (B, n). Rank of i = (copies with a smaller value) +
    (copies with an equal value + 1) / 2, from one sort per row.
    """
    n = values.shape[1]
    order = np.argsort(values, axis=1, kind="stable")
    v = np.take_along_axis(values, order, axis=1)
    w = np.take_along_axis(weights, order, axis=1)
    cum = np.cumsum(w, axis=1)
    position = np.broadcast_to(np.arange(n), v.shape)
    differs = v[:, 1:] != v[:, :-1]
    first = np.concatenate([np.ones((len(v), 1), bool), differs], axis=1)
    last = np.concatenate([differs, np.ones((len(v), 1), bool)], axis=1)
    start = np.maximum.accumulate(np.where(first, position, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, position, n - 1)[:, ::-1], axis=1)[:, ::-1]
    below = np.take_along_axis(cum - w, start, axis=1)
    tied = np.take_along_axis(cum, end, axis=1) - below
    ranks = np.empty_like(v)
    np.put_along_axis(ranks, order, below + (tied + 1.0) / 2.0, axis=1)
    return ranks


def _centre_rows(weights: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Deviation from the weighted mean of each resample (rows of weights sum to n)."""
    return a - (np.einsum("bi,bi->b", weights, a) / weights.sum(axis=1))[:, None]


def _weighted_cell_centre(weights: np.ndarray, a: np.ndarray, cells: Cells) -> np.ndarray:
    """Deviation from the weighted cell mean inside each resample. a (n,) or (B, n)."""
    indicator = np.zeros((cells.n, cells.n_cells))
    indicator[np.arange(cells.n), cells.cell_of] = 1.0
    sums = (weights * a) @ indicator
    means = sums / cells.sizes[None, :].astype(float)
    return a - means[:, cells.cell_of]


def cluster_bootstrap(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    cells: Sequence[Any] | np.ndarray | None,
    method: str,
    n_boot: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Coefficient of :func:`permutation_test` in resamples of seeds within each cell.

    Parameters
    ----------
    x, y
        Shape (n,), finite.
    cells
        Shape (n,): cell label of each point; None = one cell (plain bootstrap of points).
    method
        "spearman" | "pearson".
    n_boot
        Number of resamples.
    rng
        Random generator used to draw the resamples.

    Returns
    -------
    numpy.ndarray
        Shape (n_boot,); NaN for resamples where the coefficient is undefined (e.g. every cell
        drew a single seed several times).
    """
    x = np.asarray(x, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    c = Cells(np.zeros(len(x)) if cells is None else np.asarray(cells))
    if n_boot <= 0 or c.n == 0:
        return np.full(max(n_boot, 0), np.nan)
    return _bootstrap_sorted(x[c.order], y[c.order], c, method, n_boot, rng)


def _bootstrap_sorted(
    x: np.ndarray,
    y: np.ndarray,
    cells: Cells,
    method: str,
    n_boot: int,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    if weights is None:
        weights = _stratified_weights(cells, n_boot, rng)
    if method not in METHODS:
        raise FinescopeError(f"unknown correlation method {method!r}; use {METHODS}.")
    da = _weighted_cell_centre(weights, x, cells)
    db = _weighted_cell_centre(weights, y, cells)
    if method == "spearman":
        da = _centre_rows(weights, _row_ranks(weights, da))
        db = _centre_rows(weights, _row_ranks(weights, db))
    a, b = da, db
    sab = np.einsum("bi,bi,bi->b", weights, da, db)
    saa = np.einsum("bi,bi,bi->b", weights, da, da)
    sbb = np.einsum("bi,bi,bi->b", weights, db, db)
    # Below this a centred variable is constant up to rounding in that resample.
    scale = np.max(np.abs(a)) ** 2 + np.max(np.abs(b)) ** 2
    tol = cells.n * 1e-20 * max(float(scale), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = sab / np.sqrt(saa * sbb)
    r[(saa <= tol) | (sbb <= tol)] = np.nan
    return np.clip(r, -1.0, 1.0)


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
    codes: np.ndarray,
    scope: str,
    methods: Sequence[str],
    *,
    n_boot: int,
    n_perm: int,
    rng_boot: np.random.Generator,
    rng_perm: np.random.Generator,
    ci: float,
    min_n: int,
) -> list[dict[str, Any]]:
    """All methods for one (x, y) pair, controlling for the cells ``codes``."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, codes = x[ok], y[ok], codes[ok]
    # A lone point in its cell has no within-cell deviation: it carries no information.
    labels, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    keep = counts[inverse] >= 2
    x, y, codes = x[keep], y[keep], codes[keep]
    cells = Cells(codes)
    x, y = x[cells.order], y[cells.order]
    n, n_clusters = cells.n, cells.n_cells
    df = n - 2 if scope == "raw" else n - n_clusters - 1
    notes = []
    if n == 0 and len(labels):
        notes.append(NOTE_NO_REPLICATES)
    elif n < 3 or df < 1:
        notes.append(NOTE_FEW)
    elif _is_constant(x) or _is_constant(y):
        notes.append(NOTE_CONSTANT)
    computable = not notes
    underpowered = n < min_n or df < 1
    if underpowered:
        why = f"n = {n} < min_n = {min_n}" if n < min_n else f"df = {df} < 1"
        notes.append(f"underpowered: {why}")
    cells_words = _CELLS_WORDS[scope]
    # Both methods are read off the same resamples.
    weights = None
    if computable and not underpowered and n_boot > 0:
        weights = _stratified_weights(cells, n_boot, rng_boot)
    rows = []
    for method in methods:
        coef = p = low = high = math.nan
        note = list(notes)
        p_method = ci_method = "none"
        if computable:
            a, b = _centred_inputs(x, y, cells, method)
            ref_a, ref_b = (x, y) if method == "pearson" else (None, None)
            if _is_constant(a, ref_a) or _is_constant(b, ref_b):
                note.insert(0, NOTE_CONSTANT_CELLS)
            else:
                coef = _corr(a, b)
                p, exact, used = _permutation_p(a, b, coef, cells, n_perm, rng_perm)
                p_method = (
                    f"permutation of x {cells_words}, exact ({used} arrangements)"
                    if exact
                    else f"permutation of x {cells_words}, Monte Carlo ({used} draws)"
                )
                if underpowered:
                    ci_method = "none (underpowered)"
                elif n_boot <= 0:
                    ci_method = "none (n_boot = 0)"
                else:
                    boot = _bootstrap_sorted(x, y, cells, method, n_boot, rng_boot, weights)
                    low, high = _interval(boot, ci)
                    ci_method = (
                        f"bootstrap, percentile, grid points resampled ({n_boot} resamples)"
                        if scope == "raw"
                        else "cluster bootstrap, percentile, seeds resampled within "
                        f"model × fraction cells ({n_boot} resamples)"
                    )
        rows.append(
            {
                "method": method,
                "coefficient": coef,
                "p_value": p,
                "ci_low": low,
                "ci_high": high,
                "n": n,
                "n_clusters": n_clusters,
                "df": df,
                "underpowered": bool(underpowered),
                "controls": CONTROLS[scope],
                "unit": UNITS[scope],
                "p_method": p_method,
                "ci_method": ci_method,
                "note": "; ".join(note),
            }
        )
    return rows


def correlate(
    tidy: pd.DataFrame,
    seed: int = _DEFAULTS["seed"],
    n_boot: int = N_BOOT,
    *,
    min_n: int = MIN_N,
    depth_bins: int = DEPTH_BINS,
    methods: Sequence[str] = METHODS,
    scopes: Sequence[str] = DEFAULT_SCOPES,
    ci: float = 0.95,
    n_perm: int = N_PERM,
) -> pd.DataFrame:
    """Correlate the downstream score with every internal measure, per task and scope.

    Parameters
    ----------
    tidy
        Output of :func:`tidy_measures`.
    seed
        Seeds the permutation and bootstrap generators (non-negative int).
    n_boot
        Cluster-bootstrap resamples per test (0 disables the intervals).
    min_n
        Tests with fewer grid points (see the module doc for ``n``) are underpowered: no
        interval, no q-value.
    depth_bins
        Equal-width relative-depth bins on which per-layer measures are pooled across models.
    methods
        Subset of ``METHODS``.
    scopes
        Subset of ``SCOPES`` (see the module doc); ``raw`` is descriptive only.
    ci
        Confidence level of the percentile interval.
    n_perm
        Monte Carlo permutations when exact enumeration is too large.

    Returns
    -------
    pandas.DataFrame
        Columns ``CORRELATION_COLUMNS``: task, scope, family (BH family ``<task>/<scope>``;
        empty for ``raw``), model (the model, or "all"), measure_source ("probing" | "change"),
        probe (NA for change), measure, layer (str: raw layer index within a model, NA for
        pooled depth bins, or an aggregate name), depth (relative depth of the layer, or the
        bin centre; NA for aggregates), method, coefficient, p_value (permutation), ci_low,
        ci_high (cluster bootstrap), q_value (BH within the family over non-underpowered
        tests), n (grid points used), n_clusters (cells used), df (n - n_clusters - 1),
        underpowered (bool), controls, unit (unit of replication), p_method, ci_method and
        note ("" or why a value is missing / the test is underpowered). Empty (with these
        columns) when no grid point has both a score and a measure.
    """
    if int(seed) < 0:
        raise FinescopeError(f"analysis.seed must be a non-negative integer, got {seed}.")
    if int(min_n) < 3:
        raise FinescopeError(f"analysis.min_n must be at least 3, got {min_n}.")
    if int(depth_bins) < 1:
        raise FinescopeError(f"analysis.depth_bins must be a positive integer, got {depth_bins}.")
    for method in methods:
        if method not in METHODS:
            raise FinescopeError(f"unknown correlation method {method!r}; use {METHODS}.")
    for scope in scopes:
        if scope not in SCOPES:
            raise FinescopeError(f"unknown correlation scope {scope!r}; use {SCOPES}.")
    if not 0 < ci < 1:
        raise FinescopeError(f"confidence level must be in (0, 1), got {ci}.")
    features = feature_table(tidy)
    settings = {
        "seed": int(seed),
        "n_boot": int(n_boot),
        "n_perm": int(n_perm),
        "min_n": int(min_n),
        "depth_bins": int(depth_bins),
        "methods": list(methods),
        "ci": float(ci),
    }
    # The matrices are small: BLAS threads only add contention (and stalls on busy machines).
    with _single_threaded_blas():
        return _correlate_features(features, list(scopes), settings)


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only a speed-up
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _scope_data(features: pd.DataFrame, scope: str, depth_bins: int) -> pd.DataFrame:
    """Rows of one scope with columns ``model`` (the test's model or "all"), ``depth``,
    ``_slot`` (groups a test) and ``_cell`` (the cell label)."""
    if scope == "within_model":
        data = features.assign(depth=features["relative_depth"], _slot=features["layer"])
        cell = data["fraction"].astype(str)
    else:
        data = pooled_features(features, depth_bins)
        slot = np.where(data["depth"].notna(), "depth " + data["depth"].astype(str), "")
        data = data.assign(_slot=np.where(data["layer"].isna(), slot, data["layer"]))
        cell = data["model"] + "|" + data["fraction"].astype(str)
        if scope == "raw":
            cell = pd.Series("all", index=data.index)
        data = data.assign(_model=data["model"], model="all")
    return data.assign(_cell=cell.to_numpy())


def scope_points(features: pd.DataFrame, row: Any, depth_bins: int = DEPTH_BINS) -> pd.DataFrame:
    """The grid points behind one correlation row and the centred values it correlates.

    Parameters
    ----------
    features
        Output of :func:`feature_table`.
    row
        One row of :func:`correlate` (attributes or keys task, scope, model, measure_source,
        probe, measure, layer, depth, method).
    depth_bins
        As passed to :func:`correlate` (for pooled depth-bin rows).

    Returns
    -------
    pandas.DataFrame
        Columns model, fraction, seed, x, score, x_centred, y_centred (ranks centred within
        cells for Spearman, values centred within cells for Pearson), in cell order; only the
        points the test used (finite, in cells with at least two of them).
    """
    get = row.get if isinstance(row, Mapping) else (lambda k: getattr(row, k))
    columns = ["model", "fraction", "seed", "x", "score", "x_centred", "y_centred"]
    scope = str(get("scope"))
    data = _scope_data(features[features["task"] == get("task")], scope, int(depth_bins))
    if scope == "within_model":
        data = data[data["model"] == get("model")]
    mask = (data["measure_source"] == get("measure_source")) & (data["measure"] == get("measure"))
    probe = get("probe")
    mask &= data["probe"].isna() if not isinstance(probe, str) else data["probe"] == probe
    layer = get("layer")
    if isinstance(layer, str) and layer:
        mask &= data["layer"] == layer
    else:
        mask &= np.isclose(data["depth"].to_numpy(float), float(get("depth")))
    data = data[mask & np.isfinite(data["x"]) & np.isfinite(data["score"])]
    counts = data["_cell"].map(data["_cell"].value_counts())
    data = data[counts >= 2]
    if data.empty:
        return pd.DataFrame(columns=columns)
    cells = Cells(pd.factorize(data["_cell"])[0])
    data = data.iloc[cells.order]
    a, b = _centred_inputs(
        data["x"].to_numpy(float), data["score"].to_numpy(float), cells, str(get("method"))
    )
    model = data["_model"] if "_model" in data.columns else data["model"]
    return pd.DataFrame(
        {
            "model": model.to_numpy(),
            "fraction": data["fraction"].to_numpy(float),
            "seed": data["seed"].to_numpy(),
            "x": data["x"].to_numpy(float),
            "score": data["score"].to_numpy(float),
            "x_centred": a,
            "y_centred": b,
        }
    )


def _correlate_features(
    features: pd.DataFrame, scopes: list[str], s: dict[str, Any]
) -> pd.DataFrame:
    out: list[dict[str, Any]] = []
    if features.empty:
        return _empty_correlations()
    for scope in [sc for sc in SCOPES if sc in scopes]:
        # One pass over all tasks: the per-task frame work dominates small grids otherwise.
        data = _scope_data(features, scope, s["depth_bins"])
        keys = ["task", "model", "measure_source", "probe", "measure", "_slot"]
        x_all = data["x"].to_numpy(float)
        y_all = data["score"].to_numpy(float)
        cell_all = pd.factorize(data["_cell"])[0]
        layer_all = data["layer"].to_numpy(object)
        depth_all = data["depth"].to_numpy(float)
        grouped = data.groupby(keys, dropna=False, sort=False).indices
        for key, idx in grouped.items():
            task, model, source, probe, measure, slot = key
            probe = None if pd.isna(probe) else str(probe)
            label = "|".join(map(str, (task, scope, model, source, probe, measure, slot)))
            crc = zlib.crc32(label.encode())
            layer = layer_all[idx[0]]
            for row in _test_rows(
                x_all[idx],
                y_all[idx],
                cell_all[idx],
                scope,
                s["methods"],
                n_boot=s["n_boot"],
                n_perm=s["n_perm"],
                rng_boot=np.random.default_rng([s["seed"], crc, 0]),
                rng_perm=np.random.default_rng([s["seed"], crc, 1]),
                ci=s["ci"],
                min_n=s["min_n"],
            ):
                out.append(
                    {
                        "task": str(task),
                        "scope": scope,
                        "family": f"{task}/{scope}" if scope in TESTED_SCOPES else "",
                        "model": str(model),
                        "measure_source": source,
                        "probe": probe,
                        "measure": measure,
                        "layer": None if pd.isna(layer) else str(layer),
                        "depth": depth_all[idx[0]],
                        **row,
                    }
                )
    if not out:
        return _empty_correlations()
    result = pd.DataFrame(out)
    result["q_value"] = np.nan
    for rows in result[result["family"] != ""].groupby("family").groups.values():
        tested = result.loc[rows]
        tested = tested[~tested["underpowered"] & np.isfinite(tested["p_value"])]
        result.loc[tested.index, "q_value"] = bh_adjust(tested["p_value"].to_numpy(float))
    return _sort_correlations(result)


def _sort_correlations(result: pd.DataFrame) -> pd.DataFrame:
    result["probe"] = result["probe"].astype("str").where(result["probe"].notna(), np.nan)
    result["layer"] = result["layer"].astype("str").where(result["layer"].notna(), np.nan)
    for col in ("n", "n_clusters", "df"):
        result[col] = result[col].astype("int64")
    result["underpowered"] = result["underpowered"].astype(bool)
    result["_scope"] = result["scope"].map({s: i for i, s in enumerate(SCOPES)})
    keys = [layer_sort_key(v) for v in result["layer"]]
    result["_layer0"] = [k[0] for k in keys]
    result["_layer1"] = [k[1] for k in keys]
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
            "depth",
            "_method",
        ],
        kind="stable",
        na_position="first",
    )
    return result[CORRELATION_COLUMNS].reset_index(drop=True)


def _empty_correlations() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="str") for c in CORRELATION_COLUMNS})
    floats = ["depth", "coefficient", "p_value", "ci_low", "ci_high", "q_value"]
    return frame.astype(
        {
            **{c: "float64" for c in floats},
            "n": "int64",
            "n_clusters": "int64",
            "df": "int64",
            "underpowered": "bool",
        }
    )


def normalize_correlations(correlations: pd.DataFrame | None) -> pd.DataFrame:
    """Bring a correlation table read back from CSV to the dtypes of :func:`correlate`.

    CSV reads layer indices as numbers and empty text as NaN; this restores layer strings
    ("3", "best_layer"), empty families and boolean ``underpowered``.

    Parameters
    ----------
    correlations
        A table with columns ``CORRELATION_COLUMNS`` (or None).

    Returns
    -------
    pandas.DataFrame
    """
    if correlations is None or correlations.empty:
        return _empty_correlations()
    _check_columns(correlations, CORRELATION_COLUMNS, "correlations")
    out = correlations[CORRELATION_COLUMNS].copy()

    def layer_text(v: Any) -> Any:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return np.nan
        if isinstance(v, (int, float, np.integer, np.floating)):
            return str(int(v))
        return str(v)

    out["layer"] = [layer_text(v) for v in out["layer"]]
    for col in ("family", "controls", "unit", "p_method", "ci_method", "note"):
        out[col] = out[col].fillna("").astype(str)
    out["underpowered"] = out["underpowered"].map(
        lambda v: v if isinstance(v, (bool, np.bool_)) else str(v).strip().lower() == "true"
    )
    out["underpowered"] = out["underpowered"].astype(bool)
    return out


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
