"""Statistics for the correlations: permutation tests within cells, cluster bootstrap and BH.

Pure numpy: no pandas, so each routine can be checked against scipy on arrays."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from finescope.analysis.settings import EXACT_LIMIT, METHODS, N_PERM
from finescope.errors import FinescopeError


def bh_adjust(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values; NaN p-values stay NaN and are not counted as tests.

    Parameters
    ----------
    p_values
        Shape (m,).

    Returns
    -------
    numpy.ndarray
        Shape (m,), float; ``scipy.stats.false_discovery_control(method="bh")`` over the finite
        entries.
    """
    p = np.asarray(p_values, dtype=float).reshape(-1)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(np.clip(p[ok], 0.0, 1.0), method="bh")
    return q


def _is_constant(values: np.ndarray, reference: np.ndarray | None = None) -> bool:
    scale = np.max(np.abs(values if reference is None else reference)) if values.size else 0.0
    return bool(np.std(values) <= 1e-10 * max(scale, 1e-300))


class Cells:
    """Cell structure of one test: points sorted so that each cell is a contiguous block.

    Parameters
    ----------
    codes
        Shape (n,): the cell of each point (any hashable labels).

    Attributes
    ----------
    order
        Positions of the points in cell order (apply to x and y before use).
    cell_of
        Shape (n,): the cell index (0 .. n_cells - 1) of each point in cell order.
    sizes, starts
        Points per cell and the first position of each cell.
    """

    def __init__(self, codes: np.ndarray | Sequence[Any]) -> None:
        codes = np.asarray(codes)
        inverse = np.unique(codes, return_inverse=True)[1].reshape(-1) if codes.size else codes
        inverse = inverse.astype(np.int64)
        self.order = np.argsort(inverse, kind="stable")
        self.cell_of = inverse[self.order]
        self.sizes = np.bincount(self.cell_of) if len(inverse) else np.zeros(0, dtype=np.int64)
        self.starts = np.r_[0, np.cumsum(self.sizes)[:-1]] if len(self.sizes) else self.sizes
        self.n = int(len(inverse))
        self.n_cells = int(len(self.sizes))

    def centre(self, a: np.ndarray) -> np.ndarray:
        """Deviation of each point from its cell mean (``a`` in cell order, shape (n,))."""
        means = np.bincount(self.cell_of, weights=a, minlength=self.n_cells) / self.sizes
        return a - means[self.cell_of]

    def arrangements(self) -> float:
        """Number of distinct within-cell permutations, ``prod(size!)``."""
        return float(np.prod([math.factorial(int(m)) for m in self.sizes])) if self.n else 0.0


@functools.lru_cache(maxsize=64)
def _exact_permutations(sizes: tuple[int, ...]) -> np.ndarray:
    """Every within-cell permutation of contiguous cells of these sizes: (prod(size!), n)."""
    out = np.zeros((1, 0), dtype=np.int64)
    start = 0
    for m in sizes:
        block = np.array(list(itertools.permutations(range(start, start + m))), dtype=np.int64)
        out = np.concatenate(
            [np.repeat(out, len(block), axis=0), np.tile(block, (len(out), 1))], axis=1
        )
        start += m
    return out


