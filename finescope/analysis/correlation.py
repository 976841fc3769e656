"""Correlating internal measures with downstream scores, per scope, with tests and intervals."""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from finescope.analysis.features import feature_table, pooled_features
from finescope.analysis.grid import layer_sort_key
from finescope.analysis.settings import (
    _CELLS_WORDS,
    CONTROLS,
    CORRELATION_COLUMNS,
    DEFAULT_SCOPES,
    DEPTH_BINS,
    METHODS,
    MIN_N,
    N_BOOT,
    N_PERM,
    NOTE_CONSTANT,
    NOTE_CONSTANT_CELLS,
    NOTE_FEW,
    NOTE_NO_REPLICATES,
    SCOPES,
    TESTED_SCOPES,
    UNITS,
)
from finescope.analysis.stats import (
    Cells,
    _bootstrap_sorted,
    _centred_inputs,
    _corr,
    _interval,
    _is_constant,
    _permutation_p,
    _stratified_weights,
    bh_adjust,
)
from finescope.analysis.tidy import _check_columns
from finescope.errors import FinescopeError
from finescope.io import write_csv
from finescope.settings.analysis import AnalysisSettings


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
    seed: int = AnalysisSettings.seed,
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


def correlations_job(
    measures_path: str, settings: AnalysisSettings | Mapping, out_csv: str
) -> None:
    """The ``correlations`` job: ``results/tables/correlations.csv``."""
    s = AnalysisSettings.build(settings)
    tidy = pd.read_parquet(measures_path)
    table = correlate(tidy, seed=s.seed, n_boot=s.n_boot, min_n=s.min_n, depth_bins=s.depth_bins)
    write_csv(table, out_csv)
