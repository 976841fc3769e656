"""Reference implementations, the plain way: the baselines the benchmarks measure against and
what the tests check the package's fast versions with. Not used by the workflow."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from finescope.compare import ATTENTION_MEASURES
from finescope.errors import FinescopeError


def reference_attention_measures(att_a: np.ndarray, att_b: np.ndarray) -> dict[str, np.ndarray]:
    """The same measures as :func:`finescope.compare.attention_measures`, computed the plain
    way: one head and one row at a time with scipy's distance and entropy functions. Slow; kept
    to check the fast version and as the baseline of benchmarks.

    Parameters
    ----------
    att_a, att_b
        ``(H, T, T)`` attention maps of one sequence.

    Returns
    -------
    dict
        Measure name -> ``(H,)`` array.
    """
    from scipy.spatial.distance import cosine, jensenshannon
    from scipy.stats import entropy

    n_heads, n_rows = att_a.shape[0], att_a.shape[1]
    out = {name: np.zeros(n_heads) for name in ATTENTION_MEASURES}
    for h in range(n_heads):
        a = np.asarray(att_a[h], dtype=np.float64)
        b = np.asarray(att_b[h], dtype=np.float64)
        a = a / a.sum(axis=1, keepdims=True)
        b = b / b.sum(axis=1, keepdims=True)
        out["attention_cosine"][h] = 1.0 - cosine(a.ravel(), b.ravel())
        js, ent_a, ent_b = [], [], []
        for r in range(n_rows):
            js.append(jensenshannon(a[r], b[r]) ** 2)
            ent_a.append(entropy(a[r]))
            ent_b.append(entropy(b[r]))
        out["attention_js"][h] = np.mean(js)
        out["attention_entropy_change"][h] = np.mean(ent_b) - np.mean(ent_a)
    return out


def layerwise_logreg_baseline(
    X_train_layers: Sequence[np.ndarray] | np.ndarray,
    y_train: Sequence,
    X_test_layers: Sequence[np.ndarray] | np.ndarray,
    y_test: Sequence,
) -> pd.DataFrame:
    """The plain way: ``sklearn.linear_model.LogisticRegression()`` (all defaults, unscaled
    features) fitted on each layer in turn. A reference point for speed and accuracy.

    Parameters
    ----------
    X_train_layers, X_test_layers
        Per-layer features, shapes (n_layers, N_train, D) and (n_layers, N_test, D).
    y_train, y_test
        Labels, shapes (N_train,) and (N_test,).

    Returns
    -------
    Long table with columns layer, measure (accuracy, macro_f1), value.
    """
    if len(X_train_layers) != len(X_test_layers):
        raise FinescopeError("baseline: train and test have different numbers of layers")
    rows = []
    for layer in range(len(X_train_layers)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression().fit(np.asarray(X_train_layers[layer]), y_train)
        pred = model.predict(np.asarray(X_test_layers[layer]))
        rows.append({"layer": layer, "measure": "accuracy", "value": accuracy_score(y_test, pred)})
        rows.append(
            {
                "layer": layer,
                "measure": "macro_f1",
                "value": f1_score(y_test, pred, average="macro", zero_division=0),
            }
        )
    return pd.DataFrame(rows, columns=["layer", "measure", "value"])
