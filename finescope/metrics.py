"""Downstream scores of a fine-tuned model: sentence-pair classification (NLI) and entity-level
named-entity recognition (NER: strict IOB2 and conlleval-style entity F1).

Every function returns plain Python numbers, lists and dicts so the result can be written to
JSON and stored in a checkpoint as is.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from seqeval.metrics import classification_report
from seqeval.metrics import f1_score as entity_f1_score
from seqeval.metrics import precision_score as entity_precision
from seqeval.metrics import recall_score as entity_recall
from seqeval.scheme import IOB2
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from finescope.errors import FinescopeError


def nli_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, macro F1, per-class F1 and the confusion matrix of a classification.

    Parameters
    ----------
    y_true, y_pred
        Gold and predicted label names, one per item (same length).
    labels
        All label names in their canonical order (``labels.json``); it fixes the order of the
        confusion matrix.

    Returns
    -------
    dict
        ``task`` ("nli"), ``primary`` ("macro_f1"), ``score`` (= macro F1), ``accuracy``,
        ``macro_f1`` (averaged over the labels that occur in ``y_true`` or ``y_pred``, so a class
        absent from a small test set does not count as a zero), ``per_class`` (label -> F1, 0.0
        for a label that occurs nowhere), ``confusion`` (n_labels x n_labels nested lists, rows =
        gold, columns = predicted, in ``labels`` order) and ``n`` (number of items).
    """
    labels = list(labels)
    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred):
        raise FinescopeError(
            f"nli_metrics: {len(y_true)} gold labels but {len(y_pred)} predictions"
        )
    unknown = sorted((set(y_true) | set(y_pred)) - set(labels))
    if unknown:
        raise FinescopeError(f"nli_metrics: labels {unknown} are not among {labels}")
    per_class = dict.fromkeys(labels, 0.0)
    if not y_true:
        macro = accuracy = 0.0
    else:
        present = [label for label in labels if label in set(y_true) | set(y_pred)]
        scores = f1_score(y_true, y_pred, labels=present, average=None, zero_division=0)
        per_class |= {label: float(s) for label, s in zip(present, scores, strict=True)}
        macro = float(sum(scores) / len(scores))
        accuracy = float(accuracy_score(y_true, y_pred))
    confusion = (
        confusion_matrix(y_true, y_pred, labels=labels).tolist()
        if y_true
        else [[0] * len(labels) for _ in labels]
    )
    return {
        "task": "nli",
        "primary": "macro_f1",
        "score": macro,
        "accuracy": accuracy,
        "macro_f1": macro,
        "per_class": per_class,
        "confusion": [[int(v) for v in row] for row in confusion],
        "n": len(y_true),
    }


def ner_metrics(tags_true: Sequence[Sequence[str]], tags_pred: Sequence[Sequence[str]]) -> dict:
    """Entity-level precision, recall and F1 (exact span and type match) and token accuracy.

    Two entity scores are given. Strict IOB2 (``f1``, the primary score): an entity must start
    with ``B-``; a stray ``I-X`` after ``O`` or after an entity of another type is not an entity
    (neither in the gold nor in the predictions), so a decoder that opens an entity with ``I-X``
    gets that entity counted as missed. Conlleval-style (``f1_conlleval``, seqeval's default
    mode, as the conlleval script and most published NER numbers): such an ``I-X`` starts a new
    entity. The two differ only where a sequence has invalid starts; ``invalid_starts`` counts
    them in the predictions (an ``I-X`` whose previous tag is neither ``B-X`` nor ``I-X``).

    Parameters
    ----------
    tags_true, tags_pred
        One list of IOB2 tags per sentence; sentence ``i`` of both has the same length.

    Returns
    -------
    dict
        ``task`` ("ner"), ``primary`` ("f1"), ``score`` (= f1), ``precision``, ``recall``,
        ``f1`` (strict IOB2, micro-averaged over entities), ``precision_conlleval``,
        ``recall_conlleval``, ``f1_conlleval`` (conlleval-style), ``invalid_starts`` (predicted
        ``I-`` tags that open an entity), ``per_type`` (strict; type -> {precision, recall, f1,
        support}), ``token_accuracy`` (fraction of tokens whose tag is right), ``n`` (sentences)
        and ``n_tokens``.
    """
    tags_true = [list(tags) for tags in tags_true]
    tags_pred = [list(tags) for tags in tags_pred]
    if len(tags_true) != len(tags_pred):
        raise FinescopeError(
            f"ner_metrics: {len(tags_true)} gold sentences but {len(tags_pred)} predicted"
        )
    for i, (gold, pred) in enumerate(zip(tags_true, tags_pred, strict=True)):
        if len(gold) != len(pred):
            raise FinescopeError(
                f"ner_metrics: sentence {i} has {len(gold)} gold tags but {len(pred)} predicted"
            )
    n_tokens = sum(len(tags) for tags in tags_true)
    correct = sum(
        g == p
        for gold, pred in zip(tags_true, tags_pred, strict=True)
        for g, p in zip(gold, pred, strict=True)
    )
    report: dict = {}
    conlleval = dict.fromkeys(("precision", "recall", "f1"), 0.0)
    if n_tokens:
        # Without any entity seqeval averages empty arrays; the zeros below are what we want.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            report = classification_report(
                tags_true, tags_pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0
            )
            for key, fn in (
                ("precision", entity_precision),
                ("recall", entity_recall),
                ("f1", entity_f1_score),
            ):
                conlleval[key] = float(fn(tags_true, tags_pred, mode=None, zero_division=0))
    summary = {"precision", "recall", "f1-score", "support"}
    per_type = {
        name: {
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
            "f1": float(row["f1-score"]),
            "support": int(row["support"]),
        }
        for name, row in sorted(report.items())
        if not name.endswith(" avg") and set(row) >= summary
    }
    micro = report.get("micro avg", {})
    precision = float(micro.get("precision", 0.0))
    recall = float(micro.get("recall", 0.0))
    f1 = float(micro.get("f1-score", 0.0))
    return {
        "task": "ner",
        "primary": "f1",
        "score": f1,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "precision_conlleval": conlleval["precision"],
        "recall_conlleval": conlleval["recall"],
        "f1_conlleval": conlleval["f1"],
        "invalid_starts": sum(invalid_starts(tags) for tags in tags_pred),
        "per_type": per_type,
        "token_accuracy": float(correct / n_tokens) if n_tokens else 0.0,
        "n": len(tags_true),
        "n_tokens": n_tokens,
    }


def invalid_starts(tags: Sequence[str]) -> int:
    """Number of ``I-X`` tags whose previous tag is neither ``B-X`` nor ``I-X``.

    Parameters
    ----------
    tags
        IOB2 tags of one sentence.

    Returns
    -------
    int
        Strict IOB2 scoring drops the entity such a tag would open; conlleval-style scoring
        counts it.
    """
    count, previous = 0, "O"
    for tag in tags:
        continues = previous.startswith(("B-", "I-")) and previous[2:] == tag[2:]
        if tag.startswith("I-") and not continues:
            count += 1
        previous = tag
    return count
