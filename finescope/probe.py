"""Layer-wise probing of cached hidden states: what each layer encodes, and how cheaply.

Every layer ``0 .. n_layers-1`` is probed on its own (layer 0 = embeddings). Three sets of
items take part, none of them ever seen in fine-tuning:

- probe-train: the rows of the probe cache (the reserved probe pool) whose item id is not in
  ``dev_ids``; every probe is fitted on these rows only, and so is the online code;
- probe-dev: the rows of the probe cache whose item id is in ``dev_ids``; they choose the
  probe's C where a list of values is given, and are scored (measures prefixed ``dev_``) so
  that the reported best layer can be picked on them rather than on the test set;
- test: the rows of the test cache, scored with the measures named as they are.

Features (column ``features`` of the output names what was used):

- NLI: a concatenation of per-item views. Pair caches (``meta["nli_view"] == "pair"``: one
  joint sequence per item) store ``cls`` (the position the classification head reads) and
  ``premise`` / ``hypothesis`` (means over each segment of the joint pass); separate caches
  (``nli_view`` "separate" or absent) store ``premise`` / ``hypothesis`` from two sequences.
  ``nli_features``: ``cls``, ``segments`` (``premise+hypothesis``) or ``cls_segments``
  (``cls+premise+hypothesis``); ``auto`` = ``cls_segments`` for pair caches, ``segments`` for
  separate ones. ``nli_interactions`` appends ``|u-v|`` and ``u*v`` of the premise (u) and
  hypothesis (v) vectors.
- NER: the word vector (``word:<pooling>``, the sub-word pooling in ``meta["ner_pooling"]``,
  ``mean`` where the cache does not say), one row per word; the label is the entity type with
  B/I merged (``B-DNA``, ``I-DNA`` -> ``DNA``) or ``O``. Words are grouped into sentences
  through ``meta["word_item"]`` (needed by the sequence probe and to split by item).

Probes (``settings["probes"]``): ``linear`` (standardise + multinomial logistic regression),
``mlp`` (standardise + one hidden layer), ``svm`` (standardise + RBF SVC, the study's NLI probe)
and ``bilstm_crf`` (BiLSTM + CRF over each sentence's word vectors, the study's NER probe).
``linear.C`` and ``svm.C`` may be lists: per layer, the C with the best probe-dev macro-F1 is
used (ties: the smaller C, i.e. the stronger regularisation), reported as ``chosen_C``.

Controls:

- Selectivity (Hewitt & Liang, 2019): the same probe (same layer, same C) is trained on a
  control task whose labels are a fixed random function of a lexical key, and
  ``selectivity = accuracy - control_accuracy``. Keys recur between probe-train and the
  scored splits and the key -> label map is the same in all of them, so the control is
  learnable exactly by memorising keys: a high control score means the probe can memorise
  surface types from these features, and selectivity is what is left beyond that.

  - NER: the key is the word type (the lower-cased word string). Besides accuracy (``O``
    dominates NER, so accuracy selectivity is nearly blind) it is reported on macro-F1
    (``control_macro_f1``, ``selectivity_macro_f1``) and on entity words, the words whose
    gold task label is not ``O`` (``entity_accuracy``, ``control_entity_accuracy`` = control
    accuracy on those same words, ``selectivity_entity``).
  - NLI (``nli_control: lexical``): the key is the lexical type of the hypothesis, its first
    content word (:func:`hypothesis_type`: whitespace words, lower-cased, letters only, the
    first one not in :data:`STOP_WORDS`; the first word with letters if all are stop words;
    the first whitespace word if none has letters). ``control_coverage`` is the share of
    scored items whose key occurs among the probe-train keys: only those can be memorised,
    the rest are at chance. ``nli_control: none`` reports no NLI selectivity.

  Control labels come from :func:`selectivity_control_labels`: drawn per key from the
  probe-train label distribution with a hash of (seed, key), so every split and every grid
  point sees the same control task.
- MDL, online code (Voita & Titov, 2020), on the probe-train rows: see
  :func:`online_codelength`; the linear probe coding each block picks its L2 strength on
  held-out earlier items (:class:`SelectedLinearProbe`), so that it is not over-confident at
  small training sizes.

Every random choice is seeded by ``settings["seed"]`` and never depends on the order in which
layers are processed, so results are identical for any ``n_jobs``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
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

from finescope import columns
from finescope.errors import FinescopeError
from finescope.probe_pool import cap_items
from finescope.progress import Progress
from finescope.settings import defaults, tasks

log = logging.getLogger(__name__)

PROBES = ("linear", "mlp", "svm", "bilstm_crf")
# Probes that read sequences of word vectors and so only apply to NER.
SEQUENCE_PROBES = frozenset({"bilstm_crf"})
# Probes whose C may be a list, chosen per layer on probe-dev.
C_PROBES = ("linear", "svm")
# Probes whose per-item probabilities the online code can use.
MDL_PROBES = ("linear", "mlp")
# Voita & Titov (2020) block boundaries, in percent of the probe training set.
MDL_PORTIONS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.25, 12.5, 25.0, 50.0, 100.0)
# L2 strengths the online code's linear probe chooses from at every block.
MDL_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
COLUMNS = columns.PROBING
NLI_VIEWS = ("premise", "hypothesis")
NLI_LAYOUTS = ("pair", "separate")
NLI_FEATURES = {
    "cls": ("cls",),
    "segments": ("premise", "hypothesis"),
    "cls_segments": ("cls", "premise", "hypothesis"),
}
NLI_CONTROLS = ("lexical", "none")
NER_VIEW = "word"
NER_OUTSIDE = "O"
# Function words skipped when taking a hypothesis's first content word (fixed: changing it
# changes the NLI control task).
STOP_WORDS = frozenset(
    """a an the this that these those some any all each every no not
    is are was were be been being am has have had do does did will would can could
    there here it its he she they we i you his her their our my your him them us
    of in on at to for with by from as into over under about and or but if then so""".split()
)
# Largest finite float16: an overflowed half-precision activation is clipped back to it.
_FP16_MAX = float(np.finfo(np.float16).max)

# The config block's defaults (from the schema, their one home; C: a number, or a list searched
# per layer on probe-dev macro-F1) and the keys only a job sets: optional caps (None = off) on
# probe-train and test items (probe-dev is never capped) and the worker count.
DEFAULT_SETTINGS: dict[str, Any] = {
    **{key: value for key, value in defaults("probe").items() if key != "random_baseline"},
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


LINEAR_BACKENDS = ("torch", "sklearn")


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


def make_probe(name: str, settings: dict | None = None, *, C: float | None = None) -> Any:
    """A fresh, seeded probe by name.

    Parameters
    ----------
    name
        One of ``linear``, ``mlp``, ``svm``, ``bilstm_crf``.
    settings
        Probe settings (``run_probes`` keys); missing keys take :data:`DEFAULT_SETTINGS`.
    C
        ``linear`` / ``svm`` only: this C instead of the setting's (needed where the setting
        is a list of candidates, which only :func:`run_probes` searches).

    Returns
    -------
    An unfitted probe with ``fit(X, y, groups=None)`` / ``predict(X, groups=None)``.
    """
    s = resolve_settings(settings or {})
    seed = s["seed"]
    if name in C_PROBES:
        if C is None:
            C = s[name]["C"]
            if isinstance(C, list):
                raise FinescopeError(
                    f"config key probe.{name}.C: a list of values is searched on probe-dev "
                    "items by run_probes (pass dev_ids); give one number here"
                )
        if name == "linear":
            lin = s["linear"]
            return LinearProbe(C, lin["max_iter"], random_state=seed, backend=lin["backend"])
        return SVMProbe(C, s["svm"]["gamma"], random_state=seed)
    if name == "mlp":
        p = s["mlp"]
        return MLPProbe(p["hidden"], p["alpha"], p["max_iter"], random_state=seed)
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
            mdl["C_grid"],
            max_iter=s["linear"]["max_iter"],
            random_state=s["seed"],
            backend=s["linear"]["backend"],
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
    A complete settings dict; ``mdl`` is normalised to ``{enabled, probe, portions, C_grid}``
    and a list ``linear.C`` / ``svm.C`` is sorted ascending, duplicates dropped.
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
    for key in C_PROBES:
        out[key]["C"] = _resolve_C(out[key]["C"], f"probe.{key}.C")
    if out["linear"]["backend"] not in LINEAR_BACKENDS:
        raise FinescopeError(
            f"config key probe.linear.backend: {out['linear']['backend']!r}; use one of "
            f"{list(LINEAR_BACKENDS)}"
        )
    if not out["bilstm_crf"]["lr"] > 0:
        raise FinescopeError("config key probe.bilstm_crf.lr: must be > 0")
    for key, allowed in (
        ("nli_features", tuple(["auto", *NLI_FEATURES])),
        ("nli_control", NLI_CONTROLS),
    ):
        if out[key] not in allowed:
            raise FinescopeError(
                f"config key probe.{key}: {out[key]!r}; use one of {list(allowed)}"
            )
    for key in ("nli_interactions", "selectivity"):
        if not isinstance(out[key], bool):
            raise FinescopeError(f"config key probe.{key}: expected true or false")
    out["mdl"] = _resolve_mdl(out["mdl"])
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _resolve_C(value: Any, key: str) -> float | list[float]:
    """A positive number, or a non-empty list of them (sorted, duplicates dropped)."""
    if isinstance(value, (list, tuple)):
        if not value or not all(_is_number(c) and c > 0 for c in value):
            raise FinescopeError(f"config key {key}: expected a non-empty list of numbers > 0")
        return sorted({float(c) for c in value})
    if not _is_number(value) or not value > 0:
        raise FinescopeError(f"config key {key}: expected a number > 0 or a list of them")
    return value


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
        One key per row, shape (N,): the lower-cased word (NER) or the hypothesis type
        (NLI, :func:`hypothesis_type`).
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


def hypothesis_type(text: str) -> str:
    """Lexical type of an NLI hypothesis, the key of its control label: its first content word.

    The text is split on whitespace; each word is lower-cased and reduced to its letters
    (``"IL-2"`` -> ``"il"``, ``"dog's"`` -> ``"dogs"``). The type is the first such word that
    is not empty and not in :data:`STOP_WORDS`; if every word is a stop word, the first
    non-empty one; if no word has a letter, the first whitespace word, lower-cased (``""``
    for an empty text).

    Examples
    --------
    ``"A man is sleeping."`` -> ``"man"``; ``"It is not."`` -> ``"it"``; ``"42 !"`` -> ``"42"``.
    """
    words = str(text).lower().split()
    letters = [w for w in ("".join(ch for ch in word if ch.isalpha()) for word in words) if w]
    for word in letters:
        if word not in STOP_WORDS:
            return word
    if letters:
        return letters[0]
    return words[0] if words else ""


def control_coverage(keys: Sequence[str], train_keys: Iterable[str]) -> float:
    """Share of ``keys`` that occur among ``train_keys`` (nan for no keys): the scored items
    whose control label a probe could have memorised."""
    keys = [str(k) for k in keys]
    if not keys:
        return math.nan
    seen = {str(k) for k in train_keys}
    return float(np.mean([k in seen for k in keys]))


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


# --------------------------------------------------------------------------------------------
# Caches
# --------------------------------------------------------------------------------------------


def open_cache(path: str | Path) -> Any:
    """Open a hidden-state cache (a folder written by :func:`finescope.extract.run_extract`)."""
    from finescope.cache import Cache

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
    coverage: float = math.nan  # share of rows whose key occurs in probe-train (NLI control)


@dataclass(frozen=True)
class FeatureSpec:
    """What a probe reads: the views concatenated, in order, and the NLI interaction terms."""

    name: str  # the ``features`` column, e.g. "cls+premise+hypothesis", "word:last"
    views: tuple[str, ...]
    interactions: bool = False

    @property
    def needed_views(self) -> tuple[str, ...]:
        extra = NLI_VIEWS if self.interactions else ()
        return tuple(dict.fromkeys((*self.views, *extra)))


def sample_item_indices(ids: Sequence[str], max_items: int | None, seed: int) -> np.ndarray:
    """Sorted indices into ``ids`` of the items kept under a cap (see
    :func:`finescope.probe_pool.cap_items`, the workflow's item cap)."""
    try:
        return np.asarray(cap_items(ids, max_items, seed), dtype=np.int64)
    except FinescopeError as exc:
        raise FinescopeError(f"cache meta.json: {exc}") from None


def nli_layout(meta: dict, path: str | Path = "cache") -> str:
    """``"pair"`` or ``"separate"``: how an NLI cache was encoded (absent = separate)."""
    layout = meta.get("nli_view") or "separate"
    if layout not in NLI_LAYOUTS:
        raise FinescopeError(
            f"{path}/meta.json: nli_view {layout!r}; expected one of {list(NLI_LAYOUTS)}"
        )
    return layout


def resolve_features(task: str, meta: dict, settings: dict | None = None) -> FeatureSpec:
    """The features probed for a cache, from its meta and the settings.

    Parameters
    ----------
    task
        ``"nli"`` or ``"ner"``.
    meta
        The cache's ``meta.json`` (``nli_view``, ``ner_pooling`` are read; absent = separate
        and mean).
    settings
        Probe settings (``nli_features``, ``nli_interactions``).

    Returns
    -------
    The :class:`FeatureSpec`; its ``name`` is the ``features`` column of the output.
    """
    s = resolve_settings(settings or {})
    if task == "ner":
        return FeatureSpec(f"{NER_VIEW}:{meta.get('ner_pooling') or 'mean'}", (NER_VIEW,))
    layout = nli_layout(meta)
    mode = s["nli_features"]
    if mode == "auto":
        mode = "cls_segments" if layout == "pair" else "segments"
    views = NLI_FEATURES[mode]
    if "cls" in views and layout != "pair":
        raise FinescopeError(
            f"config key probe.nli_features: {mode!r} reads the 'cls' view, which only pair "
            "caches store (extract.nli_view: pair); use segments or auto for separate caches"
        )
    name = "+".join(views) + ("+|u-v|+u*v" if s["nli_interactions"] else "")
    return FeatureSpec(name, views, s["nli_interactions"])


def _item_ids(cache: Any, path: Path) -> list[str]:
    ids = [str(i) for i in cache.ids]
    if len(set(ids)) != len(ids):
        raise FinescopeError(f"{path}/meta.json: item ids are not unique")
    return ids


def _hypothesis_keys(
    cache: Any, path: Path, items: np.ndarray, given: Mapping | Sequence | None, arg: str
) -> np.ndarray:
    """Hypothesis type of each chosen item: texts from ``given`` (by id or in cache order) or
    from ``meta["hypotheses"]``."""
    ids = _item_ids(cache, path)
    texts = cache.meta.get("hypotheses") if given is None else given
    if texts is None:
        raise FinescopeError(
            f"{path}: the lexical NLI control needs the hypothesis texts; pass {arg} (id -> "
            "hypothesis), or set probe.nli_control: none or probe.selectivity: false"
        )
    if isinstance(texts, Mapping):
        missing = [ids[i] for i in items if ids[i] not in texts]
        if missing:
            raise FinescopeError(
                f"{path}: {arg} lacks the hypothesis of {len(missing)} cached item(s), "
                f"e.g. {missing[:3]}"
            )
        return np.asarray([hypothesis_type(texts[ids[i]]) for i in items], dtype=object)
    if len(texts) != len(ids):
        raise FinescopeError(f"{path}: {len(texts)} hypotheses for {len(ids)} cached items")
    return np.asarray([hypothesis_type(texts[i]) for i in items], dtype=object)


def _select(
    task: str,
    cache: Any,
    path: Path,
    items: np.ndarray,
    control: bool,
    words: Sequence[str] | None,
    hypotheses: Mapping | Sequence | None,
    arg: str,
) -> _Split:
    """The rows of ``items`` (item indices into the cache), their labels and control keys."""
    labels = np.asarray([str(label) for label in cache.labels])
    if task == "nli":
        if len(labels) != len(cache.ids):
            raise FinescopeError(
                f"{path}/meta.json: {len(labels)} labels for {len(cache.ids)} items"
            )
        keys = (
            _hypothesis_keys(cache, path, items, hypotheses, f"{arg}_hypotheses")
            if control
            else None
        )
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
                f"re-run extract, pass {arg}_words, or set probe.selectivity: false"
            )
        if len(words) != len(labels):
            raise FinescopeError(f"{path}: {len(words)} words for {len(labels)} word labels")
        keys = np.asarray([str(words[r]).lower() for r in rows])
    return _Split(rows, merged, word_item[rows], keys)


