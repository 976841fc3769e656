"""Small summaries shared by the figures and the text summary."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from finescope.analysis.features import normalize_tidy
from finescope.analysis.settings import RANDOM


def downstream_stats(tidy: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd and count over seeds of the downstream score per task x model x fraction.

    Parameters
    ----------
    tidy
        Output of :func:`tidy_measures`.

    Returns
    -------
    pandas.DataFrame
        Columns task, model, fraction (float percent), mean, sd (NaN with one seed), n.
    """
    tidy = normalize_tidy(tidy)
    down = tidy[(tidy["source"] == "downstream") & (tidy["measure"] == "score")]
    down = down[down["fraction"] != RANDOM]
    if down.empty:
        return pd.DataFrame(columns=["task", "model", "fraction", "mean", "sd", "n"])
    down = down.assign(fraction=down["fraction"].astype(float))
    return (
        down.groupby(["task", "model", "fraction"])["value"]
        .agg(mean="mean", sd="std", n="count")
        .reset_index()
        .sort_values(["task", "model", "fraction"], kind="stable")
        .reset_index(drop=True)
    )


def primary_metric(tidy: pd.DataFrame, task: str) -> str:
    """Name of the metric the downstream ``score`` copies for ``task`` ("score" if unclear)."""
    down = tidy[(tidy["source"] == "downstream") & (tidy["task"] == task)]
    if down.empty:
        return "score"
    wide = down.pivot_table(
        index=["model", "fraction", "seed"], columns="measure", values="value", aggfunc="mean"
    )
    if "score" not in wide.columns:
        return "score"
    for name in sorted(c for c in wide.columns if c != "score"):
        if np.allclose(wide[name], wide["score"], rtol=0, atol=1e-12, equal_nan=True):
            return str(name)
    return "score"


def feature_label(measure_source: str, probe: Any, measure: str) -> str:
    """Human-readable name of a feature, e.g. "mlp probe macro_f1" or "change cka"."""
    if measure_source == "probing" and isinstance(probe, str) and probe:
        return f"{probe} probe {measure}"
    return f"{measure_source} {measure}"
