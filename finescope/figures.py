"""Figures of the analysis stage, each written as ``<stem>.png`` and ``<stem>.svg``.

Figures are drawn on :class:`matplotlib.figure.Figure` objects rendered by the Agg (PNG) and SVG
canvases, never through pyplot, so no display backend or global figure registry is involved
and nothing is left open. Every plotting function takes data frames and an output path stem
(``results/figures/probing`` gives ``probing.png`` and ``probing.svg``) and returns the paths it
wrote. When there is nothing to draw it still writes a valid image that says "no data", so
every declared output exists.

Colours: one colour per model from :func:`model_palette` (the same in every figure drawn by
:func:`make_all_figures`), a sequential palette over fractions from :func:`fraction_palette`
(darker = more training data) and a grey dashed line for the random-weights baseline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from finescope import analysis
from finescope.io import atomic_path

# Fixed figure names (``<out_dir>/<name>.<format>`` for each format) for the workflow's outputs.
FIGURES = (
    "downstream",
    "probing",
    "probing_depth",
    "selectivity",
    "compression",
    "cka",
    "attention_cosine",
    "attention_js",
    "correlations",
    "scatter",
    "learning_curves",
    "probe_heatmap",
    "confusion",
    "attention_example",
)
FORMATS = ("png", "svg")
DPI = 120
# Preferred measure for "the probe score", first present wins.
PROBE_SCORE_MEASURES = ("macro_f1", "accuracy")
RANDOM_COLOR = "#7f7f7f"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
SIGNIFICANCE = 0.05

_RC = {
    "svg.hashsalt": "finescope",  # stable SVG ids, so re-runs write identical files
    "svg.fonttype": "none",  # text stays text: smaller, searchable files
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 9,
    "figure.titlesize": 12,
}


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def figure_paths(out_dir: str | Path, name: str) -> list[Path]:
    """Paths written for figure ``name``: ``out_dir/<name>.png`` and ``out_dir/<name>.svg``."""
    return [Path(out_dir) / f"{name}.{ext}" for ext in FORMATS]


def model_palette(models: Iterable[str]) -> dict[str, str]:
    """One colour (hex) per model, assigned in sorted model order.

    Parameters
    ----------
    models
        Model names (duplicates allowed).

    Returns
    -------
    dict[str, str]
        ``{model: "#rrggbb"}``; colour-blind-safe for up to 10 models, evenly spaced hues above.
    """
    names = sorted({str(m) for m in models})
    if not names:
        return {}
    colors = (
        sns.color_palette("colorblind", len(names))
        if len(names) <= 10
        else sns.color_palette("husl", len(names))
    )
    return {name: to_hex(color) for name, color in zip(names, colors, strict=True)}


def fraction_palette(fractions: Iterable[Any]) -> dict[str, str]:
    """One colour (hex) per fraction: light to dark with more data, grey for ``"random"``.

    Parameters
    ----------
    fractions
        Fractions in any accepted form (see :func:`finescope.analysis.normalize_fraction`).

    Returns
    -------
    dict[str, str]
        ``{canonical fraction string: "#rrggbb"}``.
    """
    ordered = analysis.sorted_fractions(fractions)
    numeric = [f for f in ordered if f != analysis.RANDOM]
    palette: dict[str, str] = {}
    if analysis.RANDOM in ordered:
        palette[analysis.RANDOM] = RANDOM_COLOR
    if numeric:
        colors = (
            sns.color_palette("viridis_r", len(numeric) + 1)[1:]
            if len(numeric) > 1
            else [sns.color_palette("viridis", 3)[1]]
        )
        palette.update({f: to_hex(c) for f, c in zip(numeric, colors, strict=True)})
    return palette


def _fraction_label(fraction: str) -> str:
    if fraction == analysis.RANDOM:
        return "random weights"
    if fraction == "0":
        return "0 % (pre-trained)"
    return f"{fraction} %"


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(min(width, 60.0), min(height, 60.0)), dpi=DPI, layout="constrained")


def _save(fig: Figure, stem: str | Path) -> list[Path]:
    paths = []
    with matplotlib.rc_context(_RC):
        for ext in FORMATS:
            path = Path(f"{stem}.{ext}")
            metadata = {"Date": None} if ext == "svg" else None
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=ext, dpi=DPI, metadata=metadata)
            paths.append(path)
            # The layout is solved once (for the first format) and reused: it is the slow part.
            fig.set_layout_engine("none")
    fig.clear()
    return paths


def _no_data(stem: str | Path, title: str, reason: str = "no data") -> list[Path]:
    with matplotlib.rc_context(_RC):
        fig = _new_figure(5.0, 2.5)
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.set_title(title)
        ax.text(
            0.5,
            0.5,
            reason,
            ha="center",
            va="center",
            fontsize=14,
            color="0.4",
            transform=ax.transAxes,
        )
    return _save(fig, stem)


def _heatmap(
    ax: Any,
    matrix: pd.DataFrame,
    *,
    cmap: Any,
    vmin: float,
    vmax: float,
    marks: np.ndarray | None = None,
    gaps: bool = False,
) -> None:
    """Draw ``matrix`` (rows top to bottom) as coloured cells; NaN cells show the axes colour.

    Drawn directly with pcolormesh: seaborn's heatmap redraws the whole figure to check tick
    label overlap, which is quadratic in the number of panels.
    """
    values = np.ma.masked_invalid(matrix.to_numpy(dtype=float))
    nrow, ncol = values.shape
    ax.pcolormesh(
        np.arange(ncol + 1),
        np.arange(nrow + 1),
        values,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        edgecolors="white" if gaps else "face",
        linewidth=0.4 if gaps else 0.0,
    )
    ax.set_xlim(0, ncol)
    ax.set_ylim(nrow, 0)
    ax.set_xticks(np.arange(ncol) + 0.5, [str(c) for c in matrix.columns])
    ax.set_yticks(np.arange(nrow) + 0.5, [str(r) for r in matrix.index])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if marks is not None:
        for (i, j), mark in np.ndenumerate(marks):
            if mark:
                ax.text(
                    j + 0.5,
                    i + 0.5,
                    mark,
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if abs(float(values[i, j])) > 0.6 else "black",
                )


def _grid_axes(fig: Figure, nrows: int, ncols: int, sharey: str | bool = "row") -> np.ndarray:
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=sharey)
    return axes


def _finish_grid(axes: np.ndarray, used: set[tuple[int, int]]) -> None:
    for (i, j), ax in np.ndenumerate(axes):
        if (i, j) not in used:
            ax.set_axis_off()


def _mean_sd(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return (
        frame.groupby(keys, dropna=False)["value"]
        .agg(mean="mean", sd="std", n="count")
        .reset_index()
    )


def _draw_line(
    ax: Any, x: np.ndarray, mean: np.ndarray, sd: np.ndarray, color: str, dashed: bool, label: str
) -> None:
    ax.plot(
        x,
        mean,
        color=color,
        linestyle="--" if dashed else "-",
        marker="o",
        markersize=3,
        linewidth=1.5,
        label=label,
    )
    if np.isfinite(sd).any():
        sd = np.nan_to_num(sd)
        ax.fill_between(x, mean - sd, mean + sd, color=color, alpha=0.15, linewidth=0)


def _lines_figure(
    stats: pd.DataFrame,
    *,
    row_key: str,
    col_key: str,
    hue_key: str,
    x_key: str,
    row_order: Sequence[str],
    col_order: Sequence[str],
    hue_order: Sequence[str],
    colors: Mapping[str, str],
    hue_labels: Mapping[str, str],
    legend_title: str,
    xlabel: str,
    ylabel: str,
    title: str,
    col_labels: Mapping[str, str] | None = None,
    sharey: str | bool = "row",
) -> Figure:
    """Grid of panels (rows x cols), one line (mean, band = sd over seeds) per hue value."""
    nrows, ncols = len(row_order), len(col_order)
    with matplotlib.rc_context(_RC), sns.axes_style("whitegrid"):
        fig = _new_figure(2.9 * ncols + 2.0, 2.3 * nrows + 0.9)
        axes = _grid_axes(fig, nrows, ncols, sharey=sharey)
        used = set()
        for (i, row), (j, col) in (
            (r, c) for r in enumerate(row_order) for c in enumerate(col_order)
        ):
            ax = axes[i, j]
            panel = stats[(stats[row_key] == row) & (stats[col_key] == col)]
            ax.set_title(f"{row} · {(col_labels or {}).get(col, col)}")
            if panel.empty:
                ax.text(
                    0.5,
                    0.5,
                    "no data",
                    ha="center",
                    va="center",
                    color="0.5",
                    transform=ax.transAxes,
                )
            for hue in hue_order:
                line = panel[panel[hue_key] == hue].sort_values(x_key)
                if line.empty:
                    continue
                _draw_line(
                    ax,
                    line[x_key].to_numpy(float),
                    line["mean"].to_numpy(float),
                    line["sd"].to_numpy(float),
                    colors.get(hue, "black"),
                    hue == analysis.RANDOM,
                    hue_labels.get(hue, str(hue)),
                )
            used.add((i, j))
            if i == nrows - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(ylabel)
        _finish_grid(axes, used)
        handles = [
            Line2D(
                [],
                [],
                color=colors.get(h, "black"),
                marker="o",
                markersize=4,
                linestyle="--" if h == analysis.RANDOM else "-",
            )
            for h in hue_order
        ]
        # Below the panels: at the upper right (or upper centre) it covered the title.
        fig.legend(
            handles,
            [hue_labels.get(h, str(h)) for h in hue_order],
            title=legend_title,
            loc="outside lower center",
            ncols=min(len(hue_order), 6),
        )
        fig.suptitle(title)
    return fig


def _integer_xticks(axes: np.ndarray, values: Iterable[float]) -> None:
    ticks = sorted({int(v) for v in values if math.isfinite(v)})
    if ticks and len(ticks) <= 40:
        for ax in axes.flat:
            ax.set_xticks(ticks)


# --------------------------------------------------------------------------------------------
# Downstream
# --------------------------------------------------------------------------------------------


def plot_downstream(
    tidy: pd.DataFrame, stem: str | Path, palette: Mapping[str, str] | None = None
) -> list[Path]:
    """Downstream score vs training fraction, one line per model (mean ± sd over seeds).

    Parameters
    ----------
    tidy
        Output of :func:`finescope.analysis.tidy_measures`.
    stem
        Output path without extension.
    palette
        ``{model: colour}``; default :func:`model_palette` over the models drawn.

    Returns
    -------
    list[pathlib.Path]
        The PNG and SVG written. One panel per task.
    """
    title = "Downstream score vs fraction of training data"
    stats = analysis.downstream_stats(tidy) if not tidy.empty else pd.DataFrame()
    if stats.empty:
        return _no_data(stem, title)
    palette = dict(palette or model_palette(stats["model"]))
    tasks = sorted(stats["task"].unique())
    models = sorted(stats["model"].unique())
    with matplotlib.rc_context(_RC), sns.axes_style("whitegrid"):
        fig = _new_figure(4.2 * len(tasks) + 2.0, 3.4)
        axes = fig.subplots(1, len(tasks), squeeze=False)
        for j, task in enumerate(tasks):
            ax = axes[0, j]
            for k, model in enumerate(models):
                line = stats[(stats["task"] == task) & (stats["model"] == model)]
                if line.empty:
                    continue
                line = line.sort_values("fraction")
                ax.errorbar(
                    line["fraction"],
                    line["mean"],
                    yerr=line["sd"].fillna(0.0),
                    color=palette.get(model, "black"),
                    marker=MARKERS[k % len(MARKERS)],
                    markersize=4,
                    capsize=3,
                    linewidth=1.5,
                    label=model,
                )
            ax.set_title(task)
            ax.set_xlabel("training data used (%)")
            ax.set_ylabel(f"downstream score ({analysis.primary_metric(tidy, task)})")
        _integer_xticks(axes, stats["fraction"])
        handles = [
            Line2D([], [], color=palette.get(m, "black"), marker=MARKERS[k % len(MARKERS)])
            for k, m in enumerate(models)
        ]
        fig.legend(handles, models, title="model", loc="outside right upper")
        fig.suptitle(f"{title} (mean ± sd over seeds)")
    return _save(fig, stem)


# --------------------------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------------------------


def _probe_rows(tidy: pd.DataFrame, measure: str | None) -> tuple[pd.DataFrame, str]:
    tidy = analysis.normalize_tidy(tidy)
    prob = tidy[tidy["source"] == "probing"]
    if prob.empty:
        return prob, measure or "probe score"
    if measure is not None:
        return prob[prob["measure"] == measure], measure
    # Probe score: per task, the first preferred measure it has.
    parts, names = [], set()
    for task in sorted(prob["task"].unique()):
        rows = prob[prob["task"] == task]
        for name in PROBE_SCORE_MEASURES:
            if (rows["measure"] == name).any():
                parts.append(rows[rows["measure"] == name])
                names.add(name)
                break
    if not parts:
        return prob.iloc[0:0], "probe score"
    return pd.concat(parts), " / ".join(sorted(names))


def plot_probing(
    tidy: pd.DataFrame,
    stem: str | Path,
    measure: str | None = None,
    *,
    depth: bool = False,
    palette: Mapping[str, str] | None = None,
) -> list[Path]:
    """Probe measure by layer.

    With ``depth=False``: a row of panels per task x probe, a column per model, one line per
    fraction (random-weights baseline dashed grey). With ``depth=True``: x is the relative
    depth (0 = embeddings, 1 = last layer), a column per fraction and one line per model, so
    models with different depths can be compared in one panel.

    Parameters
    ----------
    tidy
        Output of :func:`finescope.analysis.tidy_measures`.
    stem
        Output path without extension.
    measure
        Probing measure to draw; ``None`` = the probe score (``PROBE_SCORE_MEASURES``).
    depth
        Relative-depth variant.
    palette
        ``{model: colour}`` for the depth variant.

    Returns
    -------
    list[pathlib.Path]
    """
    rows, name = _probe_rows(tidy, measure)
    title = f"Probing: {name} by {'relative depth' if depth else 'layer'}"
    rows = rows.dropna(subset=["value", "layer"]) if not rows.empty else rows
    if rows.empty:
        return _no_data(stem, title)
    rows = rows.assign(panel=rows["task"] + " · " + rows["probe"])
    fractions = analysis.sorted_fractions(rows["fraction"])
    panels = sorted(rows["panel"].unique())
    models = sorted(rows["model"].unique())
    ylabel = name
    if not depth:
        stats = _mean_sd(rows, ["panel", "model", "fraction", "layer"])
        fig = _lines_figure(
            stats,
            row_key="panel",
            col_key="model",
            hue_key="fraction",
            x_key="layer",
            row_order=panels,
            col_order=models,
            hue_order=fractions,
            colors=fraction_palette(fractions),
            hue_labels={f: _fraction_label(f) for f in fractions},
            legend_title="training data",
            xlabel="layer (0 = embeddings)",
            ylabel=ylabel,
            title=f"{title} (mean ± sd over seeds)",
            sharey="row",
        )
        _integer_xticks(np.array(fig.axes), stats["layer"].astype(float))
    else:
        stats = _mean_sd(rows, ["panel", "model", "fraction", "relative_depth"])
        palette = dict(palette or model_palette(models))
        fig = _lines_figure(
            stats,
            row_key="panel",
            col_key="fraction",
            hue_key="model",
            x_key="relative_depth",
            row_order=panels,
            col_order=fractions,
            hue_order=models,
            colors=palette,
            hue_labels={m: m for m in models},
            legend_title="model",
            xlabel="relative depth (0 = embeddings, 1 = last layer)",
            ylabel=ylabel,
            title=f"{title} (mean ± sd over seeds)",
            col_labels={f: _fraction_label(f) for f in fractions},
            sharey="row",
        )
    return _save(fig, stem)


def plot_selectivity(tidy: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Probe selectivity (task accuracy minus control-task accuracy) by layer; see
    :func:`plot_probing`."""
    return plot_probing(tidy, stem, "selectivity")