def _check_caches(
    task: str, probe: Any, test: Any, paths: tuple[Path, Path], settings: dict
) -> FeatureSpec:
    """Both caches fit the task and each other; the features they are probed on."""
    for cache, path in zip((probe, test), paths, strict=True):
        cached_task = cache.meta.get("task", task)
        if cached_task != task:
            raise FinescopeError(f"{path}/meta.json: a {cached_task} cache given for task {task}")
    for key in ("n_layers", "width"):
        if probe.meta.get(key) != test.meta.get(key):
            raise FinescopeError(
                f"{paths[0]} and {paths[1]}: meta.json {key} differs "
                f"({probe.meta.get(key)} vs {test.meta.get(key)}); extract both from one model"
            )
    if task == "nli":
        layouts = [nli_layout(c.meta, p) for c, p in zip((probe, test), paths, strict=True)]
        if layouts[0] != layouts[1]:
            raise FinescopeError(
                f"{paths[0]} and {paths[1]}: meta.json nli_view differs ({layouts[0]} vs "
                f"{layouts[1]}); extract both with the same extract.nli_view"
            )
    specs = [resolve_features(task, c.meta, settings) for c in (probe, test)]
    if specs[0] != specs[1]:
        raise FinescopeError(
            f"{paths[0]} and {paths[1]}: meta.json ner_pooling differs ({specs[0].name} vs "
            f"{specs[1].name}); extract both with the same extract.ner_pooling"
        )
    spec = specs[0]
    for cache, path in zip((probe, test), paths, strict=True):
        stored = cache.meta.get("views", spec.needed_views)
        missing = [v for v in spec.needed_views if v not in stored]
        if missing:
            raise FinescopeError(
                f"{path}/meta.json: views {missing} missing for task {task} with features "
                f"{spec.name}"
            )
    return spec


