"""Downstream scores against training fraction, and probe scores against layer."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from finescope import analysis
from finescope.figures.common import (
    _RC,
    MARKERS,
    PROBE_SCORE_MEASURES,
    _fraction_label,
    _integer_xticks,
    _lines_figure,
    _mean_sd,
    _new_figure,
    _no_data,
    _save,
    fraction_palette,
    model_palette,
)


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
