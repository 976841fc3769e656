"""Shared pieces of the figures: names, palettes, styles, saving and the line-plot grid."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import to_hex
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
