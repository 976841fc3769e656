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

from finescope.figures.change import plot_attention_heatmaps, plot_cka
from finescope.figures.common import (
    FIGURES,
    RANDOM_COLOR,
    figure_paths,
    fraction_palette,
    model_palette,
)
from finescope.figures.correlations import (
    plot_correlation_heatmap,
    plot_top_scatter,
    top_correlations,
)
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
from finescope.figures.make import figures_job, make_all_figures
from finescope.figures.scores import plot_downstream

__all__ = [
    "FIGURES",
    "RANDOM_COLOR",
    "attention_example",
    "figure_paths",
    "figures_job",
    "fraction_palette",
    "make_all_figures",
    "model_palette",
    "plot_attention_example",
    "plot_attention_heatmaps",
    "plot_cka",
    "plot_confusion",
    "plot_correlation_heatmap",
    "plot_downstream",
    "plot_learning_curves",
    "plot_probe_heatmaps",
    "plot_top_scatter",
    "read_curves",
    "read_predictions",
    "top_correlations",
]