def _view_matrix(cache: Any, view: str, layer: int, rows: np.ndarray) -> np.ndarray:
    X = np.asarray(cache.layer(view, layer)[rows], dtype=np.float32)
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


def layer_features(cache: Any, layer: int, rows: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The feature matrix of one layer: ``spec.views`` side by side, then ``|u-v|`` and
    ``u*v`` of the premise (u) and hypothesis (v) vectors if ``spec.interactions``.

    Parameters
    ----------
    cache
        An open cache (:func:`open_cache`).
    layer
        Layer index.
    rows
        Row indices into the cache's arrays, shape (n,).
    spec
        From :func:`resolve_features`.

    Returns
    -------
    float32 array of shape (n, width * (len(spec.views) + 2 * spec.interactions)).
    """
    parts = [_view_matrix(cache, view, layer, rows) for view in spec.views]
    if spec.interactions:
        u, v = (_view_matrix(cache, view, layer, rows) for view in NLI_VIEWS)
        parts += [np.abs(u - v), u * v]
    return np.concatenate(parts, axis=1)


# --------------------------------------------------------------------------------------------
# The grid point
# --------------------------------------------------------------------------------------------


def entity_accuracy(y_true: Sequence, y_pred: Sequence, outside: str = NER_OUTSIDE) -> float:
    """Accuracy on the words whose gold label is not ``outside`` (nan if there are none)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    entity = y_true != outside
    return float(np.mean(y_pred[entity] == y_true[entity])) if entity.any() else math.nan


def score_predictions(task: str, y_true: Sequence, y_pred: Sequence) -> dict[str, float]:
    """Task measures of one set of predictions: accuracy, macro_f1 (+ entity_accuracy, NER).

    ``macro_f1`` averages over the labels present in the gold or predicted labels
    (scikit-learn's ``f1_score(average="macro", zero_division=0)``).
    """
    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }
    if task == "ner":
        out["entity_accuracy"] = entity_accuracy(y_true, y_pred)
    return out


