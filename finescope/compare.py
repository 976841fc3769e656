"""How much fine-tuning changed a model: attention maps and layer representations of the
pre-trained and the fine-tuned model on the same test items, read from two caches.

Measures (``measure`` column of the long-form output):

``attention_cosine``
    Cosine similarity between the flattened T x T attention maps of one head on one sequence
    (the study's measure), averaged over sequences. 1 = unchanged.
``attention_js``
    Jensen-Shannon divergence between matching attention rows (one distribution over keys per
    query token), natural log, so in [0, ln 2]; averaged over rows, then sequences. 0 =
    unchanged. Causal rows have zeros beyond the query in both models and add nothing there.
``attention_entropy_change``
    Mean row entropy (nats) of the fine-tuned model minus that of the pre-trained model.
``cka``
    Linear CKA (Kornblith et al. 2019) between the two models' vectors of the same items.
``cka_debiased``
    CKA from the unbiased HSIC estimator (Song et al. 2012; Nguyen et al. 2021), on a seeded
    sample of at most ``cka_max_items`` items.

Attention rows are renormalised to sum to 1 before measuring, which removes the rounding of the
float16 store. Attention layers are numbered 1..n_blocks (layer 0, the embeddings, has none);
head is "0".."H-1", and "all" is the mean over heads. CKA rows have head "all".

What a "sequence" and an "item" are depends on the cache (both caches must agree):

- NLI pair caches (``nli_view: "pair"``): attention is measured on the one joint
  premise + hypothesis sequence of each item. CKA is computed on the ``cls`` view, N items: the
  vector the classification head reads, one per pair (the segment means of the same pass are
  left out, so that every item counts once and the measure follows what fine-tuning trains).
  For encoders the layer-0 ``cls`` vector is the [CLS] embedding, the same for every item, so
  CKA there is NaN (undefined), not a measurement.
- NLI separate caches (``nli_view: "separate"``): attention is measured on premise and
  hypothesis sequences apart; CKA stacks the premise and hypothesis vectors as 2N items (both
  are sentences encoded the same way).
- NER: attention per sentence; CKA items are words (as pooled by the cache's ``ner_pooling``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from finescope import columns, job
from finescope.cache import Cache
from finescope.errors import FinescopeError
from finescope.io import write_csv
from finescope.progress import Progress
from finescope.settings.compare import CompareSettings

COLUMNS = columns.CHANGE
ATTENTION_MEASURES = ("attention_cosine", "attention_js", "attention_entropy_change")
_CHUNK = 8192


def _normalise_rows(att: np.ndarray) -> np.ndarray:
    att = np.asarray(att, dtype=np.float64)
    total = att.sum(axis=-1, keepdims=True)
    return att / np.where(total > 0, total, 1.0)


def _plogp(p: np.ndarray) -> np.ndarray:
    """p * log(p) with 0 log 0 = 0."""
    return p * np.log(np.where(p > 0, p, 1.0))


def attention_measures(att_a: np.ndarray, att_b: np.ndarray) -> dict[str, np.ndarray]:
    """Change measures between two models' attention maps of one sequence, all heads at once.

    Parameters
    ----------
    att_a, att_b
        ``(..., H, T, T)`` attention maps (query rows over key columns) of the pre-trained and
        the fine-tuned model on the same tokens; any leading axes (e.g. layers) are kept.

    Returns
    -------
    dict
        ``attention_cosine``, ``attention_js``, ``attention_entropy_change``: arrays of shape
        ``(..., H)``.
    """
    if att_a.shape != att_b.shape or att_a.ndim < 2 or att_a.shape[-1] != att_a.shape[-2]:
        raise FinescopeError(
            f"attention maps differ in shape or are not square: {att_a.shape} vs {att_b.shape}"
        )
    p, q = _normalise_rows(att_a), _normalise_rows(att_b)
    flat_p = p.reshape(*p.shape[:-2], -1)
    flat_q = q.reshape(*q.shape[:-2], -1)
    norms = np.linalg.norm(flat_p, axis=-1) * np.linalg.norm(flat_q, axis=-1)
    cosine = np.einsum("...i,...i->...", flat_p, flat_q) / norms
    m = 0.5 * (p + q)
    # KL(p || m) = sum p log p - sum p log m over p > 0; m > 0 wherever p > 0 or q > 0.
    log_m = np.log(np.where(m > 0, m, 1.0))
    js_rows = 0.5 * (_plogp(p) - p * log_m).sum(-1) + 0.5 * (_plogp(q) - q * log_m).sum(-1)
    js = np.clip(js_rows, 0.0, np.log(2.0)).mean(-1)
    entropy_a = -_plogp(p).sum(-1).mean(-1)
    entropy_b = -_plogp(q).sum(-1).mean(-1)
    return {
        "attention_cosine": cosine,
        "attention_js": js,
        "attention_entropy_change": entropy_b - entropy_a,
    }


def _centered_chunks(X: np.ndarray, mean: np.ndarray, start: int) -> np.ndarray:
    return np.asarray(X[start : start + _CHUNK], dtype=np.float64) - mean


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) between two representations of the same N items.

    Uses the feature-space form ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` on
    column-centred features in float64, accumulated over row chunks, so it costs O(N D^2) time
    and O(D^2) extra memory: suited to N >> D.

    Parameters
    ----------
    X, Y
        ``(N, D1)`` and ``(N, D2)`` arrays, rows are the same items.

    Returns
    -------
    float
        In [0, 1]; NaN if either side is constant.
    """
    if X.shape[0] != Y.shape[0]:
        raise FinescopeError(f"linear_cka: {X.shape[0]} items on one side, {Y.shape[0]} on other")
    mx = X.mean(axis=0, dtype=np.float64)
    my = Y.mean(axis=0, dtype=np.float64)
    xx = np.zeros((X.shape[1], X.shape[1]))
    yy = np.zeros((Y.shape[1], Y.shape[1]))
    yx = np.zeros((Y.shape[1], X.shape[1]))
    for start in range(0, X.shape[0], _CHUNK):
        xc = _centered_chunks(X, mx, start)
        yc = _centered_chunks(Y, my, start)
        xx += xc.T @ xc
        yy += yc.T @ yc
        yx += yc.T @ xc
    denominator = np.linalg.norm(xx) * np.linalg.norm(yy)
    if denominator == 0:
        return float("nan")
    return float(np.linalg.norm(yx) ** 2 / denominator)