def plot_compression(tidy: pd.DataFrame, stem: str | Path) -> list[Path]:
    """MDL compression (uniform code length / online code length) by layer; see
    :func:`plot_probing`."""
    return plot_probing(tidy, stem, "compression")


# --------------------------------------------------------------------------------------------
# Change
# --------------------------------------------------------------------------------------------


def _change_rows(tidy: pd.DataFrame, measure: str, per_head: bool) -> pd.DataFrame:
    tidy = analysis.normalize_tidy(tidy)
    if tidy.empty:
        return tidy
    rows = tidy[(tidy["source"] == "change") & (tidy["measure"] == measure)]
    rows = rows.dropna(subset=["value", "layer"])
    if per_head:
        heads = rows[rows["head"] != "all"]
        return heads if not heads.empty else rows
    whole = rows[rows["head"] == "all"]
    if not whole.empty:
        return whole
    # Only per-head rows: the mean over heads stands in for the whole layer.
    keys = ["task", "model", "fraction", "seed", "layer", "relative_depth"]
    return rows.groupby(keys, dropna=False)["value"].mean().reset_index()


def plot_cka(tidy: pd.DataFrame, stem: str | Path, measure: str = "cka") -> list[Path]:
    """CKA between pre-trained and fine-tuned representations by layer, one line per fraction.

    Parameters
    ----------
    tidy
        Output of :func:`finescope.analysis.tidy_measures`.
    stem
        Output path without extension.
    measure
        Change measure to draw (``"cka"`` or ``"cka_debiased"``).

    Returns
    -------
    list[pathlib.Path]
        A panel per task (rows) x model (columns).
    """
    title = f"Representation similarity to the pre-trained model ({measure}) by layer"
    rows = _change_rows(tidy, measure, per_head=False)
    if rows.empty:
        return _no_data(stem, title)
    fractions = analysis.sorted_fractions(rows["fraction"])
    stats = _mean_sd(rows, ["task", "model", "fraction", "layer"])
    fig = _lines_figure(
        stats,
        row_key="task",
        col_key="model",
        hue_key="fraction",
        x_key="layer",
        row_order=sorted(stats["task"].unique()),
        col_order=sorted(stats["model"].unique()),
        hue_order=fractions,
        colors=fraction_palette(fractions),
        hue_labels={f: _fraction_label(f) for f in fractions},
        legend_title="training data",
        xlabel="layer (0 = embeddings)",
        ylabel=f"{measure} (1 = unchanged)",
        title=f"{title} (mean ± sd over seeds)",
        sharey=True,
    )
    _integer_xticks(np.array(fig.axes), stats["layer"].astype(float))
    return _save(fig, stem)