def control_scores(
    task: str, split: _Split, task_scores: dict[str, float], control_pred: np.ndarray
) -> dict[str, float]:
    """Control measures and selectivities of one split, from the control probe's predictions.

    NER entity words are those whose gold task label is not ``O`` (the same words as
    ``entity_accuracy``), scored against their control labels.
    """
    acc = float(accuracy_score(split.control, control_pred))
    out = {"control_accuracy": acc, "selectivity": task_scores["accuracy"] - acc}
    if task == "ner":
        f1 = float(f1_score(split.control, control_pred, average="macro", zero_division=0))
        entity = split.labels != NER_OUTSIDE
        ent = (
            float(np.mean(np.asarray(control_pred)[entity] == split.control[entity]))
            if entity.any()
            else math.nan
        )
        out["control_macro_f1"] = f1
        out["selectivity_macro_f1"] = task_scores["macro_f1"] - f1
        out["control_entity_accuracy"] = ent
        out["selectivity_entity"] = task_scores["entity_accuracy"] - ent
    else:
        out["control_coverage"] = split.coverage
    return out


def _fit(
    name: str, settings: dict, C: float | None, X: np.ndarray, y: np.ndarray, split: _Split
) -> Any:
    model = make_probe(name, settings, C=C)
    # Only sequence probes take groups (the sentence of each word).
    model.fit(X, y, **({} if split.groups is None else {"groups": split.groups}))
    return model


