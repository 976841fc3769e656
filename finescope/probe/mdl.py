"""Online (prequential) code length of a probe's labels given the features."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from finescope.errors import FinescopeError
from finescope.settings.probe import MDL_PORTIONS, mdl_block_ends


def _block_bits(
    X_prev: np.ndarray,
    y_prev: np.ndarray,
    X_block: np.ndarray,
    y_block: np.ndarray,
    n_classes: int,
    probe_factory: Callable[[], Any],
) -> float:
    """Bits to transmit ``y_block`` given ``X_block`` with a code trained on the previous data.

    Rule for classes missing from the previous data: with fewer than 2 classes there is
    nothing to train, and the code is the add-one (Laplace) estimate
    ``p(k) = (count_k + 1) / (n + K)``. Otherwise the probe is trained; each of the ``u``
    classes it has not seen keeps its add-one mass ``1 / (n + K)``, and the probe's
    distribution over the seen classes is scaled by ``1 - u / (n + K)`` (so with every class
    seen the probe's own probabilities are used unchanged).
    """
    n = len(y_prev)
    seen, counts = np.unique(y_prev, return_counts=True)
    if len(seen) < 2:
        lookup = dict(zip(seen.tolist(), counts.tolist(), strict=True))
        p = np.array([(lookup.get(label, 0) + 1) / (n + n_classes) for label in y_block.tolist()])
        return float(-np.log2(p).sum())
    model = probe_factory()
    model.fit(X_prev, y_prev)
    classes = np.asarray(model.classes_)
    if hasattr(model, "predict_log_proba"):
        logp = np.asarray(model.predict_log_proba(X_block), dtype=np.float64)
    else:
        proba = np.asarray(model.predict_proba(X_block), dtype=np.float64)
        logp = np.log(np.clip(proba, np.finfo(np.float64).tiny, None))
    unseen = n_classes - len(classes)
    escape = unseen / (n + n_classes)
    col = np.searchsorted(classes, y_block)
    col = np.clip(col, 0, len(classes) - 1)
    known = classes[col] == y_block
    nats = np.where(
        known,
        -(logp[np.arange(len(y_block)), col] + math.log1p(-escape)),
        math.log(n + n_classes),
    )
    return float(nats.sum() / math.log(2))


def online_codelength(
    X: np.ndarray,
    y: Sequence,
    n_classes: int,
    probe_factory: Callable[[], Any],
    seed: int = 0,
    portions: Sequence[float] = MDL_PORTIONS,
) -> tuple[float, float]:
    """Online (prequential) codelength of the labels given the features (Voita & Titov, 2020).

    Items are ordered by ``np.random.default_rng(seed).permutation(len(y))`` and cut into
    blocks at :func:`mdl_block_ends`. The first block is sent with the uniform code
    (``log2 K`` bits per item); every later block with a probe trained on all earlier blocks
    (``-log2 p(y | x)`` per item; for classes absent from the earlier blocks see
    :func:`_block_bits`).

    Parameters
    ----------
    X
        Features, shape (N, D).
    y
        Labels, shape (N,), at most ``n_classes`` distinct values.
    n_classes
        Size K of the label set (>= 1).
    probe_factory
        Zero-argument callable returning a probe with ``fit``, ``classes_`` (sorted) and
        ``predict_log_proba`` or ``predict_proba``; called once per trained block (it may hand
        back the same warm-starting object each time).
    seed
        Order of the items.
    portions
        Block boundaries in percent, ending with 100.

    Returns
    -------
    ``(codelength_bits, uniform_bits)`` with ``uniform_bits = N log2 K``; compression is
    ``uniform_bits / codelength_bits``.
    """
    X, y = np.asarray(X), np.asarray(y)
    if len(X) != len(y):
        raise FinescopeError(f"online code: {len(X)} feature rows but {len(y)} labels")
    if n_classes < 1 or len(np.unique(y)) > n_classes:
        raise FinescopeError(
            f"online code: n_classes={n_classes} but the labels hold {len(np.unique(y))} classes"
        )
    ends = mdl_block_ends(len(y), portions)
    order = np.random.default_rng(seed).permutation(len(y))
    log2k = math.log2(n_classes)
    bits = ends[0] * log2k
    for start, end in zip(ends[:-1], ends[1:], strict=True):
        prev, block = order[:start], order[start:end]
        bits += _block_bits(X[prev], y[prev], X[block], y[block], n_classes, probe_factory)
    return float(bits), float(len(y) * log2k)
