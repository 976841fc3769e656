"""The probe estimators (linear, MLP, SVM, BiLSTM-CRF) and their factories."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import log_softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from finescope.errors import FinescopeError
from finescope.settings.probe import (
    C_PROBES,
    LINEAR_BACKENDS,
    MDL_C_GRID,
    PROBES,
    ProbeSettings,
)


class _ScaledProbe(BaseEstimator, ClassifierMixin):
    """Standardise the features, then classify; a single training class is predicted as is."""

    def _classifier(self, y: np.ndarray) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def fit(self, X: np.ndarray, y: Sequence, groups: np.ndarray | None = None) -> _ScaledProbe:
        y = np.asarray(y)
        classes = np.unique(y)
        if len(classes) < 2:
            # Nothing to discriminate: every classifier here would refuse to fit.
            self.classes_, self.model_ = classes, None
            return self
        model = make_pipeline(StandardScaler(), self._classifier(y))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(np.asarray(X, dtype=np.float32), y)
        self.classes_, self.model_ = classes, model
        return self

    def predict(self, X: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        if self.model_ is None:
            return np.repeat(self.classes_, len(X))
        return self.model_.predict(np.asarray(X, dtype=np.float32))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if self.model_ is None:
            return np.ones((len(X), 1))
        return self.model_.predict_proba(np.asarray(X, dtype=np.float32))

    def predict_log_proba(self, X: np.ndarray) -> np.ndarray:
        # log(predict_proba) underflows to -inf for confident mistakes; MDL needs finite bits.
        return np.log(np.clip(self.predict_proba(X), np.finfo(np.float64).tiny, None))


def logistic_regression(backend: str, C: float, max_iter: int, random_state: int, **kw) -> Any:
    """Unfitted multinomial logistic regression (lbfgs) of ``backend``, same objective in both."""
    if backend == "torch":
        from finescope.torch_probe import TorchLogisticRegression

        return TorchLogisticRegression(C=C, max_iter=max_iter, random_state=random_state, **kw)
    if backend == "sklearn":
        return LogisticRegression(
            C=C, max_iter=max_iter, solver="lbfgs", random_state=random_state, **kw
        )
    raise FinescopeError(
        f"config key probe.linear.backend: {backend!r}; use one of {list(LINEAR_BACKENDS)}"
    )


class LinearProbe(_ScaledProbe):
    """StandardScaler + multinomial logistic regression (lbfgs).

    Parameters
    ----------
    C
        Inverse L2 strength.
    max_iter
        lbfgs iterations.
    random_state
        Seed (lbfgs is deterministic; kept for a uniform interface).
    backend
        ``torch`` (:class:`~finescope.torch_probe.TorchLogisticRegression`, GPU when there is
        one) or ``sklearn`` (``LogisticRegression``).
    """

    def __init__(
        self, C: float = 1.0, max_iter: int = 1000, random_state: int = 0, backend: str = "torch"
    ) -> None:
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state
        self.backend = backend

    def _classifier(self, y: np.ndarray) -> Any:
        return logistic_regression(self.backend, self.C, self.max_iter, self.random_state)

    def predict_log_proba(self, X: np.ndarray) -> np.ndarray:
        if self.model_ is None:
            return np.zeros((len(X), 1))
        return _linear_log_proba(self.model_, X)


def _linear_log_proba(model: Any, X: np.ndarray) -> np.ndarray:
    """Exact log-probabilities of a logistic regression from its logits (no underflow)."""
    scores = model.decision_function(np.asarray(X, dtype=np.float32))
    if scores.ndim == 1:  # binary: one logit for classes_[1]
        scores = np.stack([np.zeros_like(scores), scores], axis=1)
    return log_softmax(scores.astype(np.float64), axis=1)


class SelectedLinearProbe(_ScaledProbe):
    """Linear probe whose L2 strength is chosen on held-out training items (for the online code).

    A fixed C is badly calibrated across the online code's training sizes (a handful to N
    items): the probe turns over-confident on small or high-dimensional blocks and its
    log-loss, which is the codelength, explodes (compression far below 1 on pure noise).
    Voita & Titov select their probes on held-out data; likewise each fit here holds out a
    seeded ``holdout`` share of its items, fits one probe per C of ``grid`` on the rest
    (warm-started from strong to weak regularisation), and keeps the strongest regularisation
    whose mean held-out log-loss is within one standard error of the best (the one-SE rule:
    small held-out sets are noisy), then refits on all items. Only the items given to ``fit``
    are used, so the code stays decodable. Below ``min_items`` items, or with a single class
    left to fit, the strongest regularisation is used.

    Parameters
    ----------
    grid
        Candidate values of C.
    holdout
        Share of the items held out for the choice.
    min_items
        Fewest items for which a choice is made.
    max_iter, random_state
        lbfgs iterations; seed of the held-out split.
    backend
        ``torch`` or ``sklearn``, as for :class:`LinearProbe`.
    """

    def __init__(
        self,
        grid: Sequence[float] = MDL_C_GRID,
        holdout: float = 0.1,
        min_items: int = 10,
        max_iter: int = 1000,
        random_state: int = 0,
        backend: str = "torch",
    ) -> None:
        self.grid = grid
        self.holdout = holdout
        self.min_items = min_items
        self.max_iter = max_iter
        self.random_state = random_state
        self.backend = backend

    def _lr(self, C: float, warm_start: bool = False) -> Any:
        return logistic_regression(
            self.backend, C, self.max_iter, self.random_state, warm_start=warm_start
        )

    def _choose_C(self, X: np.ndarray, y: np.ndarray) -> float:
        grid = sorted(float(c) for c in self.grid)
        n = len(y)
        # One candidate needs no held-out fit (it cost half of every online-code block).
        if n < self.min_items or len(grid) == 1:
            return grid[0]
        order = np.random.default_rng(self.random_state).permutation(n)
        n_val = max(1, math.ceil(self.holdout * n))
        val, rest = order[:n_val], order[n_val:]
        if len(np.unique(y[rest])) < 2:
            return grid[0]
        scaler = StandardScaler().fit(X[rest])
        X_rest, X_val = scaler.transform(X[rest]), scaler.transform(X[val])
        lr = self._lr(grid[0], warm_start=True)
        losses = []
        for C in grid:
            lr.set_params(C=C)
            lr.fit(X_rest, y[rest])
            col = np.clip(np.searchsorted(lr.classes_, y[val]), 0, len(lr.classes_) - 1)
            known = lr.classes_[col] == y[val]
            if not known.any():
                return grid[0]
            logp = _linear_log_proba(lr, X_val[known])
            losses.append(-logp[np.arange(known.sum()), col[known]])
        means = np.array([loss.mean() for loss in losses])
        best = int(np.argmin(means))
        # One-standard-error rule: small held-out sets are noisy, and a too-weak C costs far
        # more bits (over-confidence) than a too-strong one.
        # Held-out items of a class absent from the rest are not scored, so count those scored.
        n_best = len(losses[best])
        se = losses[best].std(ddof=1) / math.sqrt(n_best) if n_best > 1 else np.inf
        return grid[int(np.flatnonzero(means <= means[best] + se)[0])]

    def _classifier(self, y: np.ndarray) -> Any:
        return self._lr(self.C_)

    def fit(
        self, X: np.ndarray, y: Sequence, groups: np.ndarray | None = None
    ) -> SelectedLinearProbe:
        X, y = np.asarray(X, dtype=np.float32), np.asarray(y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.C_ = self._choose_C(X, y) if len(np.unique(y)) > 1 else min(self.grid)
        return super().fit(X, y)

    def predict_log_proba(self, X: np.ndarray) -> np.ndarray:
        if self.model_ is None:
            return np.zeros((len(X), 1))
        return _linear_log_proba(self.model_, X)


class MLPProbe(_ScaledProbe):
    """StandardScaler + one-hidden-layer MLP (Adam, L2 weight decay ``alpha``).

    ``early_stopping`` (used by the online code only) stops on a seeded 10 % of the training
    items, as Voita & Titov do; it is skipped when there are fewer than 20 items or a class
    has a single item (the stratified split needs two).
    """

    def __init__(
        self,
        hidden: int = 128,
        alpha: float = 1e-4,
        max_iter: int = 200,
        random_state: int = 0,
        early_stopping: bool = False,
    ) -> None:
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state
        self.early_stopping = early_stopping

    def _classifier(self, y: np.ndarray) -> MLPClassifier:
        _, counts = np.unique(y, return_counts=True)
        stop = self.early_stopping and len(y) >= 20 and counts.min() >= 2
        return MLPClassifier(
            hidden_layer_sizes=(self.hidden,),
            alpha=self.alpha,
            max_iter=self.max_iter,
            early_stopping=stop,
            random_state=self.random_state,
        )


class SVMProbe(_ScaledProbe):
    """StandardScaler + RBF-kernel SVC (the study's NLI probe)."""

    def __init__(self, C: float = 1.0, gamma: float | str = "scale", random_state: int = 0) -> None:
        self.C = C
        self.gamma = gamma
        self.random_state = random_state

    def _classifier(self, y: np.ndarray) -> SVC:
        return SVC(kernel="rbf", C=self.C, gamma=self.gamma, random_state=self.random_state)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise FinescopeError(
            "the svm probe gives no probabilities; use probe.mdl.probe: linear or mlp"
        )


def _sentences(groups: np.ndarray) -> list[np.ndarray]:
    """Row indices of each sentence, in order of first appearance, words in row order."""
    groups = np.asarray(groups)
    order = np.argsort(groups, kind="stable")
    cuts = np.flatnonzero(np.diff(groups[order])) + 1
    pieces = np.split(order, cuts)
    return sorted(pieces, key=lambda rows: rows[0])


class BiLSTMCRFProbe(BaseEstimator, ClassifierMixin):
    """BiLSTM + CRF sequence probe over the word vectors of each sentence (the study's NER probe).

    Word vectors are standardised (statistics of the training words), read by a one-layer
    bidirectional LSTM, projected to per-tag emissions and decoded by a linear-chain CRF
    (``torchcrf.CRF``). Trained with Adam on the mean negative log-likelihood; CPU, one thread,
    seeded, so a fit is reproducible.

    Parameters
    ----------
    hidden
        LSTM units per direction.
    epochs, lr, batch_size
        Training schedule (batch size in sentences).
    random_state
        Seed for initialisation and sentence shuffling.
    """

    def __init__(
        self,
        hidden: int = 64,
        epochs: int = 10,
        lr: float = 0.01,
        batch_size: int = 32,
        random_state: int = 0,
    ) -> None:
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.random_state = random_state

    def _batches(self, X: np.ndarray, sentences: list[np.ndarray], codes: np.ndarray | None):
        import torch

        lengths = torch.tensor([len(s) for s in sentences])
        width = int(lengths.max())
        feats = torch.zeros(len(sentences), width, X.shape[1])
        tags = torch.zeros(len(sentences), width, dtype=torch.long)
        for i, rows in enumerate(sentences):
            feats[i, : len(rows)] = torch.from_numpy(X[rows])
            if codes is not None:
                tags[i, : len(rows)] = torch.from_numpy(codes[rows])
        mask = torch.arange(width)[None, :] < lengths[:, None]
        return feats, tags, mask, lengths

    def _network(self, d_in: int, n_tags: int):
        import torch
        from torchcrf import CRF

        class Net(torch.nn.Module):
            def __init__(self, hidden: int) -> None:
                super().__init__()
                self.lstm = torch.nn.LSTM(d_in, hidden, batch_first=True, bidirectional=True)
                self.emit = torch.nn.Linear(2 * hidden, n_tags)
                self.crf = CRF(n_tags, batch_first=True)

            def emissions(self, feats, lengths):
                # Packed so the backward direction starts at each sentence's last real word.
                packed = torch.nn.utils.rnn.pack_padded_sequence(
                    feats, lengths, batch_first=True, enforce_sorted=False
                )
                out, _ = self.lstm(packed)
                out, _ = torch.nn.utils.rnn.pad_packed_sequence(
                    out, batch_first=True, total_length=feats.shape[1]
                )
                return self.emit(out)

        return Net(self.hidden)

    def fit(self, X: np.ndarray, y: Sequence, groups: np.ndarray | None = None) -> BiLSTMCRFProbe:
        import torch

        if groups is None:
            raise FinescopeError("the bilstm_crf probe needs groups (the sentence of each word)")
        y = np.asarray(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            self.scaler_, self.net_ = None, None
            return self
        self.scaler_ = StandardScaler().fit(np.asarray(X, dtype=np.float32))
        Xs = self.scaler_.transform(np.asarray(X, dtype=np.float32)).astype(np.float32)
        sentences = _sentences(groups)
        rng = np.random.default_rng(self.random_state)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.random_state)
                net = self._network(Xs.shape[1], len(self.classes_))
                optim = torch.optim.Adam(net.parameters(), lr=self.lr)
                net.train()
                for _ in range(self.epochs):
                    order = rng.permutation(len(sentences))
                    for start in range(0, len(order), self.batch_size):
                        batch = [sentences[i] for i in order[start : start + self.batch_size]]
                        feats, tags, mask, lengths = self._batches(Xs, batch, codes)
                        loss = -net.crf(
                            net.emissions(feats, lengths), tags, mask=mask, reduction="mean"
                        )
                        optim.zero_grad()
                        loss.backward()
                        optim.step()
        finally:
            torch.set_num_threads(threads)
        self.net_ = net.eval()
        return self

    def predict(self, X: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        import torch

        if groups is None:
            raise FinescopeError("the bilstm_crf probe needs groups (the sentence of each word)")
        if self.net_ is None:
            return np.repeat(self.classes_, len(X))
        Xs = self.scaler_.transform(np.asarray(X, dtype=np.float32)).astype(np.float32)
        sentences = _sentences(groups)
        pred = np.empty(len(X), dtype=np.int64)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                for start in range(0, len(sentences), 256):
                    batch = sentences[start : start + 256]
                    feats, _, mask, lengths = self._batches(Xs, batch, None)
                    paths = self.net_.crf.decode(self.net_.emissions(feats, lengths), mask=mask)
                    for rows, path in zip(batch, paths, strict=True):
                        pred[rows] = path
        finally:
            torch.set_num_threads(threads)
        return self.classes_[pred]


def make_probe(
    name: str, settings: ProbeSettings | Mapping | None = None, *, C: float | None = None
) -> Any:
    """A fresh, seeded probe by name.

    Parameters
    ----------
    name
        One of ``linear``, ``mlp``, ``svm``, ``bilstm_crf``.
    settings
        :class:`ProbeSettings`, or a mapping of some of its keys (the rest take their
        defaults).
    C
        ``linear`` / ``svm`` only: this C instead of the setting's (needed where the setting
        is a list of candidates, which only :func:`run_probes` searches).

    Returns
    -------
    An unfitted probe with ``fit(X, y, groups=None)`` / ``predict(X, groups=None)``.
    """
    s = ProbeSettings.build(settings)
    seed = s.seed
    if name in C_PROBES:
        if C is None:
            C = getattr(s, name).C
            if isinstance(C, tuple):
                raise FinescopeError(
                    f"config key probe.{name}.C: a list of values is searched on probe-dev "
                    "items by run_probes (pass dev_ids); give one number here"
                )
        if name == "linear":
            lin = s.linear
            return LinearProbe(C, lin.max_iter, random_state=seed, backend=lin.backend)
        return SVMProbe(C, s.svm.gamma, random_state=seed)
    if name == "mlp":
        p = s.mlp
        return MLPProbe(p.hidden, p.alpha, p.max_iter, random_state=seed)
    if name == "bilstm_crf":
        p = s.bilstm_crf
        return BiLSTMCRFProbe(p.hidden, p.epochs, p.lr, p.batch_size, seed)
    raise FinescopeError(f"config key probe.probes: unknown probe {name!r}; use one of {PROBES}")


def make_mdl_probe(settings: ProbeSettings | Mapping | None = None) -> Any:
    """The unfitted probe the online code trains on each block (``settings.mdl.probe``).

    ``linear`` -> :class:`SelectedLinearProbe` over ``mdl.C_grid`` (C chosen on held-out
    items at every block); ``mlp`` -> :class:`MLPProbe` with the ``mlp`` settings plus early
    stopping on held-out items.
    """
    s = ProbeSettings.build(settings)
    if s.mdl.probe == "linear":
        return SelectedLinearProbe(
            s.mdl.C_grid,
            max_iter=s.linear.max_iter,
            random_state=s.seed,
            backend=s.linear.backend,
        )
    p = s.mlp
    return MLPProbe(p.hidden, p.alpha, p.max_iter, s.seed, early_stopping=True)