def _predict(model: Any, X: np.ndarray, split: _Split) -> np.ndarray:
    return np.asarray(
        model.predict(X, **({} if split.groups is None else {"groups": split.groups}))
    )


def _probe_one_layer(
    layer: int,
    task: str,
    X_train: np.ndarray,
    X_dev: np.ndarray | None,
    X_test: np.ndarray,
    train: _Split,
    dev: _Split | None,
    test: _Split,
    settings: dict,
) -> list[tuple[int, str, str, float]]:
    """All measures of one layer: (layer, probe, measure, value) tuples in a fixed order."""
    from threadpoolctl import threadpool_limits

    out: list[tuple[int, str, str, float]] = []
    scored = [("", X_test, test)] + ([("dev_", X_dev, dev)] if dev is not None else [])
    # One BLAS thread per layer: identical arithmetic for any n_jobs, no oversubscription.
    with threadpool_limits(limits=1):
        for name in settings["probes"]:
            grid = settings[name]["C"] if name in C_PROBES else None
            C = None
            if isinstance(grid, list):
                # Per-layer choice on probe-dev; strict ">" keeps the smaller C on ties.
                best = -math.inf
                for candidate in grid:
                    fitted = _fit(name, settings, candidate, X_train, train.labels, train)
                    pred = _predict(fitted, X_dev, dev)
                    f1 = float(f1_score(dev.labels, pred, average="macro", zero_division=0))
                    if f1 > best:
                        best, C, model = f1, candidate, fitted
            else:
                model = _fit(name, settings, None, X_train, train.labels, train)
            ctrl_model = None
            if train.control is not None:
                # The same probe, layer and C on the control task.
                ctrl_model = _fit(name, settings, C, X_train, train.control, train)
            for prefix, X, split in scored:
                scores = score_predictions(task, split.labels, _predict(model, X, split))
                if ctrl_model is not None:
                    scores |= control_scores(task, split, scores, _predict(ctrl_model, X, split))
                out += [(layer, name, prefix + m, v) for m, v in scores.items()]
            if C is not None:
                out.append((layer, name, "chosen_C", float(C)))
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
    probe_cache: str | Path,
    test_cache: str | Path,
    point: dict,
    settings: dict,
    *,
    dev_ids: Iterable[str] | None = None,
    probe_words: Sequence[str] | None = None,
    test_words: Sequence[str] | None = None,
    probe_hypotheses: Mapping[str, str] | Sequence[str] | None = None,
    test_hypotheses: Mapping[str, str] | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Probe every layer of a model's hidden states at one grid point.

    Parameters
    ----------
    task
        ``"nli"`` or ``"ner"``.
    probe_cache, test_cache
        Cache folders (contract layout) of the probe pool and of the test split. Probes are
        fitted on the probe-train rows (probe-pool items not in ``dev_ids``) and scored on
        the test rows and on the probe-dev rows.
    point
        ``{"task", "model", "fraction", "seed"}`` copied into every row (``fraction`` may be
        ``"random"`` for the random-weights baseline).
    settings
        Keys of :data:`DEFAULT_SETTINGS`: probes, linear {C, max_iter}, mlp {hidden, alpha,
        max_iter}, svm {C, gamma}, bilstm_crf {hidden, epochs, lr, batch_size},
        nli_features, nli_interactions, selectivity, nli_control, mdl (bool or {enabled,
        probe, portions, C_grid}), seed, max_train_items / max_test_items (optional caps on
        probe-train and test items, off by default), n_jobs (layers in parallel; results do
        not depend on it). ``linear.C`` / ``svm.C`` may be lists (searched on probe-dev).
    dev_ids
        Item ids of the probe pool's probe-dev items; None: no probe-dev rows (and no C
        search).
    probe_words, test_words
        NER selectivity only, when the cache meta has no ``"words"``: the word string of every
        cached word row (length = number of cached words).
    probe_hypotheses, test_hypotheses
        NLI lexical control only, when the cache meta has no ``"hypotheses"``: the hypothesis
        texts, as a mapping item id -> text or a sequence in cache order.

    Returns
    -------
    Long table with columns task, model, fraction, seed, layer, probe, features, measure,
    value. Per layer and probe, on test: accuracy, macro_f1 (NER: + entity_accuracy); with
    selectivity, control_accuracy, selectivity (NER: + control_macro_f1,
    selectivity_macro_f1, control_entity_accuracy, selectivity_entity; NLI lexical control:
    + control_coverage); the same on probe-dev prefixed ``dev_``; chosen_C where C is a
    list. Per layer for the MDL probe: codelength (bits), compression.
    """
    from joblib import Parallel, delayed

    if task not in tasks():
        raise FinescopeError(f"task {task!r}: expected {' or '.join(map(repr, tasks()))}")
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
    paths = (Path(probe_cache), Path(test_cache))
    probe_c, test_c = open_cache(paths[0]), open_cache(paths[1])
    spec = _check_caches(task, probe_c, test_c, paths, s)
    n_layers = int(probe_c.n_layers)

    # Probe pool -> probe-train / probe-dev by item id; the optional caps apply to probe-train
    # and test only, so the dev set is the same whatever they are.
    pool_ids = _item_ids(probe_c, paths[0])
    dev_set = {str(i) for i in dev_ids} if dev_ids is not None else set()
    is_dev = np.array([i in dev_set for i in pool_ids], dtype=bool)
    if dev_set and not is_dev.any():
        raise FinescopeError(
            f"{paths[0]}: none of the {len(dev_set)} dev_ids is an item of the probe cache"
        )
    train_items = np.flatnonzero(~is_dev)
    kept = sample_item_indices([pool_ids[i] for i in train_items], s["max_train_items"], s["seed"])
    train_items, dev_items = train_items[kept], np.flatnonzero(is_dev)
    test_items = sample_item_indices(_item_ids(test_c, paths[1]), s["max_test_items"], s["seed"])
    searched = [p for p in s["probes"] if p in C_PROBES and isinstance(s[p]["C"], list)]
    if searched and not len(dev_items):
        raise FinescopeError(
            f"config keys {[f'probe.{p}.C' for p in searched]}: a list of C values is chosen "
            "on probe-dev items, but there are none (dev_ids not given); give one number"
        )

    control = s["selectivity"] and (task == "ner" or s["nli_control"] == "lexical")
    words = (probe_words, probe_words, test_words)
    hyps = (probe_hypotheses, probe_hypotheses, test_hypotheses)
    train, dev, test = (
        _select(task, cache, path, items, control, w, h, arg)
        for cache, path, items, w, h, arg in zip(
            (probe_c, probe_c, test_c),
            (paths[0], paths[0], paths[1]),
            (train_items, dev_items, test_items),
            words,
            hyps,
            ("probe", "probe", "test"),
            strict=True,
        )
    )
    if len(train.rows) == 0 or len(test.rows) == 0:
        raise FinescopeError(f"{paths[0]} / {paths[1]}: no rows to probe")
    dev = dev if len(dev.rows) else None
    if control:
        # One control task for the whole grid point: key (word type / hypothesis type) ->
        # label, drawn from the probe-train labels, the same map in every split.
        for split in (train, dev, test):
            if split is not None:
                split.control = selectivity_control_labels(split.keys, train.labels, s["seed"])
                split.coverage = control_coverage(split.keys, train.keys)
    log.info(
        "probing %s %s: %d layers, %d probe-train, %d probe-dev, %d test rows, probes %s, "
        "features %s",
        task,
        point,
        n_layers,
        len(train.rows),
        0 if dev is None else len(dev.rows),
        len(test.rows),
        s["probes"],
        spec.name,
    )

    def layer_jobs():
        # Layers are read here, one at a time and only as workers free up (memory stays at a
        # few layers); workers get plain arrays and never open the caches themselves.
        for layer in range(n_layers):
            X_train = layer_features(probe_c, layer, train.rows, spec)
            X_dev = None if dev is None else layer_features(probe_c, layer, dev.rows, spec)
            X_test = layer_features(test_c, layer, test.rows, spec)
            yield layer, task, X_train, X_dev, X_test, train, dev, test, s

    bar = Progress(f"probe {task} {point['model']} f{point['fraction']}", n_layers, "layer")
    if s["n_jobs"] == 1:
        finished = (_probe_one_layer(*job) for job in layer_jobs())
    else:
        finished = Parallel(n_jobs=s["n_jobs"], return_as="generator")(
            delayed(_probe_one_layer)(*job) for job in layer_jobs()
        )
    results = []
    for layer_rows in finished:
        results.append(layer_rows)
        bar.update(1)
    rows = [r for layer_rows in results for r in layer_rows]
    table = pd.DataFrame(rows, columns=["layer", "probe", "measure", "value"])
    table.insert(0, "task", task)
    table.insert(1, "model", point["model"])
    table.insert(2, "fraction", point["fraction"])
    table.insert(3, "seed", point["seed"])
    table.insert(6, "features", spec.name)
    table["layer"] = table["layer"].astype(int)
    table["value"] = table["value"].astype(float)
    return table[COLUMNS]
