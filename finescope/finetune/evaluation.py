"""Evaluation of a fine-tuned model on dev and test, and the predictions record."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from finescope.finetune.batches import (
    Encoded,
    _encode_for,
    make_collator,
)
from finescope.finetune.runtime import Precision, _oom_error, resolve_precision
from finescope.metrics import ner_metrics, nli_metrics
from finescope.models import extra_inputs, uses_position_ids
from finescope.settings.finetune import FinetuneSettings


def _to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _predict(
    model,
    tokenizer,
    task: str,
    enc: Encoded,
    labels: Sequence[str],
    batch_size: int,
    precision: Precision,
) -> list:
    """Predicted label names (NLI) or tag lists (NER; cut words get "O"), in item order."""
    collate = make_collator(task, tokenizer, position_ids=uses_position_ids(model))
    extra = extra_inputs(model)
    device = _model_device(model)
    order = sorted(range(len(enc.features)), key=lambda i: -enc.lengths[i])
    predictions: list = [None] * len(order)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = collate([enc.features[i] for i in idx])
                batch.pop("labels", None)
                with precision.autocast():
                    logits = model(**_to_device(batch, device), **extra).logits
                best = logits.float().argmax(-1).cpu()
                width = best.shape[-1] if task == "ner" else 0
                for k, i in enumerate(idx):
                    if task == "nli":
                        predictions[i] = labels[int(best[k])]
                        continue
                    # Left padding shifts the real tokens to the end of the row.
                    offset = width - enc.lengths[i] if tokenizer.padding_side == "left" else 0
                    predictions[i] = [
                        labels[int(best[k, offset + p])] if p >= 0 else "O"
                        for p in enc.word_tokens[i]
                    ]
    finally:
        model.train(was_training)
    return predictions


def _score(task: str, items: Sequence[dict], predictions: list, labels: Sequence[str]) -> dict:
    if task == "nli":
        return nli_metrics([item["label"] for item in items], predictions, labels)
    return ner_metrics([item["tags"] for item in items], predictions)


def _evaluate_encoded(
    model, tokenizer, task, items, labels, enc, s: FinetuneSettings, precision: Precision
):
    try:
        predictions = _predict(model, tokenizer, task, enc, labels, s.eval_batch, precision)
    except torch.OutOfMemoryError as exc:
        raise _oom_error(exc, s, "evaluating") from exc
    metrics = _score(task, items, predictions, labels)
    metrics["truncated_words"] = enc.truncated_words
    metrics["truncated_items"] = enc.truncated_items
    return metrics, predictions


def evaluate(
    model,
    tokenizer,
    task: str,
    items: Sequence[dict],
    labels: Sequence[str],
    settings: FinetuneSettings | Mapping | None,
) -> tuple[dict, list]:
    """Score a classification model on canonical items.

    Parameters
    ----------
    model
        A ``*ForSequenceClassification`` (nli) or ``*ForTokenClassification`` (ner) model, on the
        device where it should run.
    items
        Canonical NLI or NER items.
    labels
        Label names in head order.
    settings
        :class:`FinetuneSettings` (or a mapping of some of its fields; ``max_length``,
        ``eval_batch_size``, ``precision`` are used).

    Returns
    -------
    tuple
        ``(metrics, predictions)``: :func:`finescope.metrics.nli_metrics` /
        :func:`~finescope.metrics.ner_metrics` plus ``truncated_words`` and ``truncated_items``;
        predictions are label names (NLI, one per item) or tag lists (NER, one tag per word;
        words cut by truncation are "O").
    """
    s = FinetuneSettings.build(settings)
    precision = resolve_precision(s.precision, _model_device(model))
    enc = _encode_for(model, tokenizer, task, items, labels, s, "evaluation")
    return _evaluate_encoded(model, tokenizer, task, list(items), labels, enc, s, precision)
