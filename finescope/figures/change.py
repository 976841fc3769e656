"""Representation and attention change: CKA and attention measures by layer."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from finescope import analysis
from finescope.figures.common import (
    _RC,
    _fraction_label,
    _heatmap,
    _integer_xticks,
    _lines_figure,
    _mean_sd,
    _new_figure,
    _no_data,
    _save,
    fraction_palette,
)


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
