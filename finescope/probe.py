"""Layer-wise probing of cached hidden states: what each layer encodes, and how cheaply.

Every layer ``0 .. n_layers-1`` is probed on its own (layer 0 = embeddings): a probe is trained
on the train-split cache and scored on the test-split cache.

- NLI features: ``[premise vector; hypothesis vector]`` (width ``2 * width``), one row per item.
- NER features: the word vector, one row per word; the label is the entity type with B/I merged
  (``B-DNA``, ``I-DNA`` -> ``DNA``) or ``O``. Words are grouped into sentences through
  ``meta["word_item"]`` (needed by the sequence probe and by the item caps).

Probes (``settings["probes"]``): ``linear`` (standardise + multinomial logistic regression),
``mlp`` (standardise + one hidden layer), ``svm`` (standardise + RBF SVC, the study's NLI probe)
and ``bilstm_crf`` (BiLSTM + CRF over each sentence's word vectors, the study's NER probe).

Controls:

- Selectivity (Hewitt & Liang, 2019): the same probe is trained on a control task and
  ``selectivity = accuracy - control_accuracy`` (same probe, same layer). NER: every word type
  (lower-cased word string) gets a fixed random label drawn from the empirical training label
  distribution; types recur between train and test, so the control is learnable only by
  memorising types. NLI: the unit is the item (its id), so every item gets a fixed random label;
  no test item is a training item, so the control cannot be memorised into test accuracy and
  ``control_accuracy`` sits at chance (about ``sum_k p_k^2``). NLI selectivity is therefore
  accuracy above a chance level that the probe's own fitting procedure produces on unlearnable
  labels, not a penalty on memorisation capacity.
- MDL, online code (Voita & Titov, 2020): see :func:`online_codelength`; the linear probe
  coding each block picks its L2 strength on held-out earlier items
  (:class:`SelectedLinearProbe`), so that it is not over-confident at small training sizes.

Every random choice is seeded by ``settings["seed"]`` and never depends on the order in which
layers are processed, so results are identical for any ``n_jobs``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import log_softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from finescope.errors import FinescopeError

log = logging.getLogger(__name__)

PROBES = ("linear", "mlp", "svm", "bilstm_crf")
# Probes that read sequences of word vectors and so only apply to NER.
SEQUENCE_PROBES = frozenset({"bilstm_crf"})
# Probes whose per-item probabilities the online code can use.
MDL_PROBES = ("linear", "mlp")
# Voita & Titov (2020) block boundaries, in percent of the probe training set.
MDL_PORTIONS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.25, 12.5, 25.0, 50.0, 100.0)
# L2 strengths the online code's linear probe chooses from at every block.
MDL_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
COLUMNS = ["task", "model", "fraction", "seed", "layer", "probe", "measure", "value"]
NLI_VIEWS = ("premise", "hypothesis")
NER_VIEW = "word"
# Largest finite float16: an overflowed half-precision activation is clipped back to it.
_FP16_MAX = float(np.finfo(np.float16).max)

DEFAULT_SETTINGS: dict[str, Any] = {
    "probes": ["linear"],
    "linear": {"C": 1.0, "max_iter": 1000},
    "mlp": {"hidden": 128, "alpha": 1e-4, "max_iter": 200},
    "svm": {"C": 1.0, "gamma": "scale"},
    "bilstm_crf": {"hidden": 64, "epochs": 10, "lr": 0.01, "batch_size": 32},
    "selectivity": True,
    # True/False, or {"enabled": bool, "probe": "linear" | "mlp", "portions": [...percent...],
    # "C_grid": [...]} (see make_mdl_probe).
    "mdl": True,
    "seed": 0,
    "max_train_items": None,
    "max_test_items": None,
    "n_jobs": 1,
}
# Keys the workflow may pass that matter elsewhere, not here.
_IGNORED_KEYS = frozenset({"random_baseline"})


# --------------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------------


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
    """

    def __init__(self, C: float = 1.0, max_iter: int = 1000, random_state: int = 0) -> None:
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def _classifier(self, y: np.ndarray) -> LogisticRegression:
        return LogisticRegression(
            C=self.C, max_iter=self.max_iter, solver="lbfgs", random_state=self.random_state
        )

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
    """

    def __init__(
        self,
        grid: Sequence[float] = MDL_C_GRID,
        holdout: float = 0.1,
        min_items: int = 10,
        max_iter: int = 1000,
        random_state: int = 0,
    ) -> None:
        self.grid = grid
        self.holdout = holdout
        self.min_items = min_items
        self.max_iter = max_iter
        self.random_state = random_state

    def _lr(self, C: float, warm_start: bool = False) -> LogisticRegression:
        return LogisticRegression(
            C=C, max_iter=self.max_iter, random_state=self.random_state, warm_start=warm_start
        )

    def _choose_C(self, X: np.ndarray, y: np.ndarray) -> float:
        grid = sorted(float(c) for c in self.grid)
        n = len(y)
        if n < self.min_items:
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

    def _classifier(self, y: np.ndarray) -> LogisticRegression:
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


def make_probe(name: str, settings: dict | None = None) -> Any:
    """A fresh, seeded probe by name.

    Parameters
    ----------
    name
        One of ``linear``, ``mlp``, ``svm``, ``bilstm_crf``.
    settings
        Probe settings (``run_probes`` keys); missing keys take :data:`DEFAULT_SETTINGS`.

    Returns
    -------
    An unfitted probe with ``fit(X, y, groups=None)`` / ``predict(X, groups=None)``.
    """
    s = resolve_settings(settings or {})
    seed = s["seed"]
    if name == "linear":
        p = s["linear"]
        return LinearProbe(p["C"], p["max_iter"], random_state=seed)
    if name == "mlp":
        p = s["mlp"]
        return MLPProbe(p["hidden"], p["alpha"], p["max_iter"], random_state=seed)
    if name == "svm":
        p = s["svm"]
        return SVMProbe(p["C"], p["gamma"], random_state=seed)
    if name == "bilstm_crf":
        p = s["bilstm_crf"]
        return BiLSTMCRFProbe(p["hidden"], p["epochs"], p["lr"], p["batch_size"], seed)
    raise FinescopeError(f"config key probe.probes: unknown probe {name!r}; use one of {PROBES}")


def make_mdl_probe(settings: dict | None = None) -> Any:
    """The unfitted probe the online code trains on each block (``settings["mdl"]["probe"]``).

    ``linear`` -> :class:`SelectedLinearProbe` over ``mdl.C_grid`` (C chosen on held-out
    items at every block); ``mlp`` -> :class:`MLPProbe` with the ``mlp`` settings plus early
    stopping on held-out items.
    """
    s = resolve_settings(settings or {})
    mdl = s["mdl"]
    if mdl["probe"] == "linear":
        return SelectedLinearProbe(
            mdl["C_grid"], max_iter=s["linear"]["max_iter"], random_state=s["seed"]
        )
    p = s["mlp"]
    return MLPProbe(p["hidden"], p["alpha"], p["max_iter"], s["seed"], early_stopping=True)


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def resolve_settings(settings: dict) -> dict:
    """``settings`` over :data:`DEFAULT_SETTINGS`, checked; errors name the config key.

    Parameters
    ----------
    settings
        Any subset of the keys of :data:`DEFAULT_SETTINGS` (nested dicts merge key by key).

    Returns
    -------
    A complete settings dict; ``mdl`` is normalised to ``{enabled, probe, portions, C_grid}``.
    """
    if not isinstance(settings, dict):
        raise FinescopeError("config key probe: expected a mapping of probe settings")
    unknown = set(settings) - set(DEFAULT_SETTINGS) - _IGNORED_KEYS
    if unknown:
        raise FinescopeError(
            f"config key probe: unknown setting(s) {sorted(unknown)}; known: "
            f"{sorted(DEFAULT_SETTINGS)}"
        )
    out = copy.deepcopy(DEFAULT_SETTINGS)
    for key, value in settings.items():
        if key in _IGNORED_KEYS:
            continue
        if isinstance(out.get(key), dict):
            if not isinstance(value, dict):
                raise FinescopeError(f"config key probe.{key}: expected a mapping")
            extra = set(value) - set(out[key])
            if extra:
                raise FinescopeError(
                    f"config key probe.{key}: unknown setting(s) {sorted(extra)}; known: "
                    f"{sorted(out[key])}"
                )
            out[key].update(value)
        else:
            out[key] = copy.deepcopy(value)
    probes = out["probes"]
    if isinstance(probes, str) or not probes:
        raise FinescopeError("config key probe.probes: expected a non-empty list of probe names")
    for name in probes:
        if name not in PROBES:
            raise FinescopeError(
                f"config key probe.probes: unknown probe {name!r}; use some of {list(PROBES)}"
            )
    out["probes"] = list(dict.fromkeys(probes))
    for key in ("max_train_items", "max_test_items"):
        if out[key] is not None and (not isinstance(out[key], int) or out[key] < 1):
            raise FinescopeError(f"config key probe.{key}: expected a positive integer or null")
    if not isinstance(out["n_jobs"], int) or out["n_jobs"] == 0:
        raise FinescopeError("config key probe.n_jobs: expected a non-zero integer (-1 = all)")
    for key, field in (("linear", "C"), ("svm", "C"), ("bilstm_crf", "lr")):
        if not out[key][field] > 0:
            raise FinescopeError(f"config key probe.{key}.{field}: must be > 0")
    out["mdl"] = _resolve_mdl(out["mdl"])
    return out


def _resolve_mdl(mdl: Any) -> dict:
    if isinstance(mdl, bool):
        mdl = {"enabled": mdl}
    if not isinstance(mdl, dict) or set(mdl) - {"enabled", "probe", "portions", "C_grid"}:
        raise FinescopeError(
            "config key probe.mdl: expected true/false or {enabled, probe, portions, C_grid}"
        )
    out = {
        "enabled": True,
        "probe": "linear",
        "portions": list(MDL_PORTIONS),
        "C_grid": list(MDL_C_GRID),
        **mdl,
    }
    grid = out["C_grid"]
    if not grid or any(not isinstance(c, (int, float)) or c <= 0 for c in grid):
        raise FinescopeError("config key probe.mdl.C_grid: expected a list of positive numbers")
    if out["probe"] not in MDL_PROBES:
        raise FinescopeError(
            f"config key probe.mdl.probe: {out['probe']!r} gives no probabilities; "
            f"use one of {list(MDL_PROBES)}"
        )
    mdl_block_ends(1000, out["portions"])  # validates
    return out


# --------------------------------------------------------------------------------------------
# One layer, controls, online code
# --------------------------------------------------------------------------------------------


def probe_layer(
    X_train: np.ndarray,
    y_train: Sequence,
    X_test: np.ndarray,
    y_test: Sequence,
    probe: str | Any = "linear",
    settings: dict | None = None,
    *,
    groups_train: np.ndarray | None = None,
    groups_test: np.ndarray | None = None,
) -> dict[str, float]:
    """Train one probe on one layer's features and score it on the test features.

    Parameters
    ----------
    X_train, X_test
        Features, shapes (N_train, D) and (N_test, D); row i belongs to label i.
    y_train, y_test
        Labels, shapes (N_train,) and (N_test,).
    probe
        A probe name (see :func:`make_probe`) or an unfitted object with fit/predict.
    settings
        Probe settings (``run_probes`` keys).
    groups_train, groups_test
        Sentence index of each row, shapes (N_train,) and (N_test,); sequence probes only.

    Returns
    -------
    ``{"accuracy": float, "macro_f1": float}`` on the test set.
    """
    X_train, X_test = np.asarray(X_train), np.asarray(X_test)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if len(X_train) != len(y_train) or len(X_test) != len(y_test):
        raise FinescopeError(
            f"features and labels differ in length: train {len(X_train)} vs {len(y_train)}, "
            f"test {len(X_test)} vs {len(y_test)}"
        )
    model = make_probe(probe, settings) if isinstance(probe, str) else probe
    # Only sequence probes take groups; plain sklearn estimators do not accept the keyword.
    fit_kw = {} if groups_train is None else {"groups": groups_train}
    pred_kw = {} if groups_test is None else {"groups": groups_test}
    model.fit(X_train, y_train, **fit_kw)
    pred = np.asarray(model.predict(X_test, **pred_kw))
    return {
        "accuracy": float(accuracy_score(y_test, pred)),
        "macro_f1": float(f1_score(y_test, pred, average="macro", zero_division=0)),
    }


def _key_uniform(seed: int, key: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, key), the same in every process."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def selectivity_control_labels(keys: Sequence[str], label_pool: Sequence, seed: int) -> np.ndarray:
    """Control-task labels (Hewitt & Liang, 2019): one fixed random label per distinct key.

    Each distinct key draws its label from the empirical distribution of ``label_pool``, using
    a uniform number hashed from ``(seed, key)``: the same key always gets the same label, in
    the train and the test split alike and whatever other keys are present, so every grid
    point sees the same control task. Keys are used as given (the caller lower-cases words).

    Parameters
    ----------
    keys
        One key per row, shape (N,): the lower-cased word (NER) or the item id (NLI).
    label_pool
        Task labels whose empirical distribution is sampled (the training labels), shape (M,).
    seed
        Control-task seed.

    Returns
    -------
    Control labels, shape (N,), drawn from the values of ``label_pool``.
    """
    classes, counts = np.unique(np.asarray(label_pool), return_counts=True)
    if len(classes) == 0:
        raise FinescopeError("selectivity control: the label pool is empty")
    cdf = np.cumsum(counts) / counts.sum()
    table: dict[str, int] = {}
    codes = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        key = str(key)
        if key not in table:
            u = _key_uniform(seed, key)
            table[key] = min(int(np.searchsorted(cdf, u, side="right")), len(classes) - 1)
        codes[i] = table[key]
    return classes[codes]


def mdl_block_ends(n: int, portions: Sequence[float] = MDL_PORTIONS) -> list[int]:
    """End offsets of the online-code blocks over ``n`` items.

    The end of the block at portion ``p`` percent is ``floor(n * p / 100)`` clipped to
    ``[1, n]``; the last end is ``n``; repeated ends (empty blocks) are dropped.

    Parameters
    ----------
    n
        Number of items (>= 1).
    portions
        Increasing percentages in (0, 100], ending with 100.

    Returns
    -------
    Strictly increasing ends; the first block is ``[0, ends[0])``.
    """
    portions = [float(p) for p in portions]
    if (
        not portions
        or portions[-1] != 100.0
        or portions[0] <= 0
        or any(b <= a for a, b in zip(portions, portions[1:], strict=False))
    ):
        raise FinescopeError(
            f"config key probe.mdl.portions: {portions} must increase strictly from > 0 to 100"
        )
    if n < 1:
        raise FinescopeError("online code: no items to transmit")
    # The small epsilon keeps exact products (n * 6.25 / 100) from flooring one short.
    ends = [min(max(int(math.floor(n * p / 100 + 1e-9)), 1), n) for p in portions[:-1]] + [n]
    return list(dict.fromkeys(ends))


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


# --------------------------------------------------------------------------------------------
# Caches
# --------------------------------------------------------------------------------------------


def open_cache(path: str | Path) -> Any:
    """Open a hidden-state cache (a folder written by :func:`finescope.extract.run_extract`)."""
    from finescope.extract import Cache

    path = Path(path)
    if not (path / "meta.json").is_file():
        raise FinescopeError(
            f"{path}: not a hidden-state cache (no meta.json); run the extract stage first"
        )
    return Cache(path)


def merge_ner_tag(tag: str) -> str:
    """Entity type of an IOB2 (or IOB1/IOBES) tag: ``B-DNA`` / ``I-DNA`` -> ``DNA``; ``O``."""
    if len(tag) > 2 and tag[1] == "-" and tag[0] in "BIES":
        return tag[2:]
    return tag


@dataclass
class _Split:
    """Rows of one cache chosen for probing, with what each row needs."""

    rows: np.ndarray  # row indices into the cache's arrays, shape (n,)
    labels: np.ndarray  # probe labels, shape (n,)
    groups: np.ndarray | None  # sentence (item index) of each row (NER)
    keys: np.ndarray | None  # control-task key of each row (selectivity)
    control: np.ndarray | None = None  # control-task label of each row (selectivity)


def sample_item_indices(ids: Sequence[str], max_items: int | None, seed: int) -> np.ndarray:
    """Indices of the items kept under a cap: a seeded permutation of the sorted ids, prefix.

    The choice depends only on the set of ids, the cap and the seed, so caches of the same
    items (every fraction, seed and the random baseline) keep the same items.

    Parameters
    ----------
    ids
        Item ids in cache order, shape (N,), unique.
    max_items
        Cap, or None to keep all.
    seed
        Sampling seed.

    Returns
    -------
    Sorted indices into ``ids`` of the kept items.
    """
    ids = list(map(str, ids))
    if len(set(ids)) != len(ids):
        raise FinescopeError("cache meta.json: item ids are not unique")
    if max_items is None or max_items >= len(ids):
        return np.arange(len(ids))
    sorted_ids = sorted(ids)
    chosen = {sorted_ids[i] for i in np.random.default_rng(seed).permutation(len(ids))[:max_items]}
    return np.array([i for i, item in enumerate(ids) if item in chosen], dtype=np.int64)


def _select(
    task: str,
    cache: Any,
    path: Path,
    max_items: int | None,
    seed: int,
    control: bool,
    words: Sequence[str] | None,
) -> _Split:
    items = sample_item_indices(cache.ids, max_items, seed)
    labels = np.asarray([str(label) for label in cache.labels])
    if task == "nli":
        if len(labels) != len(cache.ids):
            raise FinescopeError(
                f"{path}/meta.json: {len(labels)} labels for {len(cache.ids)} items"
            )
        keys = np.asarray(cache.ids, dtype=str)[items] if control else None
        return _Split(items, labels[items], None, keys)
    word_item = cache.meta.get("word_item")
    if word_item is None:
        raise FinescopeError(
            f"{path}/meta.json: NER cache without 'word_item'; re-run the extract stage"
        )
    word_item = np.asarray(word_item, dtype=np.int64)
    if len(word_item) != len(labels):
        raise FinescopeError(
            f"{path}/meta.json: {len(labels)} word labels but {len(word_item)} word_item entries"
        )
    if len(word_item) and (word_item.min() < 0 or word_item.max() >= len(cache.ids)):
        raise FinescopeError(f"{path}/meta.json: word_item points outside the item list")
    rows = np.flatnonzero(np.isin(word_item, items))
    merged = np.asarray([merge_ner_tag(tag) for tag in labels[rows]])
    keys = None
    if control:
        words = cache.meta.get("words") if words is None else words
        if words is None:
            raise FinescopeError(
                f"{path}/meta.json: NER selectivity needs the word strings (meta 'words'); "
                "re-run extract, pass the words, or set probe.selectivity: false"
            )
        if len(words) != len(labels):
            raise FinescopeError(f"{path}: {len(words)} words for {len(labels)} word labels")
        keys = np.asarray([str(words[r]).lower() for r in rows])
    return _Split(rows, merged, word_item[rows], keys)


def _check_caches(task: str, train: Any, test: Any, paths: tuple[Path, Path]) -> None:
    views = NLI_VIEWS if task == "nli" else (NER_VIEW,)
    for cache, path in zip((train, test), paths, strict=True):
        cached_task = cache.meta.get("task", task)
        if cached_task != task:
            raise FinescopeError(f"{path}/meta.json: a {cached_task} cache given for task {task}")
        missing = [v for v in views if v not in cache.meta.get("views", views)]
        if missing:
            raise FinescopeError(f"{path}/meta.json: views {missing} missing for task {task}")
    for key in ("n_layers", "width"):
        if train.meta.get(key) != test.meta.get(key):
            raise FinescopeError(
                f"{paths[0]} and {paths[1]}: meta.json {key} differs "
                f"({train.meta.get(key)} vs {test.meta.get(key)}); extract both from one model"
            )


def _features(task: str, cache: Any, layer: int, rows: np.ndarray) -> np.ndarray:
    if task == "nli":
        X = np.concatenate([cache.layer(v, layer)[rows] for v in NLI_VIEWS], axis=1)
    else:
        X = cache.layer(NER_VIEW, layer)[rows]
    X = np.asarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        if np.isnan(X).any():
            raise FinescopeError(
                f"cache {getattr(cache, 'path', '')}: layer {layer} holds NaN hidden states; "
                "delete the cache and re-extract (extract.dtype: float32 if it recurs)"
            )
        # float16 overflow of very large activations: keep them, at the largest half value.
        log.warning("layer %d: infinite hidden states clipped to +-%g", layer, _FP16_MAX)
        X = np.clip(X, -_FP16_MAX, _FP16_MAX)
    return X


# --------------------------------------------------------------------------------------------
# The grid point
# --------------------------------------------------------------------------------------------


def _probe_one_layer(
    layer: int,
    X_train: np.ndarray,
    X_test: np.ndarray,
    train: _Split,
    test: _Split,
    settings: dict,
) -> list[tuple[int, str, str, float]]:
    """All measures of one layer: (layer, probe, measure, value) tuples in a fixed order."""
    from threadpoolctl import threadpool_limits

    out: list[tuple[int, str, str, float]] = []
    groups = {"groups_train": train.groups, "groups_test": test.groups}
    # One BLAS thread per layer: identical arithmetic for any n_jobs, no oversubscription.
    with threadpool_limits(limits=1):
        for name in settings["probes"]:
            scores = probe_layer(
                X_train, train.labels, X_test, test.labels, name, settings, **groups
            )
            out += [(layer, name, m, v) for m, v in scores.items()]
            if train.control is not None and test.control is not None:
                ctrl = probe_layer(
                    X_train, train.control, X_test, test.control, name, settings, **groups
                )
                out.append((layer, name, "control_accuracy", ctrl["accuracy"]))
                out.append((layer, name, "selectivity", scores["accuracy"] - ctrl["accuracy"]))
        mdl = settings["mdl"]
        if mdl["enabled"]:
            n_classes = len(np.unique(train.labels))
            template = make_mdl_probe(settings)
            bits, uniform = online_codelength(
                X_train,
                train.labels,
                n_classes,
                lambda: clone(template),
                settings["seed"],
                mdl["portions"],
            )
            out.append((layer, mdl["probe"], "codelength", bits))
            out.append((layer, mdl["probe"], "compression", uniform / bits if bits else math.nan))
    log.info("layer %d probed", layer)
    return out


def run_probes(
    task: str,
    train_cache: str | Path,
    test_cache: str | Path,
    point: dict,
    settings: dict,
    *,
    train_words: Sequence[str] | None = None,
    test_words: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Probe every layer of a model's hidden states at one grid point.

    Parameters
    ----------
    task
        ``"nli"`` or ``"ner"``.
    train_cache, test_cache
        Cache folders (contract layout) of the train and test split; probes are trained on
        the first and scored on the second.
    point
        ``{"task", "model", "fraction", "seed"}`` copied into every row (``fraction`` may be
        ``"random"`` for the random-weights baseline).
    settings
        Keys of :data:`DEFAULT_SETTINGS`: probes, linear {C, max_iter}, mlp {hidden, alpha,
        max_iter}, svm {C, gamma}, bilstm_crf {hidden, epochs, lr, batch_size}, selectivity,
        mdl (bool or {enabled, probe, portions, C_grid}), seed, max_train_items,
        max_test_items, n_jobs (layers in parallel; results do not depend on it).
    train_words, test_words
        NER selectivity only, when the cache meta has no ``"words"``: the word string of every
        cached word row (length = number of cached words).

    Returns
    -------
    Long table with columns task, model, fraction, seed, layer, probe, measure, value; per
    layer and probe: accuracy, macro_f1 (+ control_accuracy, selectivity); per layer for the
    MDL probe: codelength (bits), compression.
    """
    from joblib import Parallel, delayed

    if task not in ("nli", "ner"):
        raise FinescopeError(f"task {task!r}: expected 'nli' or 'ner'")
    missing = [k for k in ("model", "fraction", "seed") if k not in point]
    if missing:
        raise FinescopeError(f"probe grid point {point}: missing {missing}")
    if point.get("task", task) != task:
        raise FinescopeError(f"probe grid point {point}: task differs from {task!r}")
    s = resolve_settings(settings)
    if task == "nli":
        wrong = [p for p in s["probes"] if p in SEQUENCE_PROBES]
        if wrong:
            raise FinescopeError(
                f"config key probe.probes: {wrong} read word sequences and apply to NER only; "
                "leave them out for nli"
            )
    paths = (Path(train_cache), Path(test_cache))
    train_c, test_c = open_cache(paths[0]), open_cache(paths[1])
    _check_caches(task, train_c, test_c, paths)
    n_layers = int(train_c.n_layers)
    train = _select(
        task, train_c, paths[0], s["max_train_items"], s["seed"], s["selectivity"], train_words
    )
    test = _select(
        task, test_c, paths[1], s["max_test_items"], s["seed"], s["selectivity"], test_words
    )
    if len(train.rows) == 0 or len(test.rows) == 0:
        raise FinescopeError(f"{paths[0]} / {paths[1]}: no rows to probe")
    log.info(
        "probing %s %s: %d layers, %d train rows, %d test rows, probes %s",
        task,
        point,
        n_layers,
        len(train.rows),
        len(test.rows),
        s["probes"],
    )
    if s["selectivity"]:
        # One control task for the whole grid point: keys (word type / item id) -> label.
        train.control = selectivity_control_labels(train.keys, train.labels, s["seed"])
        test.control = selectivity_control_labels(test.keys, train.labels, s["seed"])

    def layer_jobs():
        # Layers are read here, one at a time and only as workers free up (memory stays at a
        # few layers); workers get plain arrays and never open the caches themselves.
        for layer in range(n_layers):
            X_train = _features(task, train_c, layer, train.rows)
            X_test = _features(task, test_c, layer, test.rows)
            yield layer, X_train, X_test, train, test, s

    if s["n_jobs"] == 1:
        results = [_probe_one_layer(*job) for job in layer_jobs()]
    else:
        results = Parallel(n_jobs=s["n_jobs"])(
            delayed(_probe_one_layer)(*job) for job in layer_jobs()
        )
    rows = [r for layer_rows in results for r in layer_rows]
    table = pd.DataFrame(rows, columns=["layer", "probe", "measure", "value"])
    table.insert(0, "task", task)
    table.insert(1, "model", point["model"])
    table.insert(2, "fraction", point["fraction"])
    table.insert(3, "seed", point["seed"])
    table["layer"] = table["layer"].astype(int)
    table["value"] = table["value"].astype(float)
    return table[COLUMNS]
