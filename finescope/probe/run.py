"""Probing one grid point: every probe on every layer, with controls and online codes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import accuracy_score, f1_score

from finescope import io, job
from finescope.cache import truncation_counts
from finescope.errors import FinescopeError
from finescope.io import write_csv
from finescope.probe.constants import COLUMNS, NER_OUTSIDE, log
from finescope.probe.controls import control_coverage, selectivity_control_labels
from finescope.probe.estimators import make_mdl_probe, make_probe
from finescope.probe.features import (
    _check_caches,
    _item_ids,
    _select,
    _Split,
    layer_features,
    open_cache,
    sample_item_indices,
)
from finescope.probe.mdl import online_codelength
from finescope.progress import Progress
from finescope.settings import tasks
from finescope.settings.probe import C_PROBES, SEQUENCE_PROBES, ProbeSettings


def probe_layer(
    X_train: np.ndarray,
    y_train: Sequence,
    X_test: np.ndarray,
    y_test: Sequence,
    probe: str | Any = "linear",
    settings: ProbeSettings | Mapping | None = None,
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
        :class:`ProbeSettings` or a mapping of some of its keys (for a probe given by name).
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
    s = ProbeSettings.build(settings)
    model = make_probe(probe, s) if isinstance(probe, str) else probe
    # Only sequence probes take groups; plain sklearn estimators do not accept the keyword.
    fit_kw = {} if groups_train is None else {"groups": groups_train}
    pred_kw = {} if groups_test is None else {"groups": groups_test}
    model.fit(X_train, y_train, **fit_kw)
    pred = np.asarray(model.predict(X_test, **pred_kw))
    return {
        "accuracy": float(accuracy_score(y_test, pred)),
        "macro_f1": float(f1_score(y_test, pred, average="macro", zero_division=0)),
    }


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
    name: str,
    settings: ProbeSettings,
    C: float | None,
    X: np.ndarray,
    y: np.ndarray,
    split: _Split,
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
    settings: ProbeSettings,
) -> list[tuple[int, str, str, float]]:
    """All measures of one layer: (layer, probe, measure, value) tuples in a fixed order."""
    from threadpoolctl import threadpool_limits

    out: list[tuple[int, str, str, float]] = []
    scored = [("", X_test, test)] + ([("dev_", X_dev, dev)] if dev is not None else [])
    # One BLAS thread per layer: identical arithmetic for any n_jobs, no oversubscription.
    with threadpool_limits(limits=1):
        for name in settings.probes:
            grid = getattr(settings, name).C if name in C_PROBES else None
            C = None
            if isinstance(grid, tuple):
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
        mdl = settings.mdl
        if mdl.enabled:
            n_classes = len(np.unique(train.labels))
            template = make_mdl_probe(settings)
            bits, uniform = online_codelength(
                X_train,
                train.labels,
                n_classes,
                lambda: clone(template),
                settings.seed,
                mdl.portions,
            )
            out.append((layer, mdl.probe, "codelength", bits))
            out.append((layer, mdl.probe, "compression", uniform / bits if bits else math.nan))
    log.info("layer %d probed", layer)
    return out


def run_probes(
    task: str,
    probe_cache: str | Path,
    test_cache: str | Path,
    point: dict,
    settings: ProbeSettings | Mapping,
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
        :class:`ProbeSettings`, or a mapping of some of its keys: probes, linear {C,
        max_iter, backend}, mlp {hidden, alpha, max_iter}, svm {C, gamma}, bilstm_crf
        {hidden, epochs, lr, batch_size}, nli_features, nli_interactions, selectivity,
        nli_control, mdl (bool or {enabled, probe, portions, C_grid}), seed, max_train_items
        / max_test_items (optional caps on probe-train and test items, off by default),
        n_jobs (layers in parallel; results do not depend on it). ``linear.C`` / ``svm.C``
        may be lists (searched on probe-dev).
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
    s = ProbeSettings.build(settings)
    if task == "nli":
        wrong = [p for p in s.probes if p in SEQUENCE_PROBES]
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
    kept = sample_item_indices([pool_ids[i] for i in train_items], s.max_train_items, s.seed)
    train_items, dev_items = train_items[kept], np.flatnonzero(is_dev)
    test_items = sample_item_indices(_item_ids(test_c, paths[1]), s.max_test_items, s.seed)
    searched = [p for p in s.probes if p in C_PROBES and isinstance(getattr(s, p).C, tuple)]
    if searched and not len(dev_items):
        raise FinescopeError(
            f"config keys {[f'probe.{p}.C' for p in searched]}: a list of C values is chosen "
            "on probe-dev items, but there are none (dev_ids not given); give one number"
        )

    control = s.selectivity and (task == "ner" or s.nli_control == "lexical")
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
                split.control = selectivity_control_labels(split.keys, train.labels, s.seed)
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
        list(s.probes),
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
    if s.n_jobs == 1:
        finished = (_probe_one_layer(*args) for args in layer_jobs())
    else:
        finished = Parallel(n_jobs=s.n_jobs, return_as="generator")(
            delayed(_probe_one_layer)(*args) for args in layer_jobs()
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


def probe_job(
    probe_cache: str,
    test_cache: str,
    pool_path: str,
    test_path: str,
    point: dict,
    settings: ProbeSettings | Mapping,
    out_csv: str,
    n_jobs: int = 1,
) -> None:
    """The ``probe`` job: every probe on every layer of one grid point, to ``out_csv``."""
    # Layers in parallel, one per thread of the job; the scores do not depend on it.
    s = ProbeSettings.build(settings).replace(n_jobs=n_jobs)
    pool = io.read_jsonl(pool_path)
    kwargs: dict = {"dev_ids": [str(i["id"]) for i in pool if i.get("probe_split") == "dev"]}
    if point["task"] == "nli":
        # The lexical control task keys each pair by a word of its hypothesis.
        kwargs["probe_hypotheses"] = {str(i["id"]): i["hypothesis"] for i in pool}
        kwargs["test_hypotheses"] = {
            str(i["id"]): i["hypothesis"] for i in io.read_jsonl(test_path)
        }
    table = run_probes(point["task"], Path(probe_cache), Path(test_cache), point, s, **kwargs)
    # How much of the probed input max_length cut (words: NER only; empty for NLI).
    table = table.assign(**truncation_counts(probe_cache, test_cache))
    write_csv(table, out_csv)
    job.headline(_best_probe_line(table))


def _best_probe_line(table: pd.DataFrame) -> str:
    """``"best linear macro_f1 0.912 at layer 4"``: the probe score at the layer that is best
    on probe-dev (on test when there is no probe-dev), over the probes of the job."""
    for measure in ("macro_f1", "accuracy"):
        test = table[table["measure"] == measure]
        if test.empty:
            continue
        dev = table[table["measure"] == f"dev_{measure}"]
        pick = dev if len(dev) else test
        best = pick.loc[pick["value"].idxmax()]
        at = test[(test["probe"] == best["probe"]) & (test["layer"] == best["layer"])]
        value = float(at["value"].iloc[0]) if len(at) else float("nan")
        chosen = "probe-dev" if len(dev) else "test"
        return (
            f"{best['probe']} {measure} {value:.3f} at layer {int(best['layer'])} "
            f"(best on {chosen})"
        )
    return f"{len(table)} rows"
