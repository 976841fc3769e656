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
        fig.legend(
            handles,
            [hue_labels.get(h, str(h)) for h in hue_order],
            title=legend_title,
            loc="outside right upper",
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


def _correlation_view(correlations: pd.DataFrame, scope: str, method: str) -> pd.DataFrame:
    if correlations is None or correlations.empty:
        return pd.DataFrame()
    view = correlations[
        (correlations["scope"] == scope)
        & (correlations["method"] == method)
        & (correlations["model"] == "all")
    ]
    return view.assign(
        feature=[
            analysis.feature_label(s, p, m)
            for s, p, m in zip(view["measure_source"], view["probe"], view["measure"], strict=True)
        ],
        layer=view["layer"].astype(str),
    )


def plot_correlation_heatmap(
    correlations: pd.DataFrame,
    stem: str | Path,
    scope: str = "across",
    method: str = "spearman",
) -> list[Path]:
    """Heatmap of correlation coefficients, measures (rows) x layers and aggregates (columns).

    Parameters
    ----------
    correlations
        Output of :func:`finescope.analysis.correlate`.
    stem
        Output path without extension.
    scope, method
        Which coefficients to draw (``model == "all"``).

    Returns
    -------
    list[pathlib.Path]
        One panel per task; ``*`` marks q < 0.05 (Benjamini-Hochberg); grey cells have no
        coefficient (too few points or constant input).
    """
    title = f"Correlation of downstream score with internal measures ({method}, {scope})"
    view = _correlation_view(correlations, scope, method)
    if view.empty:
        return _no_data(stem, title)
    tasks = sorted(view["task"].unique())
    features = sorted(view["feature"].unique())
    layers = sorted(view["layer"].unique(), key=analysis.layer_sort_key)
    cmap = sns.color_palette("vlag", as_cmap=True)
    with matplotlib.rc_context(_RC):
        fig = _new_figure(0.42 * len(layers) + 4.5, (0.3 * len(features) + 1.3) * len(tasks))
        axes = fig.subplots(len(tasks), 1, squeeze=False)
        for i, task in enumerate(tasks):
            ax = axes[i, 0]
            part = view[view["task"] == task]
            coef = part.pivot_table(
                index="feature", columns="layer", values="coefficient", aggfunc="mean", dropna=False
            )
            coef = coef.reindex(index=features, columns=layers)
            q = part.pivot_table(
                index="feature", columns="layer", values="q_value", aggfunc="min", dropna=False
            ).reindex(index=features, columns=layers)
            marks = np.where((q.to_numpy(float) < SIGNIFICANCE) & coef.notna().to_numpy(), "*", "")
            _heatmap(ax, coef, cmap=cmap, vmin=-1, vmax=1, marks=marks, gaps=True)
            ax.set_facecolor("0.88")
            ax.set_title(f"{task}   (* q < {SIGNIFICANCE}, grey = not computable)")
            ax.set_xlabel("layer (0 = embeddings) or aggregate over layers")
            ax.set_ylabel("")
        fig.colorbar(
            ScalarMappable(Normalize(-1, 1), cmap=cmap),
            ax=axes,
            shrink=0.6,
            label=f"{method} coefficient",
        )
        fig.suptitle(title)
    return _save(fig, stem)


_LAYER_WORDS = {
    "best": "best layer",
    "mean": "mean over layers",
    "last": "last layer",
    "best_depth": "relative depth of the best layer",
}


def format_q(q: float) -> str:
    """``"q = 0.012"``; very small values as ``"q < 1e-10"``; missing as ``"q n/a"``."""
    if q is None or not math.isfinite(q):
        return "q n/a"
    if q < 1e-10:
        return "q < 1e-10"
    return f"q = {q:.2g}"


def top_correlations(
    correlations: pd.DataFrame, scope: str = "across", method: str = "spearman"
) -> pd.DataFrame:
    """Per task, the row with the largest |coefficient| (ties: smaller q, then table order).

    Parameters
    ----------
    correlations
        Output of :func:`finescope.analysis.correlate`.
    scope, method
        Which coefficients to rank (``model == "all"``).

    Returns
    -------
    pandas.DataFrame
        One row per task with a finite coefficient, columns as ``correlations``.
    """
    if correlations is None or correlations.empty:
        return pd.DataFrame(columns=analysis.CORRELATION_COLUMNS)
    view = correlations[
        (correlations["scope"] == scope)
        & (correlations["method"] == method)
        & (correlations["model"] == "all")
        & correlations["coefficient"].notna()
    ]
    if view.empty:
        return pd.DataFrame(columns=analysis.CORRELATION_COLUMNS)
    view = view.assign(_abs=-view["coefficient"].abs(), _q=view["q_value"].fillna(2.0))
    view = view.sort_values(["task", "_abs", "_q"], kind="stable")
    return (
        view.groupby("task", sort=True).head(1).drop(columns=["_abs", "_q"]).reset_index(drop=True)
    )


def plot_top_scatter(
    tidy: pd.DataFrame,
    correlations: pd.DataFrame,
    stem: str | Path,
    palette: Mapping[str, str] | None = None,
    scope: str = "across",
    method: str = "spearman",
) -> list[Path]:
    """Downstream score vs the measure most correlated with it, one panel per task.

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
        Which coefficients choose the measure (see :func:`top_correlations`).

    Returns
    -------
    list[pathlib.Path]
        Colour = model, marker = fraction; one point per grid point.
    """
    title = "Downstream score vs the most correlated internal measure"
    top = top_correlations(correlations, scope, method)
    features = analysis.feature_table(tidy) if not top.empty else pd.DataFrame()
    if top.empty or features.empty:
        return _no_data(stem, title)
    palette = dict(palette or model_palette(features["model"]))
    fractions = sorted(features["fraction"].unique())
    marker_of = {f: MARKERS[k % len(MARKERS)] for k, f in enumerate(fractions)}
    with matplotlib.rc_context(_RC), sns.axes_style("whitegrid"):
        fig = _new_figure(4.3 * len(top) + 2.2, 3.8)
        axes = fig.subplots(1, len(top), squeeze=False)
        models_drawn: set[str] = set()
        for j, row in enumerate(top.itertuples(index=False)):
            ax = axes[0, j]
            mask = (
                (features["task"] == row.task)
                & (features["measure_source"] == row.measure_source)
                & (features["measure"] == row.measure)
                & (features["layer"] == str(row.layer))
            )
            if isinstance(row.probe, str):
                mask &= features["probe"] == row.probe
            points = features[mask]
            for (model, fraction), group in points.groupby(["model", "fraction"]):
                models_drawn.add(model)
                ax.scatter(
                    group["x"],
                    group["score"],
                    color=palette.get(model, "black"),
                    marker=marker_of[fraction],
                    s=30,
                    alpha=0.85,
                    edgecolors="white",
                    linewidths=0.5,
                )
            where = _LAYER_WORDS.get(str(row.layer), f"layer {row.layer}")
            label = analysis.feature_label(row.measure_source, row.probe, row.measure)
            ax.set_xlabel(f"{label} ({where})")
            ax.set_ylabel(f"downstream score ({analysis.primary_metric(tidy, row.task)})")
            ax.set_title(
                f"{row.task}: {method} {row.coefficient:+.2f} "
                f"({format_q(row.q_value)}, n = {row.n})"
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
# All figures
# --------------------------------------------------------------------------------------------


def make_all_figures(
    tidy: pd.DataFrame, correlations: pd.DataFrame, out_dir: str | Path
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
    }