def _unbiased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Unbiased HSIC (Song et al. 2012) of two n x n Gram matrices with zeroed diagonals."""
    n = K.shape[0]
    k_sum, l_sum = K.sum(), L.sum()
    trace = np.einsum("ij,ij->", K, L)  # tr(K L) for symmetric K, L
    middle = K.sum(axis=0) @ L.sum(axis=1)
    return float(
        (trace + k_sum * l_sum / ((n - 1) * (n - 2)) - 2.0 * middle / (n - 2)) / (n * (n - 3))
    )


def debiased_cka(
    X: np.ndarray, Y: np.ndarray, max_items: int | None = 2000, seed: int = 0
) -> float:
    """Debiased linear CKA: the unbiased HSIC estimator (Song et al. 2012) in place of the
    biased one (Nguyen et al. 2021), computed from n x n linear kernels.

    Parameters
    ----------
    X, Y
        ``(N, D1)`` and ``(N, D2)`` arrays, rows are the same items.
    max_items
        Use a seeded sample of this many items (the same rows on both sides) when N is larger;
        the kernels cost O(n^2) memory. None uses every item.
    seed
        Seed of that sample.

    Returns
    -------
    float
        About 1 for equal representations (can fall slightly outside [0, 1]); NaN if fewer than
        4 items or either side is constant.
    """
    if X.shape[0] != Y.shape[0]:
        raise FinescopeError(
            f"debiased_cka: {X.shape[0]} items on one side, {Y.shape[0]} on the other"
        )
    n = X.shape[0]
    if max_items is not None and n > max_items:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_items, replace=False))
        X, Y, n = X[rows], Y[rows], max_items
    if n < 4:
        return float("nan")
    xc = np.asarray(X, dtype=np.float64)
    yc = np.asarray(Y, dtype=np.float64)
    xc = xc - xc.mean(axis=0)
    yc = yc - yc.mean(axis=0)
    K = xc @ xc.T
    L = yc @ yc.T
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    kl, kk, ll = _unbiased_hsic(K, L), _unbiased_hsic(K, K), _unbiased_hsic(L, L)
    if kk <= 0 or ll <= 0:
        return float("nan")
    return kl / np.sqrt(kk * ll)


def _check_pair(pre: Cache, ft: Cache) -> None:
    """Both caches must hold the same items (and words), layers and attention sequences."""
    where = f"pre-trained cache {pre.path} and fine-tuned cache {ft.path}"
    fix = "re-extract both from the same test items and extract settings"
    if pre.task != ft.task:
        raise FinescopeError(f"{where} are of different tasks ({pre.task} vs {ft.task}); {fix}")
    if pre.n_layers != ft.n_layers:
        raise FinescopeError(
            f"{where} have {pre.n_layers} vs {ft.n_layers} layers (different models?); {fix}"
        )
    if pre.ids != ft.ids:
        raise FinescopeError(f"{where} hold different items (ids differ); {fix}")
    for key, one, other in (
        ("nli_view", pre.nli_view, ft.nli_view),
        ("ner_pooling", pre.meta.get("ner_pooling"), ft.meta.get("ner_pooling")),
    ):
        if one != other:
            raise FinescopeError(
                f"{where} differ in extract setting {key} ({one} vs {other}); {fix}"
            )
    if pre.views != ft.views:
        raise FinescopeError(f"{where} store different views ({pre.views} vs {ft.views}); {fix}")
    for key in ("word_item", "word_position"):
        if pre.meta.get(key) != ft.meta.get(key):
            raise FinescopeError(f"{where} hold different words ({key} differs); {fix}")
    a, b = pre.meta.get("attention"), ft.meta.get("attention")
    if (a is None) != (b is None):
        raise FinescopeError(f"{where}: only one of them stores attention maps; {fix}")
    if a is not None:
        for key in ("n_sequences", "n_blocks", "n_heads", "lengths"):
            if a[key] != b[key]:
                raise FinescopeError(f"{where} store different attention sequences ({key}); {fix}")


def _attention_rows(pre: Cache, ft: Cache) -> list[tuple[int, str, str, float]]:
    att = pre.meta["attention"]
    totals: dict[str, np.ndarray] = {}
    bar = Progress("compare attention", att["n_sequences"], "sequence")
    for k in range(att["n_sequences"]):
        measures = attention_measures(pre.attention(k), ft.attention(k))  # each (L, H)
        for name, value in measures.items():
            totals[name] = totals.get(name, 0.0) + value
        bar.update(1)
    rows = []
    for name in ATTENTION_MEASURES:
        mean = totals[name] / att["n_sequences"]
        for block in range(att["n_blocks"]):
            for head in range(att["n_heads"]):
                rows.append((block + 1, str(head), name, float(mean[block, head])))
            rows.append((block + 1, "all", name, float(mean[block].mean())))
    return rows


def cka_views(cache: Cache) -> list[str]:
    """The views whose rows are stacked as CKA items: ``cls`` for NLI pair caches, every view
    otherwise (premise and hypothesis for separate NLI caches, word for NER)."""
    return ["cls"] if cache.nli_view == "pair" else list(cache.views)


def _items(cache: Cache, layer: int) -> np.ndarray:
    return np.concatenate([cache.layer(view, layer) for view in cka_views(cache)])


def run_compare(
    pre_cache: str | Path,
    ft_cache: str | Path,
    point: dict,
    settings: CompareSettings | Mapping | None = None,
) -> pd.DataFrame:
    """Change measures between the pre-trained and a fine-tuned model of one grid point.

    Parameters
    ----------
    pre_cache, ft_cache
        Cache folders (see :mod:`finescope.cache`) of the pre-trained and the fine-tuned
        model on the same items with the same extract settings.
    point
        ``task``, ``model``, ``fraction``, ``seed`` of the fine-tuned model.
    settings
        :class:`~finescope.settings.compare.CompareSettings` (a mapping of some of its fields
        is built into one).

    Returns
    -------
    pandas.DataFrame
        Long form, columns task, model, fraction, seed, layer, head, measure, value:
        per block and head (and "all") the three attention measures, per layer (0 =
        embeddings) ``cka`` and ``cka_debiased``.
    """
    settings = CompareSettings.build(settings)
    pre, ft = Cache(pre_cache), Cache(ft_cache)
    _check_pair(pre, ft)
    rows: list[tuple[int, str, str, float]] = []
    if settings.attention and pre.meta.get("attention"):
        rows += _attention_rows(pre, ft)
    bar = Progress(f"compare {point.get('model')} CKA", pre.n_layers, "layer")
    for layer in range(pre.n_layers):
        X, Y = _items(pre, layer), _items(ft, layer)
        rows.append((layer, "all", "cka", linear_cka(X, Y)))
        if settings.debiased_cka:
            value = debiased_cka(X, Y, int(settings.cka_max_items), int(settings.seed))
            rows.append((layer, "all", "cka_debiased", value))
        del X, Y
        bar.update(1)
    frame = pd.DataFrame(rows, columns=["layer", "head", "measure", "value"])
    frame.insert(0, "seed", point.get("seed"))
    frame.insert(0, "fraction", point.get("fraction"))
    frame.insert(0, "model", point.get("model"))
    frame.insert(0, "task", point.get("task", pre.task))
    return frame[COLUMNS]


def compare_job(
    pretrained: str,
    finetuned: str,
    point: dict,
    settings: CompareSettings | Mapping,
    out_csv: str,
) -> None:
    """The ``compare`` job: representation and attention change of one grid point."""
    table = run_compare(Path(pretrained), Path(finetuned), point, settings)
    write_csv(table, out_csv)
    cka = table[(table["measure"] == "cka") & (table["head"] == "all")]
    if len(cka):
        last = cka.loc[cka["layer"].idxmax()]
        job.headline(f"CKA {float(last['value']):.3f} at the last layer ({int(last['layer'])})")