def plot_attention_heatmaps(tidy: pd.DataFrame, stem: str | Path, measure: str) -> list[Path]:
    """Attention change per layer x head: a heatmap per (task, model) row and fraction column.

    Parameters
    ----------
    tidy
        Output of :func:`finescope.analysis.tidy_measures`.
    stem
        Output path without extension.
    measure
        ``"attention_cosine"`` (similarity to the pre-trained attention, 1 = unchanged) or
        ``"attention_js"`` (Jensen-Shannon divergence, 0 = unchanged), or another change measure.

    Returns
    -------
    list[pathlib.Path]
        Cells are means over seeds; one shared colour scale. Without per-head rows the
        ``head == "all"`` values are drawn as a single column.
    """
    title = f"Attention change ({measure}) per layer and head"
    rows = _change_rows(tidy, measure, per_head=True)
    if rows.empty:
        return _no_data(stem, title)
    rows = rows.assign(panel=rows["task"] + " · " + rows["model"], head=rows["head"].astype(str))
    stats = rows.groupby(["panel", "fraction", "layer", "head"])["value"].mean().reset_index()
    panels = sorted(stats["panel"].unique())
    fractions = analysis.sorted_fractions(stats["fraction"])
    heads = sorted(
        stats["head"].unique(), key=lambda h: (not h.isdigit(), int(h or 0) if h.isdigit() else 0)
    )
    layers = sorted(stats["layer"].astype(int).unique())
    vmin, vmax = float(stats["value"].min()), float(stats["value"].max())
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    cmap = "magma" if "js" in measure else "viridis"
    nrows, ncols = len(panels), len(fractions)
    cell_w = max(1.8, 0.25 * len(heads) + 0.9)
    cell_h = max(1.6, 0.18 * len(layers) + 0.9)
    with matplotlib.rc_context(_RC):
        fig = _new_figure(cell_w * ncols + 1.6, cell_h * nrows + 0.9)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for (i, panel), (j, fraction) in (
            (r, c) for r in enumerate(panels) for c in enumerate(fractions)
        ):
            ax = axes[i, j]
            cell = stats[(stats["panel"] == panel) & (stats["fraction"] == fraction)]
            panel_layers = sorted(stats.loc[stats["panel"] == panel, "layer"].astype(int).unique())
            matrix = cell.pivot_table(index="layer", columns="head", values="value").reindex(
                index=panel_layers, columns=heads
            )
            _heatmap(ax, matrix, cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(f"{panel} · {_fraction_label(fraction)}")
            ax.set_xlabel("head" if i == nrows - 1 else "")
            ax.set_ylabel("layer" if j == 0 else "")
            ax.set_facecolor("0.9")
        fig.colorbar(
            ScalarMappable(Normalize(vmin, vmax), cmap=cmap),
            ax=axes,
            shrink=min(0.8, 6.0 / fig.get_figheight()),
            label=measure,
        )
        fig.suptitle(f"{title}\n(mean over seeds; grey = no value)")
    return _save(fig, stem)


# --------------------------------------------------------------------------------------------
# Correlations
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Fine-tuning runs: learning curves, confusion matrices
# --------------------------------------------------------------------------------------------


def _job_point(path: str | Path) -> dict:
    """``.../<task>/<model>/f<fraction>/s<seed>/<file>`` -> its grid point."""
    task, model, fraction, seed = Path(path).parts[-5:-1]
    return {"task": task, "model": model, "fraction": fraction[1:], "seed": int(seed[1:])}


def read_curves(paths: Iterable[str | Path]) -> pd.DataFrame:
    """The ``curve.csv`` of fine-tuning jobs in one frame, with task, model, fraction, seed.

    Parameters
    ----------
    paths
        ``results/finetune/<task>/<model>/f<fraction>/s<seed>/curve.csv`` files.

    Returns
    -------
    pandas.DataFrame
        Columns task, model, fraction (str), seed, then the curve's columns
        (:data:`finescope.finetune.CURVE_COLUMNS`); empty ``dev_score`` cells are NaN.
    """
    frames = []
    for path in paths:
        frame = pd.read_csv(path)
        if frame.empty:
            continue
        for key, value in reversed(_job_point(path).items()):
            frame.insert(0, key, value)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["task", "model", "fraction", "seed", "step", "loss"])
    return pd.concat(frames, ignore_index=True)


