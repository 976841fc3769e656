"""Probe heatmaps (layer by fraction) and one sentence's attention before and after."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from finescope import analysis
from finescope.figures.common import (
    _RC,
    PROBE_SCORE_MEASURES,
    _fraction_label,
    _heatmap,
    _new_figure,
    _no_data,
    _save,
)

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
