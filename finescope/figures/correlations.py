"""Correlation heatmaps and the scatter plots of the strongest tested correlations."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from finescope import analysis
from finescope.figures.common import (
    _RC,
    MARKERS,
    SIGNIFICANCE,
    _heatmap,
    _new_figure,
    _no_data,
    _save,
    model_palette,
)

_AGG_SHORT = {
    "best_layer": "best (dev)",
    "best_layer_depth": "best depth",
    "most_changed": "most changed",
    "most_changed_depth": "most ch. depth",
    "mean": "mean",
    "last": "last",
}


def _column_label(layer: Any, depth: float) -> str:
    if isinstance(layer, str) and layer:
        return _AGG_SHORT.get(layer, layer)
    return f"d {depth:.2f}" if math.isfinite(depth) else "?"


def _correlation_view(correlations: pd.DataFrame, method: str) -> pd.DataFrame:
    if correlations is None or correlations.empty:
        return pd.DataFrame()
    correlations = analysis.normalize_correlations(correlations)
    view = correlations[
        correlations["scope"].isin(analysis.TESTED_SCOPES) & (correlations["method"] == method)
    ]
    keys = [analysis.layer_sort_key(v) for v in view["layer"]]
    return view.assign(
        feature=[
            analysis.feature_label(s, p, m)
            for s, p, m in zip(view["measure_source"], view["probe"], view["measure"], strict=True)
        ],
        column=[_column_label(v, d) for v, d in zip(view["layer"], view["depth"], strict=True)],
        _k0=[k[0] for k in keys],
        _k1=[k[1] for k in keys],
    )


def _panels(view: pd.DataFrame, scope: str | None) -> list[tuple[str, str, str]]:
    """(task, scope, model) of each heatmap panel: pooled first, then each model."""
    out = []
    for task in sorted(view["task"].unique()):
        part = view[view["task"] == task]
        for sc in ("pooled", "within_model"):
            if scope is not None and sc != scope:
                continue
            for model in sorted(part.loc[part["scope"] == sc, "model"].unique()):
                out.append((task, sc, model))
    return out


def plot_correlation_heatmap(
    correlations: pd.DataFrame,
    stem: str | Path,
    scope: str | None = None,
    method: str = "spearman",
) -> list[Path]:
    """Heatmap of correlation coefficients, measures (rows) x layers and aggregates (columns).

    Parameters
    ----------
    correlations
        Output of :func:`finescope.analysis.correlate`.
    stem
        Output path without extension.
    scope
        ``"pooled"`` or ``"within_model"``; None draws both (the uncontrolled ``raw`` scope is
        never drawn).
    method
        Which coefficients to draw.

    Returns
    -------
    list[pathlib.Path]
        One panel per task and scope (pooled: columns are relative-depth bins, "d 0.12" = bin
        centre, then aggregates) and per model within it (columns: the model's layer indices,
        then aggregates). ``*`` marks q < 0.05 (Benjamini-Hochberg within the family); hatched
        cells are underpowered (coefficient drawn faded, no q), powered cells are framed; grey
        cells have no coefficient. The colour scale is fixed at ±1.
    """
    title = f"Correlation of downstream score with internal measures ({method}, fraction removed)"
    view = _correlation_view(correlations, method)
    panels = _panels(view, scope) if not view.empty else []
    if not panels:
        return _no_data(stem, title)
    cmap = sns.color_palette("vlag", as_cmap=True)
    any_weak = False
    heights, widths = [], []
    for task, sc, model in panels:
        part = view[(view["task"] == task) & (view["scope"] == sc) & (view["model"] == model)]
        heights.append(0.3 * part["feature"].nunique() + 1.1)
        widths.append(0.45 * part["column"].nunique() + 4.5)
    with matplotlib.rc_context(_RC):
        fig = _new_figure(max(widths), sum(heights) + 0.8)
        axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)
        for i, (task, sc, model) in enumerate(panels):
            ax = axes[i, 0]
            part = view[(view["task"] == task) & (view["scope"] == sc) & (view["model"] == model)]
            part = part.sort_values(["_k0", "_k1", "depth"], kind="stable")
            features = sorted(part["feature"].unique())
            columns = list(dict.fromkeys(part["column"]))
            coef = part.pivot_table(
                index="feature",
                columns="column",
                values="coefficient",
                aggfunc="mean",
                dropna=False,
            ).reindex(index=features, columns=columns)
            q = part.pivot_table(
                index="feature", columns="column", values="q_value", aggfunc="min", dropna=False
            ).reindex(index=features, columns=columns)
            weak = (
                part.pivot_table(
                    index="feature", columns="column", values="underpowered", aggfunc="max"
                )
                .reindex(index=features, columns=columns)
                .fillna(False)
                .to_numpy(bool)
            )
            marks = np.where((q.to_numpy(float) < SIGNIFICANCE) & coef.notna().to_numpy(), "*", "")
            _heatmap(ax, coef, cmap=cmap, vmin=-1, vmax=1, marks=marks, gaps=True)
            # Underpowered cells keep their colour, faded and hatched; powered cells are framed.
            has_value = coef.notna().to_numpy()
            for r, c in zip(*np.nonzero(weak), strict=True):
                if has_value[r, c]:
                    ax.add_patch(Rectangle((c, r), 1, 1, facecolor="white", alpha=0.45, lw=0))
                ax.add_patch(
                    Rectangle((c, r), 1, 1, fill=False, hatch="///", edgecolor="0.55", lw=0)
                )
            for r, c in zip(*np.nonzero(~weak & has_value), strict=True):
                ax.add_patch(
                    Rectangle((c, r), 1, 1, fill=False, edgecolor="black", lw=1.0, zorder=3)
                )
            ax.set_facecolor("0.88")
            where = (
                "pooled over models (model × fraction cells)"
                if sc == "pooled"
                else f"within {model} (fraction levels)"
            )
            any_weak |= bool(weak.any())
            ax.set_title(f"{task} · {where}")
            ax.tick_params(axis="x", labelrotation=35)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
            ax.set_xlabel(
                "relative-depth bin or aggregate"
                if sc == "pooled"
                else "layer (0 = embeddings) or aggregate"
            )
            ax.set_ylabel("")
        fig.colorbar(
            ScalarMappable(Normalize(-1, 1), cmap=cmap),
            ax=axes,
            shrink=0.6,
            label=f"{method} coefficient (seeds, cell means removed)",
        )
        legend = (
            f"framed = powered test, * q < {SIGNIFICANCE} (BH within task × scope) · "
            "grey = no coefficient"
        )
        if any_weak:
            legend += "\nhatched = underpowered (n < min_n: no q, not a finding; faded colour)"
        fig.suptitle(f"{title}\n{legend}")
    return _save(fig, stem)


_LAYER_WORDS = {
    "best_layer": "layer with the best probe-dev score",
    "best_layer_depth": "relative depth of the best probe-dev layer",
    "most_changed": "most changed layer",
    "most_changed_depth": "relative depth of the most changed layer",
    "mean": "mean over layers",
    "last": "last layer",
}


def format_q(q: float) -> str:
    """``"q = 0.012"``; very small values as ``"q < 1e-10"``; missing as ``"q n/a"``."""
    if q is None or not math.isfinite(q):
        return "q n/a"
    if q < 1e-10:
        return "q < 1e-10"
    return f"q = {q:.2g}"


def top_correlations(
    correlations: pd.DataFrame, scope: str | None = None, method: str = "spearman"
) -> pd.DataFrame:
    """Per task, the adequately powered fraction-controlled test with the smallest q.

    Ties (and tests without q) are broken by the larger |coefficient|, then table order.
    Underpowered rows and the uncontrolled ``raw`` scope are never chosen.

    Parameters
    ----------
    correlations
        Output of :func:`finescope.analysis.correlate`.
    scope
        ``"within_model"`` | ``"pooled"``; None = either.
    method
        Which coefficients to rank.

    Returns
    -------
    pandas.DataFrame
        One row per task with such a test, columns as ``correlations``.
    """
    if correlations is None or correlations.empty:
        return pd.DataFrame(columns=analysis.CORRELATION_COLUMNS)
    correlations = analysis.normalize_correlations(correlations)
    scopes = analysis.TESTED_SCOPES if scope is None else (scope,)
    view = correlations[
        correlations["scope"].isin(scopes)
        & (correlations["method"] == method)
        & ~correlations["underpowered"]
        & correlations["coefficient"].notna()
    ]
    if view.empty:
        return pd.DataFrame(columns=analysis.CORRELATION_COLUMNS)
    view = view.assign(_abs=-view["coefficient"].abs(), _q=view["q_value"].fillna(2.0))
    view = view.sort_values(["task", "_q", "_abs"], kind="stable")
    return (
        view.groupby("task", sort=True).head(1).drop(columns=["_abs", "_q"]).reset_index(drop=True)
    )


def _infer_depth_bins(correlations: pd.DataFrame, task: str) -> int:
    """Bins used for pooled rows: the shallowest bin (embeddings, depth 0) has centre 0.5/k."""
    rows = correlations[(correlations["task"] == task) & (correlations["scope"] != "within_model")]
    depths = rows.loc[rows["layer"].isna(), "depth"].dropna()
    if depths.empty or depths.min() <= 0:
        return analysis.DEPTH_BINS
    return max(1, round(0.5 / float(depths.min())))


def plot_top_scatter(
    tidy: pd.DataFrame,
    correlations: pd.DataFrame,
    stem: str | Path,
    palette: Mapping[str, str] | None = None,
    scope: str | None = None,
    method: str = "spearman",
) -> list[Path]:
    """Within-cell deviations of the downstream score vs the measure of the top test.

    Parameters
    ----------
    tidy
        Output of :func:`finescope.analysis.tidy_measures`.
    correlations
        Output of :func:`finescope.analysis.correlate`.
    stem
        Output path without extension.
    palette
        ``{model: colour}``; default :func:`model_palette`.
    scope, method
        Which tests to choose from (see :func:`top_correlations`).

    Returns
    -------
    list[pathlib.Path]
        One panel per task: the values the coefficient was computed on (Pearson: values
        centred within cells; Spearman: ranks of those deviations). Colour = model, marker =
        fraction; one point per grid point. When every test is underpowered the image says so.
    """
    title = "Top test: score vs measure, cell means removed"
    top = top_correlations(correlations, scope, method)
    if top.empty:
        reason = (
            "every test is underpowered"
            if correlations is not None
            and not correlations.empty
            and analysis.normalize_correlations(correlations)["underpowered"].all()
            else "no data"
        )
        return _no_data(stem, title, reason)
    features = analysis.feature_table(tidy)
    if features.empty:
        return _no_data(stem, title)
    correlations = analysis.normalize_correlations(correlations)
    palette = dict(palette or model_palette(features["model"]))
    fractions = sorted(features["fraction"].unique())
    marker_of = {f: MARKERS[k % len(MARKERS)] for k, f in enumerate(fractions)}
    spearman = method == "spearman"
    with matplotlib.rc_context(_RC), sns.axes_style("whitegrid"):
        fig = _new_figure(4.3 * len(top) + 2.2, 3.9)
        axes = fig.subplots(1, len(top), squeeze=False)
        models_drawn: set[str] = set()
        for j, row in enumerate(top.itertuples(index=False)):
            ax = axes[0, j]
            points = analysis.scope_points(features, row, _infer_depth_bins(correlations, row.task))
            for (model, fraction), group in points.groupby(["model", "fraction"]):
                models_drawn.add(model)
                ax.scatter(
                    group["x_centred"],
                    group["y_centred"],
                    color=palette.get(model, "black"),
                    marker=marker_of.get(fraction, "o"),
                    s=30,
                    alpha=0.85,
                    edgecolors="white",
                    linewidths=0.5,
                )
            if isinstance(row.layer, str) and row.layer:
                where = _LAYER_WORDS.get(row.layer, f"layer {row.layer}")
            else:
                where = f"depth bin {row.depth:.2f}"
            cell = "fraction level" if row.scope == "within_model" else "model × fraction cell"
            label = analysis.feature_label(row.measure_source, row.probe, row.measure)
            if spearman:
                ax.set_xlabel(f"rank of {label} ({where}) − {cell} mean", fontsize=8)
                ax.set_ylabel(f"rank of downstream score − {cell} mean", fontsize=8)
            else:
                ax.set_xlabel(f"{label} ({where}) − {cell} mean", fontsize=8)
                ax.set_ylabel(f"downstream score − {cell} mean", fontsize=8)
            scope_words = f"within {row.model}" if row.scope == "within_model" else "pooled"
            ax.set_title(
                f"{row.task}, {scope_words}: {method} {row.coefficient:+.2f}\n"
                f"({format_q(row.q_value)}, n = {row.n} in {row.n_clusters} cells)"
            )
        handles = [
            Line2D([], [], color=palette.get(m, "black"), marker="o", linestyle="")
            for m in sorted(models_drawn)
        ]
        labels = sorted(models_drawn)
        handles += [
            Line2D([], [], color="0.3", marker=marker_of[f], linestyle="") for f in fractions
        ]
        labels += [f"{f:g} %" for f in fractions]
        fig.legend(handles, labels, title="model / training data", loc="outside right upper")
        fig.suptitle(title)
    return _save(fig, stem)