def plot_learning_curves(
    curves: pd.DataFrame, stem: str | Path, palette: Mapping[str, str] | None = None
) -> list[Path]:
    """Training loss and dev score vs optimiser step, one line per fraction (mean over seeds,
    band = min to max over seeds), a row per task × model.

    Parameters
    ----------
    curves
        Output of :func:`read_curves`.
    stem
        Output path without extension.
    palette
        ``{fraction: colour}``; default :func:`fraction_palette`.
    """
    title = "Learning curves of the fine-tuning runs"
    if curves is None or curves.empty:
        return _no_data(stem, title)
    curves = curves.assign(fraction=curves["fraction"].astype(str))
    fractions = analysis.sorted_fractions(curves["fraction"])
    colors = dict(palette or fraction_palette(fractions))
    rows = sorted({(t, m) for t, m in zip(curves["task"], curves["model"], strict=True)})
    columns = [("loss", "training loss"), ("dev_score", "dev score (after each epoch)")]
    with matplotlib.rc_context(_RC), sns.axes_style("whitegrid"):
        fig = _new_figure(8.5, 2.4 * len(rows) + 1.2)
        axes = fig.subplots(len(rows), 2, squeeze=False, sharex="row")
        for i, (task, model) in enumerate(rows):
            part = curves[(curves["task"] == task) & (curves["model"] == model)]
            for j, (column, label) in enumerate(columns):
                ax = axes[i, j]
                for fraction in fractions:
                    line = part[part["fraction"] == fraction].dropna(subset=[column])
                    if line.empty:
                        continue
                    stats = line.groupby("step")[column].agg(["mean", "min", "max", "count"])
                    x = stats.index.to_numpy(float)
                    ax.plot(
                        x,
                        stats["mean"],
                        color=colors.get(fraction, "black"),
                        marker="o" if column == "dev_score" else None,
                        markersize=3,
                        linewidth=1.2,
                    )
                    if (stats["count"] > 1).any():
                        ax.fill_between(
                            x,
                            stats["min"],
                            stats["max"],
                            color=colors.get(fraction, "black"),
                            alpha=0.2,
                            linewidth=0,
                        )
                ax.set_title(f"{task} · {model} · {label}")
                if i == len(rows) - 1:
                    ax.set_xlabel("optimiser step")
        handles = [Line2D([], [], color=colors.get(f, "black")) for f in fractions]
        fig.legend(
            handles,
            [_fraction_label(f) for f in fractions],
            title="training data (band: range over seeds)",
            loc="outside lower center",
            ncols=min(len(fractions), 6),
        )
        fig.suptitle(title)
    return _save(fig, stem)