def _permutations(cells: Cells, n_perm: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Index arrays permuting points within cells, and whether they are all of them."""
    if cells.arrangements() <= EXACT_LIMIT:
        return _exact_permutations(tuple(int(m) for m in cells.sizes)), True
    # Sorting cell index + uniform noise shuffles each contiguous block independently.
    keys = cells.cell_of[None, :] + rng.random((n_perm, cells.n))
    return np.argsort(keys, axis=1), False


def _centred_inputs(x: np.ndarray, y: np.ndarray, cells: Cells, method: str) -> tuple:
    """The two series a test correlates (both with mean 0).

    Pearson: values centred within cells. Spearman: average ranks of those within-cell
    deviations, centred (so their plain Pearson correlation is Spearman's rho of the
    deviations).
    """
    if method not in METHODS:
        raise FinescopeError(f"unknown correlation method {method!r}; use {METHODS}.")
    a, b = cells.centre(x), cells.centre(y)
    if method == "spearman":
        ones = np.ones((1, len(a)))
        a, b = _weighted_ranks(ones, a)[0], _weighted_ranks(ones, b)[0]
        a, b = a - a.mean(), b - b.mean()
    return a, b


def _permutation_p(
    a: np.ndarray, b: np.ndarray, r: float, cells: Cells, n_perm: int, rng: np.random.Generator
) -> tuple[float, bool, int]:
    """Two-sided p of ``r = corr(a, b)`` (centred, cell order) over within-cell permutations.

    Returns (p, exact, arrangements used). Permuting x within a cell leaves its cell mean alone,
    so the centred values can be permuted directly.
    """
    perms, exact = _permutations(cells, n_perm, rng)
    null = (a[perms] @ b) / math.sqrt(float(a @ a) * float(b @ b))
    hits = int(np.count_nonzero(np.abs(null) >= abs(r) - 1e-9))
    p = hits / len(perms) if exact else (1 + hits) / (1 + len(perms))
    return float(min(p, 1.0)), exact, len(perms)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(np.clip((a @ b) / den, -1.0, 1.0)) if den > 0 else math.nan


def permutation_test(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    cells: Sequence[Any] | np.ndarray | None = None,
    method: str = "spearman",
    *,
    n_perm: int = N_PERM,
    rng: np.random.Generator | None = None,
) -> tuple[float, float, bool]:
    """Correlation of the within-cell deviations of x and y, with a within-cell permutation p.

    Parameters
    ----------
    x, y
        Shape (n,), finite.
    cells
        Shape (n,): cell label of each point (e.g. the fraction, or "model|fraction"); None =
        one cell (no control).
    method
        "spearman" (ranks over all points, then centred within cells) or "pearson" (values
        centred within cells).
    n_perm
        Monte Carlo draws when the arrangements exceed ``EXACT_LIMIT``.
    rng
        Generator for the Monte Carlo draws (default ``numpy.random.default_rng(0)``).

    Returns
    -------
    tuple[float, float, bool]
        (coefficient, two-sided p-value, exact). NaN when a centred variable is constant.
    """
    x = np.asarray(x, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    c = Cells(np.zeros(len(x)) if cells is None else np.asarray(cells))
    xs, ys = x[c.order], y[c.order]
    a, b = _centred_inputs(xs, ys, c, method)
    r = _corr(a, b)
    if not math.isfinite(r):
        return math.nan, math.nan, False
    p, exact, _ = _permutation_p(a, b, r, c, n_perm, rng or np.random.default_rng(0))
    return r, p, exact


def _stratified_weights(cells: Cells, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Multiplicity of each point in ``n_boot`` resamples drawn with replacement within cells.

    Returns (B, n) counts; every cell keeps its size in every resample.
    """
    n = cells.n
    size = cells.sizes[cells.cell_of]
    start = cells.starts[cells.cell_of]
    idx = start[None, :] + np.floor(rng.random((n_boot, n)) * size[None, :]).astype(np.int64)
    flat = (idx + (np.arange(n_boot) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)


def _weighted_ranks(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Average ranks of each original point inside each resample given by multiplicity counts.

    weights: (B, n) counts; values: (n,). Returns (B, n). Points are grouped by distinct value;
    a group's rank is (copies of smaller values) + (copies in the group + 1) / 2.
    """
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    group_of = np.empty(len(values), dtype=np.int64)
    group_of[order] = np.cumsum(new_group) - 1
    counts = np.add.reduceat(weights[:, order], np.flatnonzero(new_group), axis=1)
    below = np.cumsum(counts, axis=1) - counts
    return (below + (counts + 1.0) / 2.0)[:, group_of]


def _row_ranks(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Average rank of each point among the copies drawn in its resample.

    weights (B, n) counts, values (B, n). Rank of i = (copies with a smaller value) +
    (copies with an equal value + 1) / 2, from one sort per row.
    """
    n = values.shape[1]
    order = np.argsort(values, axis=1, kind="stable")
    v = np.take_along_axis(values, order, axis=1)
    w = np.take_along_axis(weights, order, axis=1)
    cum = np.cumsum(w, axis=1)
    position = np.broadcast_to(np.arange(n), v.shape)
    differs = v[:, 1:] != v[:, :-1]
    first = np.concatenate([np.ones((len(v), 1), bool), differs], axis=1)
    last = np.concatenate([differs, np.ones((len(v), 1), bool)], axis=1)
    start = np.maximum.accumulate(np.where(first, position, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, position, n - 1)[:, ::-1], axis=1)[:, ::-1]
    below = np.take_along_axis(cum - w, start, axis=1)
    tied = np.take_along_axis(cum, end, axis=1) - below
    ranks = np.empty_like(v)
    np.put_along_axis(ranks, order, below + (tied + 1.0) / 2.0, axis=1)
    return ranks


def _centre_rows(weights: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Deviation from the weighted mean of each resample (rows of weights sum to n)."""
    return a - (np.einsum("bi,bi->b", weights, a) / weights.sum(axis=1))[:, None]


def _weighted_cell_centre(weights: np.ndarray, a: np.ndarray, cells: Cells) -> np.ndarray:
    """Deviation from the weighted cell mean inside each resample. a (n,) or (B, n)."""
    indicator = np.zeros((cells.n, cells.n_cells))
    indicator[np.arange(cells.n), cells.cell_of] = 1.0
    sums = (weights * a) @ indicator
    means = sums / cells.sizes[None, :].astype(float)
    return a - means[:, cells.cell_of]


def cluster_bootstrap(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    cells: Sequence[Any] | np.ndarray | None,
    method: str,
    n_boot: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Coefficient of :func:`permutation_test` in resamples of seeds within each cell.

    Parameters
    ----------
    x, y
        Shape (n,), finite.
    cells
        Shape (n,): cell label of each point; None = one cell (plain bootstrap of points).
    method
        "spearman" | "pearson".
    n_boot
        Number of resamples.
    rng
        Random generator used to draw the resamples.

    Returns
    -------
    numpy.ndarray
        Shape (n_boot,); NaN for resamples where the coefficient is undefined (e.g. every cell
        drew a single seed several times).
    """
    x = np.asarray(x, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    c = Cells(np.zeros(len(x)) if cells is None else np.asarray(cells))
    if n_boot <= 0 or c.n == 0:
        return np.full(max(n_boot, 0), np.nan)
    return _bootstrap_sorted(x[c.order], y[c.order], c, method, n_boot, rng)


def _bootstrap_sorted(
    x: np.ndarray,
    y: np.ndarray,
    cells: Cells,
    method: str,
    n_boot: int,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    if weights is None:
        weights = _stratified_weights(cells, n_boot, rng)
    if method not in METHODS:
        raise FinescopeError(f"unknown correlation method {method!r}; use {METHODS}.")
    da = _weighted_cell_centre(weights, x, cells)
    db = _weighted_cell_centre(weights, y, cells)
    if method == "spearman":
        da = _centre_rows(weights, _row_ranks(weights, da))
        db = _centre_rows(weights, _row_ranks(weights, db))
    a, b = da, db
    sab = np.einsum("bi,bi,bi->b", weights, da, db)
    saa = np.einsum("bi,bi,bi->b", weights, da, da)
    sbb = np.einsum("bi,bi,bi->b", weights, db, db)
    # Below this a centred variable is constant up to rounding in that resample.
    scale = np.max(np.abs(a)) ** 2 + np.max(np.abs(b)) ** 2
    tol = cells.n * 1e-20 * max(float(scale), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = sab / np.sqrt(saa * sbb)
    r[(saa <= tol) | (sbb <= tol)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)
