"""Every figure of a run from its tables, in one call."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import pandas as pd

from finescope import analysis, job
from finescope.figures.change import plot_attention_heatmaps, plot_cka
from finescope.figures.common import FIGURES, model_palette
from finescope.figures.correlations import plot_correlation_heatmap, plot_top_scatter
from finescope.figures.finetuning import (
    plot_confusion,
    plot_learning_curves,
    read_curves,
    read_predictions,
)
from finescope.figures.heatmaps import (
    attention_example,
    plot_attention_example,
    plot_probe_heatmaps,
)
from finescope.figures.scores import (
    plot_compression,
    plot_downstream,
    plot_probing,
    plot_selectivity,
)


def make_all_figures(
    tidy: pd.DataFrame,
    correlations: pd.DataFrame,
    out_dir: str | Path,
    *,
    curves: pd.DataFrame | None = None,
    predictions: pd.DataFrame | None = None,
    attention: Mapping[tuple[str, str, str], dict] | None = None,
    n_jobs: int = 1,
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
    n_jobs
        Worker processes drawing figures side by side (the files are the same for any count).

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
    drawings = {
        "downstream": (plot_downstream, tidy, stem["downstream"], palette),
        "probing": (plot_probing, tidy, stem["probing"]),
        "probing_depth": (
            partial(plot_probing, depth=True, palette=palette),
            tidy,
            stem["probing_depth"],
        ),
        "selectivity": (plot_selectivity, tidy, stem["selectivity"]),
        "compression": (plot_compression, tidy, stem["compression"]),
        "cka": (plot_cka, tidy, stem["cka"]),
        "attention_cosine": (
            plot_attention_heatmaps,
            tidy,
            stem["attention_cosine"],
            "attention_cosine",
        ),
        "attention_js": (plot_attention_heatmaps, tidy, stem["attention_js"], "attention_js"),
        "correlations": (plot_correlation_heatmap, correlations, stem["correlations"]),
        "scatter": (plot_top_scatter, tidy, correlations, stem["scatter"], palette),
        "learning_curves": (plot_learning_curves, curves, stem["learning_curves"]),
        "probe_heatmap": (plot_probe_heatmaps, tidy, stem["probe_heatmap"]),
        "confusion": (plot_confusion, predictions, stem["confusion"]),
        "attention_example": (
            plot_attention_example,
            attention or {},
            stem["attention_example"],
        ),
    }
    if n_jobs == 1:
        drawn = [draw(*args) for draw, *args in drawings.values()]
    else:
        from joblib import Parallel, delayed

        # Each figure is independent; drawing them is most of the figures job (matplotlib).
        drawn = Parallel(n_jobs=n_jobs)(delayed(draw)(*args) for draw, *args in drawings.values())
    return dict(zip(drawings, drawn, strict=True))


def figures_job(
    measures_path: str,
    correlations_path: str,
    out_dir: str | Path,
    curve_paths: list[str] = (),
    metrics_paths: list[str] = (),
    points: list[dict] = (),
    attention_pairs: list[tuple[str, str]] = (),
    attention_points: list[dict] = (),
    tracking: dict | None = None,
    grid: dict | None = None,
    n_jobs: int = 1,
) -> None:
    """Every figure. ``points[i]`` is the grid point of ``curve_paths[i]`` and
    ``metrics_paths[i]``; ``attention_pairs`` are (pre-trained, fine-tuned) test caches of the
    attention example, at ``attention_points``. With tracking on, the analysis run is logged
    here too."""

    examples = {}
    for (pre, ft), point in zip(attention_pairs, attention_points, strict=True):
        key = (point["task"], point["model"], point["fraction"])
        examples[key] = attention_example(pre, ft)
    tidy = pd.read_parquet(measures_path)
    correlations = pd.read_csv(correlations_path)
    written = make_all_figures(
        tidy,
        correlations,
        out_dir,
        curves=read_curves(curve_paths, points),
        predictions=read_predictions(metrics_paths, points),
        attention=examples,
        n_jobs=n_jobs,
    )
    job.log.info("figures: %s", {name: [str(p) for p in paths] for name, paths in written.items()})
    from finescope import tracking as track

    if track.enabled(tracking):
        downstream = tidy[tidy["source"] == "downstream"]
        pngs = [paths[0] for paths in written.values()]
        track.log_analysis_run(tracking, downstream, correlations, grid, pngs)