def read_predictions(metrics_paths: Iterable[str | Path]) -> pd.DataFrame:
    """Test predictions stored in fine-tuning ``metrics.json`` files (``test_predictions``), one
    row per item (NLI) or word (NER).

    Returns
    -------
    pandas.DataFrame
        Columns task, model, fraction (str), seed, id, gold, predicted; runs written before
        predictions were stored are left out.
    """
    from finescope.io import read_json

    rows = []
    for path in metrics_paths:
        metrics = read_json(path)
        stored = metrics.get("test_predictions")
        if not stored:
            continue
        point = _job_point(path)
        ner = metrics.get("task") == "ner"
        for item, gold, pred in zip(
            stored["ids"], stored["gold"], stored["predicted"], strict=True
        ):
            if ner:
                for g, q in zip(gold.split(), pred.split(), strict=True):
                    rows.append({**point, "id": item, "gold": g, "predicted": q})
            else:
                rows.append({**point, "id": item, "gold": gold, "predicted": pred})
    columns = ["task", "model", "fraction", "seed", "id", "gold", "predicted"]
    return pd.DataFrame(rows, columns=columns)


def _label_order(labels: Iterable[str]) -> list[str]:
    """``O`` first, then IOB2 tags by entity type (B before I), other labels sorted."""
    labels = set(labels)

    def key(label: str) -> tuple:
        if label == "O":
            return (0, "", "")
        if label[:2] in ("B-", "I-"):
            return (1, label[2:], label[0])
        return (2, label, "")

    return sorted(labels, key=key)


