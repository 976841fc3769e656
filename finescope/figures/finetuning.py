"""Fine-tuning runs: learning curves and confusion matrices."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D

from finescope import analysis
from finescope.figures.common import (
    _RC,
    _finish_grid,
    _fraction_label,
    _heatmap,
    _new_figure,
    _no_data,
    _save,
    fraction_palette,
)


def read_curves(paths: Iterable[str | Path], points: Iterable[Mapping]) -> pd.DataFrame:
    """The ``curve.csv`` of fine-tuning jobs in one frame, with task, model, fraction, seed.

    Parameters
    ----------
    paths
        ``results/finetune/<task>/<model>/f<fraction>/s<seed>/curve.csv`` files.
    points
        The grid point (task, model, fraction, seed) of each path, in the same order.

    Returns
    -------
    pandas.DataFrame
        Columns task, model, fraction (str), seed, then the curve's columns
        (:data:`finescope.finetune.CURVE_COLUMNS`); empty ``dev_score`` cells are NaN.
    """
    frames = []
    for path, point in zip(paths, points, strict=True):
        frame = pd.read_csv(path)
        if frame.empty:
            continue
        for key, value in reversed(dict(point).items()):
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


def read_predictions(
    metrics_paths: Iterable[str | Path], points: Iterable[Mapping]
) -> pd.DataFrame:
    """Test predictions stored in fine-tuning ``metrics.json`` files (``test_predictions``), one
    row per item (NLI) or word (NER); ``points`` are their grid points, in the same order.

    Returns
    -------
    pandas.DataFrame
        Columns task, model, fraction (str), seed, id, gold, predicted; runs written before
        predictions were stored are left out.
    """
    from finescope.io import read_json

    rows = []
    for path, point in zip(metrics_paths, points, strict=True):
        metrics = read_json(path)
        stored = metrics.get("test_predictions")
        if not stored:
            continue
        point = {k: point[k] for k in ("task", "model", "fraction", "seed")}
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
