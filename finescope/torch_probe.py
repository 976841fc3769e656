"""Multinomial logistic regression fitted with full-batch L-BFGS in torch (GPU when there is one).

The objective is scikit-learn's ``LogisticRegression(C=C)`` (lbfgs) exactly, so ``C`` means the
same in both backends of the linear probe:

    sum_i log_loss_i + ||W||^2 / (2 C)        (bias not penalised)

minimised in its scaled form ``mean_i log_loss_i + ||W||^2 / (2 C n)``, as scikit-learn does.
Two classes use one logit vector (scikit-learn's binomial loss), more classes one vector per
class (its multinomial loss). :func:`fit_logistic` also fits a stack of problems (e.g. every
layer of a grid point) in one batched solve.

Hidden states are strongly correlated even after standardisation, which makes the objective
ill-conditioned: plain L-BFGS then needs hundreds of iterations, each a pass over X. The solve
therefore runs in preconditioned coordinates: with the upper Cholesky factor ``U`` of the
feature covariance plus ``4 l2 I``, ``W = U^-1 Z``, and a bias taken about the feature mean.
This is an exact, invertible change of variables (the objective and its optimum are
unchanged); near the optimum its Hessian is about a multiple of the identity, so far fewer
iterations are needed. It costs one ``X^T X`` and one Cholesky factorisation per problem, and
no copy of X. The stop is at the largest absolute gradient entry below ``tol`` (scipy's
``pgtol``), in those coordinates.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from finescope.devices import resolve_device
from finescope.errors import FinescopeError

# Entries of X times classes below which a CPU fit runs on one thread.
SMALL_PROBLEM = 2_000_000


def fit_logistic(
    X: Any,
    codes: Any,
    n_classes: int,
    C: float,
    *,
    max_iter: int = 1000,
    tol: float = 1e-4,
    init: tuple[Any, Any] | None = None,
    history_size: int = 10,
    precondition: bool | None = None,
) -> tuple[Any, Any, int]:
    """Fit L2-regularised logistic regression on torch tensors.

    Parameters
    ----------
    X
        Float tensor (n, d), or (b, n, d) for ``b`` independent problems solved together.
    codes
        Long tensor (n,) or (b, n) of class indices in ``0 .. n_classes-1``.
    n_classes
        Number of classes (>= 2).
    C
        Inverse L2 strength, as in scikit-learn.
    max_iter, tol
        L-BFGS iterations; stop when max |gradient| of the scaled objective is below ``tol``.
    init
        Starting (W, b) (warm start), shapes as returned.
    history_size
        L-BFGS memory (scipy's default is 10).
    precondition
        Solve in the whitened coordinates of the module docstring (same optimum, far fewer
        iterations on correlated features); ``False`` runs L-BFGS on W directly; ``None``
        (default) whitens where it pays (:func:`_whitening_pays`).

    Returns
    -------
    W of shape (..., d, k), b of shape (..., k) with k = 1 for two classes else ``n_classes``,
    and the number of iterations run.
    """
    import torch

    batched = X.dim() == 3
    if not batched:
        X, codes = X[None], codes[None]
    b, n, d = X.shape
    k = 1 if n_classes == 2 else n_classes
    l2 = 1.0 / (C * n)
    # W = U^-1 Z and bias = c - mu @ W: U whitens the features (4 l2: the penalty over the
    # logistic loss's largest curvature, 1/4), mu centres them.
    if precondition is None:
        precondition = _whitening_pays(n, d, k)
    if precondition:
        U, mu = _whitening(X, 4 * l2)
    else:
        U, mu = None, torch.zeros(b, 1, d, dtype=X.dtype, device=X.device)
    if init is None:
        Z = torch.zeros(b, d, k, dtype=X.dtype, device=X.device)
        c = torch.zeros(b, k, dtype=X.dtype, device=X.device)
    else:
        W0 = init[0].reshape(b, d, k).to(X)
        Z = (W0 if U is None else torch.bmm(U, W0)).contiguous()
        c = init[1].reshape(b, k).to(X) + torch.bmm(mu, W0)[:, 0, :]
    Z.requires_grad_(True)
    c.requires_grad_(True)
    if k == 1:
        target = codes.to(X.dtype)
    opt = torch.optim.LBFGS(
        [Z, c],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 5 // 4,
        tolerance_grad=tol,
        tolerance_change=64 * float(torch.finfo(X.dtype).eps),
        history_size=history_size,
        line_search_fn="strong_wolfe",
    )

    def weights():
        W = Z if U is None else torch.linalg.solve_triangular(U, Z, upper=True)
        return W, c - torch.bmm(mu, W)[:, 0, :]

    def closure():
        opt.zero_grad()
        W, bias = weights()
        logits = _project(X, W) + bias[:, None, :]
        if k == 1:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits[..., 0], target, reduction="none"
            ).mean(dim=1)
        else:
            loss = (
                torch.nn.functional.cross_entropy(
                    logits.reshape(b * n, k), codes.reshape(-1), reduction="none"
                )
                .reshape(b, n)
                .mean(dim=1)
            )
        # Problems are independent: their objectives add, so one L-BFGS solves them all.
        total = loss.sum() + 0.5 * l2 * (W * W).sum()
        total.backward()
        return total

    threads = torch.get_num_threads()
    # Small problems: thread start-up and spinning cost more than the arithmetic saves.
    small = X.device.type == "cpu" and X.numel() * k < SMALL_PROBLEM
    if small:
        torch.set_num_threads(1)
    try:
        opt.step(closure)
    finally:
        if small:
            torch.set_num_threads(threads)
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    with torch.no_grad():
        W, bias = (t.detach() for t in weights())
    if not batched:
        W, bias = W[0], bias[0]
    return W, bias, n_iter


def _whitening_pays(n: int, d: int, k: int) -> bool:
    """Whether whitening is cheaper than the iterations it saves: it costs about ``n d^2 + d^3/3``
    flops (the Gram matrix and its Cholesky factor) and saves about half of ~100 L-BFGS
    iterations of ``4 n d k`` flops each. False for few items in many dimensions (e.g. NLI
    pair features, small online-code blocks), where plain L-BFGS is quick anyway."""
    return n * d * d + d**3 / 3 < 200 * n * d * k


def _whitening(X: Any, ridge: float) -> tuple[Any, Any]:
    """``U`` with ``U^T U = cov + ridge I`` (the upper Cholesky factor of each problem's
    regularised feature covariance, computed in float64) and the feature means; shapes
    (b, d, d) and (b, 1, d). ``W = U^-1 Z`` whitens: in ``Z`` the quadratic ``W^T (cov +
    ridge I) W`` is ``|Z|^2``. Cholesky costs a fraction of an eigendecomposition, and the
    triangular solve for W a fraction of a pass over X."""
    import torch

    mu = X.mean(dim=1, keepdim=True)
    n, d = X.shape[1], X.shape[2]
    # X^T X - n mu^T mu: the covariance without a centred copy of X.
    gram = torch.bmm(X.transpose(1, 2), X).double()
    mu64 = mu.double()
    cov = (gram - n * torch.bmm(mu64.transpose(1, 2), mu64)) / n
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    U = torch.linalg.cholesky(cov + ridge * eye, upper=True)
    return U.to(X.dtype), mu


def _project(X: Any, W: Any) -> Any:
    """``X @ W`` (batched) whose gradient in ``W`` is computed as ``(G^T X)^T``.

    Autograd's own ``X^T G`` hands the large operand to the GEMM transposed, which torch's CPU
    BLAS runs about 5x slower for a few output columns (189 against 38 ms at 20,000 x 1,024 x 6
    on 2 threads); the fit spends most of its time there.
    """
    return _project_function().apply(X, W)


@functools.cache
def _project_function():
    """The autograd function of :func:`_project`, built once (torch is imported lazily)."""
    import torch

    class Project(torch.autograd.Function):
        @staticmethod
        def forward(ctx, X, W):
            ctx.save_for_backward(X)
            return torch.bmm(X, W)

        @staticmethod
        def backward(ctx, G):
            (X,) = ctx.saved_tensors
            return None, torch.bmm(G.transpose(1, 2), X).transpose(1, 2)

    return Project


class TorchLogisticRegression(BaseEstimator, ClassifierMixin):
    """Drop-in for ``sklearn.linear_model.LogisticRegression(C, max_iter)`` (lbfgs), fitted by
    :func:`fit_logistic` on ``device`` in ``dtype``; ``coef_`` / ``intercept_`` have
    scikit-learn's shapes ((1, d) and (1,) for two classes).

    Parameters
    ----------
    C, max_iter, tol
        As in scikit-learn.
    warm_start
        Start the next ``fit`` from the current coefficients (as scikit-learn does).
    device
        ``auto`` (GPU if torch sees one), ``cpu`` or ``cuda``.
    dtype
        ``float32`` (default: twice the speed of float64, ample for a probe) or ``float64``.
    random_state
        Unused (the fit is deterministic); kept for scikit-learn's interface.
    """

    def __init__(
        self,
        C: float = 1.0,
        max_iter: int = 1000,
        tol: float = 1e-4,
        warm_start: bool = False,
        device: str = "auto",
        dtype: str = "float32",
        random_state: int | None = None,
    ) -> None:
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.warm_start = warm_start
        self.device = device
        self.dtype = dtype
        self.random_state = random_state

    def _tensor(self, X: np.ndarray):
        import torch

        return torch.as_tensor(
            np.asarray(X), dtype=getattr(torch, self.dtype), device=self.device_
        ).contiguous()

    def fit(self, X: np.ndarray, y: Sequence) -> TorchLogisticRegression:
        import torch

        self.device_ = str(resolve_device(self.device, "probe.linear.device", ("cpu", "cuda")))
        classes, codes = np.unique(np.asarray(y), return_inverse=True)
        if len(classes) < 2:
            raise FinescopeError("logistic regression needs at least two classes in y")
        init = None
        if self.warm_start and getattr(self, "classes_", None) is not None:
            if np.array_equal(self.classes_, classes):
                init = (torch.as_tensor(self.coef_.T), torch.as_tensor(self.intercept_))
        W, b, self.n_iter_ = fit_logistic(
            self._tensor(X),
            torch.as_tensor(codes, device=self.device_),
            len(classes),
            float(self.C),
            max_iter=self.max_iter,
            tol=self.tol,
            init=init,
        )
        self.classes_ = classes
        self.coef_ = W.T.double().cpu().numpy()
        self.intercept_ = b.double().cpu().numpy()
        self.n_features_in_ = self.coef_.shape[1]
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        scores = np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        from scipy.special import expit, softmax

        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = expit(scores)
            return np.stack([1 - p, p], axis=1)
        return softmax(scores, axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        scores = self.decision_function(X)
        idx = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[idx]