def plot_confusion(predictions: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Confusion matrix of the test predictions at the largest fraction, one panel per task
    (row) and model (column), summed over seeds.

    Cells are normalised by row (share of each gold label), with the counts written in them;
    NER is counted per word, by IOB2 tag.
    """
    title = "Test confusion matrices at the largest fraction (rows = gold, share of the row)"
    if predictions is None or predictions.empty:
        return _no_data(stem, title)
    predictions = predictions.assign(
        _f=pd.to_numeric(predictions["fraction"], errors="coerce")
    ).dropna(subset=["_f"])
    panels = []
    for task in sorted(predictions["task"].unique()):
        part = predictions[predictions["task"] == task]
        largest = part["_f"].max()
        part = part[part["_f"] == largest]
        labels = _label_order(set(part["gold"]) | set(part["predicted"]))
        for model in sorted(part["model"].unique()):
            panels.append((task, model, largest, labels, part[part["model"] == model]))
    ncols = max(len([p for p in panels if p[0] == t]) for t in {p[0] for p in panels})
    tasks = sorted({p[0] for p in panels})
    size = max(2.8, 0.42 * max(len(p[3]) for p in panels) + 1.6)
    cmap = sns.color_palette("Blues", as_cmap=True)
    with matplotlib.rc_context(_RC):
        fig = _new_figure(size * ncols + 1.2, size * len(tasks) + 0.8)
        axes = fig.subplots(len(tasks), ncols, squeeze=False)
        used = set()
        for task_index, task in enumerate(tasks):
            row_panels = [p for p in panels if p[0] == task]
            for j, (_, model, largest, labels, part) in enumerate(row_panels):
                ax = axes[task_index, j]
                counts = pd.crosstab(part["gold"], part["predicted"]).reindex(
                    index=labels, columns=labels, fill_value=0
                )
                totals = counts.sum(axis=1).replace(0, np.nan)
                share = counts.div(totals, axis=0)
                marks = counts.to_numpy().astype(str)
                _heatmap(ax, share, cmap=cmap, vmin=0, vmax=1, gaps=True)
                for (r, c), text in np.ndenumerate(marks):
                    value = share.to_numpy(float)[r, c]
                    ax.text(
                        c + 0.5,
                        r + 0.5,
                        text,
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if np.isfinite(value) and value > 0.6 else "black",
                    )
                seeds = part["seed"].nunique()
                ax.set_title(f"{task} · {model} · {largest:g} % ({seeds} seed(s))")
                ax.set_xlabel("predicted")
                ax.set_ylabel("gold" if j == 0 else "")
                ax.tick_params(axis="x", labelrotation=45)
                ax.set_facecolor("0.9")
                used.add((task_index, j))
        _finish_grid(axes, used)
        fig.colorbar(
            ScalarMappable(Normalize(0, 1), cmap=cmap),
            ax=axes,
            shrink=0.6,
            label="share of the gold label's items",
        )
        fig.suptitle(title)
    return _save(fig, stem)


# --------------------------------------------------------------------------------------------
# Probe heatmaps, attention example
# --------------------------------------------------------------------------------------------

# (measure, label) rows of the probe heatmap; None = the probe score.
PROBE_HEATMAP_MEASURES = (
    (None, "probe score"),
    ("selectivity", "selectivity (task − control)"),
    ("compression", "MDL compression"),
)


def plot_probe_heatmaps(tidy: pd.DataFrame, stem: str | Path, probe: str = "linear") -> list[Path]:
    """Probe measures as heatmaps: layer (rows, top = last layer) × training data (columns),
    one panel per model, a row of panels per task × measure (probe score, selectivity, MDL
    compression) of ``probe`` (the first probe in sorted order when it is absent).
    Cells are means over seeds; each row of panels shares one colour scale."""
    title = "Probing by layer and training data"
    tidy = analysis.normalize_tidy(tidy)
    prob = tidy[tidy["source"] == "probing"].dropna(subset=["value", "layer"])
    if prob.empty:
        return _no_data(stem, title)
    probes = sorted(prob["probe"].dropna().unique())
    probe = probe if probe in probes else probes[0]
    prob = prob[prob["probe"] == probe]
    rows = []
    for task in sorted(prob["task"].unique()):
        part = prob[prob["task"] == task]
        for measure, label in PROBE_HEATMAP_MEASURES:
            if measure is None:
                measure = next(
                    (m for m in PROBE_SCORE_MEASURES if (part["measure"] == m).any()), None
                )
                label = f"probe score ({measure})"
            if measure is not None and (part["measure"] == measure).any():
                rows.append((task, measure, label, part[part["measure"] == measure]))
    if not rows:
        return _no_data(stem, title)
    models = sorted(prob["model"].unique())
    fractions = analysis.sorted_fractions(prob["fraction"])
    n_layers = int(prob["layer"].max()) + 1
    cell_h = max(1.8, 0.12 * n_layers + 1.0)
    cmap = "viridis"
    with matplotlib.rc_context(_RC):
        fig = _new_figure(max(2.6 * len(models) + 2.0, 6.0), cell_h * len(rows) + 0.8)
        axes = fig.subplots(len(rows), len(models), squeeze=False)
        for i, (task, measure, label, part) in enumerate(rows):
            means = part.groupby(["model", "fraction", "layer"])["value"].mean().reset_index()
            vmin, vmax = float(means["value"].min()), float(means["value"].max())
            if vmin == vmax:
                vmin, vmax = vmin - 0.5, vmax + 0.5
            for j, model in enumerate(models):
                ax = axes[i, j]
                cell = means[means["model"] == model]
                layers = sorted(cell["layer"].astype(int).unique(), reverse=True)
                matrix = cell.pivot_table(index="layer", columns="fraction", values="value")
                matrix = matrix.reindex(index=layers, columns=fractions)
                matrix.columns = [
                    _fraction_label(f).replace(" (pre-trained)", "") for f in fractions
                ]
                _heatmap(ax, matrix, cmap=cmap, vmin=vmin, vmax=vmax)
                ax.set_facecolor("0.9")
                if len(layers) > 16:
                    step = math.ceil(len(layers) / 12)
                    ax.set_yticks(
                        np.arange(len(layers))[::step] + 0.5, [str(v) for v in layers[::step]]
                    )
                ax.set_title(f"{task} · {model} · {label}")
                ax.set_ylabel("layer (0 = embeddings)" if j == 0 else "")
                ax.set_xlabel("training data" if i == len(rows) - 1 else "")
                ax.tick_params(axis="x", labelrotation=30)
            fig.colorbar(
                ScalarMappable(Normalize(vmin, vmax), cmap=cmap), ax=axes[i, :], label=measure
            )
        fig.suptitle(f"{title}\n({probe} probe; mean over seeds; grey = no value)")
    return _save(fig, stem)


def attention_example(pre_cache: str | Path, ft_cache: str | Path, sequence: int = 0) -> dict:
    """One stored attention map before and after fine-tuning: the top layer's head whose
    attention moved most (largest Jensen-Shannon divergence) on stored sequence ``sequence``.

    Returns
    -------
    dict
        ``pre`` and ``ft`` (T x T arrays, rows = queries), ``tokens`` (T strings; positions when
        the cache stores none), ``layer`` (block number, 1 = first block), ``head``, ``js`` and
        ``cosine`` of that head; ``{}`` when the caches hold no attention maps.
    """
    from finescope.cache import Cache
    from finescope.compare import attention_measures

    pre, ft = Cache(pre_cache), Cache(ft_cache)
    if not pre.n_attention or not ft.n_attention:
        return {}
    a, b = pre.attention(sequence), ft.attention(sequence)
    top = a.shape[0] - 1
    measures = attention_measures(a[top : top + 1], b[top : top + 1])
    head = int(np.argmax(measures["attention_js"][0]))
    tokens = (pre.meta["attention"].get("tokens") or [None] * (sequence + 1))[sequence]
    if tokens is None:
        tokens = [str(t) for t in range(a.shape[-1])]
    return {
        "pre": a[top, head],
        "ft": b[top, head],
        "tokens": [str(t) for t in tokens],
        "layer": top + 1,
        "head": head,
        "js": float(measures["attention_js"][0, head]),
        "cosine": float(measures["attention_cosine"][0, head]),
    }


def plot_attention_example(
    examples: Mapping[tuple[str, str, str], dict], stem: str | Path, max_tokens: int = 40
) -> list[Path]:
    """Token × token attention of one sentence before and after fine-tuning, a row per
    ``(task, model, fraction)`` key of ``examples`` (values from :func:`attention_example`):
    pre-trained, fine-tuned and their difference, at the top layer's most-changed head.
    Sentences longer than ``max_tokens`` show their first ``max_tokens`` tokens."""
    title = "Attention of one test sentence, top layer, the head fine-tuning changed most"
    examples = {k: v for k, v in examples.items() if v}
    if not examples:
        return _no_data(stem, title, "no attention maps stored (extract.attention_items: 0)")
    keys = sorted(examples)
    n = min(max_tokens, max(len(examples[k]["tokens"]) for k in keys))
    size = max(3.0, 0.16 * n + 1.4)
    with matplotlib.rc_context(_RC):
        fig = _new_figure(3 * size + 1.0, size * len(keys) + 0.8)
        axes = fig.subplots(len(keys), 3, squeeze=False)
        for i, key in enumerate(keys):
            task, model, fraction = key
            ex = examples[key]
            t = min(max_tokens, len(ex["tokens"]))
            tokens = [tok.replace("Ġ", "_").replace("▁", "_") for tok in ex["tokens"][:t]]
            pre, ft = ex["pre"][:t, :t], ex["ft"][:t, :t]
            diff = ft - pre
            bound = float(np.abs(diff).max()) or 1.0
            panels = (
                (pre, "pre-trained", "viridis", 0.0, float(max(pre.max(), ft.max()))),
                (
                    ft,
                    f"fine-tuned ({_fraction_label(fraction)})",
                    "viridis",
                    0.0,
                    float(max(pre.max(), ft.max())),
                ),
                (
                    diff,
                    "fine-tuned − pre-trained",
                    sns.color_palette("vlag", as_cmap=True),
                    -bound,
                    bound,
                ),
            )
            for j, (matrix, label, cmap, vmin, vmax) in enumerate(panels):
                ax = axes[i, j]
                frame = pd.DataFrame(matrix, index=tokens, columns=tokens)
                _heatmap(ax, frame, cmap=cmap, vmin=vmin, vmax=vmax)
                ax.tick_params(axis="x", labelrotation=90, labelsize=6)
                ax.tick_params(axis="y", labelsize=6)
                ax.set_title(
                    f"{task} · {model} · {label}\nlayer {ex['layer']}, head {ex['head']}"
                    + (f" (JS {ex['js']:.3f}, cosine {ex['cosine']:.3f})" if j == 2 else "")
                )
                ax.set_xlabel("attended token (key)")
                ax.set_ylabel("query token" if j == 0 else "")
                fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap=cmap), ax=ax, shrink=0.7)
        fig.suptitle(title)
    return _save(fig, stem)


# --------------------------------------------------------------------------------------------
# All figures
# --------------------------------------------------------------------------------------------


def make_all_figures(
    tidy: pd.DataFrame,
    correlations: pd.DataFrame,
    out_dir: str | Path,
    *,
    curves: pd.DataFrame | None = None,
    predictions: pd.DataFrame | None = None,
    attention: Mapping[tuple[str, str, str], dict] | None = None,
) -> dict[str, list[Path]]:
    """Draw every figure in ``FIGURES`` into ``out_dir``.

    Parameters
    ----------
    tidy
        Output of :func:`finescope.analysis.tidy_measures`.
    correlations
        Output of :func:`finescope.analysis.correlate`.
    out_dir
        Folder; created if needed.
    curves, predictions, attention
        :func:`read_curves`, :func:`read_predictions` and ``{(task, model, fraction):``
        :func:`attention_example` ``}``; None draws "no data" for those figures.

    Returns
    -------
    dict[str, list[pathlib.Path]]
        ``{name: [out_dir/<name>.png, out_dir/<name>.svg]}`` for every name in ``FIGURES``
        (always all of them; empty inputs give "no data" images).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tidy = analysis.normalize_tidy(tidy)
    palette = model_palette(tidy["model"]) if not tidy.empty else {}
    stem = {name: out_dir / name for name in FIGURES}
    return {
        "downstream": plot_downstream(tidy, stem["downstream"], palette),
        "probing": plot_probing(tidy, stem["probing"]),
        "probing_depth": plot_probing(tidy, stem["probing_depth"], depth=True, palette=palette),
        "selectivity": plot_selectivity(tidy, stem["selectivity"]),
        "compression": plot_compression(tidy, stem["compression"]),
        "cka": plot_cka(tidy, stem["cka"]),
        "attention_cosine": plot_attention_heatmaps(
            tidy, stem["attention_cosine"], "attention_cosine"
        ),
        "attention_js": plot_attention_heatmaps(tidy, stem["attention_js"], "attention_js"),
        "correlations": plot_correlation_heatmap(correlations, stem["correlations"]),
        "scatter": plot_top_scatter(tidy, correlations, stem["scatter"], palette),
        "learning_curves": plot_learning_curves(curves, stem["learning_curves"]),
        "probe_heatmap": plot_probe_heatmaps(tidy, stem["probe_heatmap"]),
        "confusion": plot_confusion(predictions, stem["confusion"]),
        "attention_example": plot_attention_example(attention or {}, stem["attention_example"]),
    }
