"""The training loop and the fine-tuning job (run_finetune)."""

from __future__ import annotations

import csv
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import transformers

from finescope import job
from finescope.devices import resolve_device
from finescope.errors import FinescopeError
from finescope.finetune.batches import (
    _encode_for,
    epoch_batches,
    load_task_data,
    make_collator,
)
from finescope.finetune.checkpoint import (
    CheckpointStore,
    TrainState,
    _items_digest,
    _restore,
    _set_rng_state,
    _snapshot,
    _trainable,
    job_fingerprint,
)
from finescope.finetune.evaluation import _evaluate_encoded, _model_device, _to_device
from finescope.finetune.runtime import (
    _LORA_TARGETS,
    CHECKPOINT_FORMAT,
    CURVE_COLUMNS,
    MAX_GRAD_NORM,
    _oom_error,
    _run_context,
    logger,
    resolve_precision,
    seed_everything,
)
from finescope.io import atomic_path, write_json
from finescope.models import (
    extra_inputs,
    load_model,
    load_tokenizer,
    uses_position_ids,
)
from finescope.progress import Progress
from finescope.settings.finetune import FinetuneSettings, LoraSettings, _fingerprint_settings
from finescope.subsample import read_subset

FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def adamw(groups: list[dict], learning_rate: float) -> torch.optim.AdamW:
    """AdamW over parameter ``groups``, with the fused kernel where every parameter's device has
    one: one pass over all parameters (on CPU a SmolLM2-135M step spends 0.1 s in it against
    0.7 s in the default foreach update), the same AdamW arithmetic."""
    params = [p for g in groups for p in g["params"]]
    fused = all(p.device.type in FUSED_ADAMW_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=learning_rate, fused=fused or None)


def _optimizer(model, s: FinetuneSettings) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in _trainable(model).values():
        # Biases and norm weights (1-d) are not decayed.
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": s.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return adamw([g for g in groups if g["params"]], s.learning_rate)


def train_loop(
    model,
    tokenizer,
    task: str,
    train_items: Sequence[dict],
    labels: Sequence[str],
    settings: FinetuneSettings | Mapping | None = None,
    *,
    dev_items: Sequence[dict] = (),
    checkpoint_dir: str | Path | None = None,
    fingerprint: dict | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
) -> TrainState:
    """Train ``model`` (in place, on its current device) and return the final state.

    AdamW (no decay on 1-d parameters), linear schedule with warm-up, gradient accumulation,
    gradient clipping at 1.0, autocast per ``settings.precision`` (fp16 with loss scaling),
    length-grouped batches from :func:`epoch_batches`. With ``select_on_dev`` and dev items, dev
    is scored after each epoch and the best weights are restored at the end. With
    ``checkpoint_dir`` a matching checkpoint there is resumed and a new one is written every
    ``checkpoint_every`` optimiser steps; ``on_checkpoint`` is called with the count written so
    far right after each one is on disk.

    Returns
    -------
    TrainState
        Steps, learning curve rows (``CURVE_COLUMNS``), best dev metrics, timing.
    """
    s = FinetuneSettings.build(settings)
    device = _model_device(model)
    precision = resolve_precision(s.precision, device)
    train = _encode_for(model, tokenizer, task, train_items, labels, s, "train")
    if not train.features:
        raise FinescopeError("no training items: the selected subset is empty")
    select = s.select_on_dev and len(dev_items) > 0
    dev = _encode_for(model, tokenizer, task, dev_items, labels, s, "dev") if select else None
    collate = make_collator(task, tokenizer, position_ids=uses_position_ids(model))
    extra = extra_inputs(model)

    bs, accum, epochs = s.batch_size, s.gradient_accumulation, s.epochs
    steps_per_epoch = math.ceil(math.ceil(len(train.features) / bs) / accum)
    total_steps = epochs * steps_per_epoch
    warmup = math.ceil(s.warmup_ratio * total_steps)
    optimizer = _optimizer(model, s)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    scaler = torch.amp.GradScaler(device.type) if precision.needs_scaler else None
    params = list(_trainable(model).values())

    store = None
    state = None
    if checkpoint_dir is not None:
        if fingerprint is None:
            fingerprint = {
                "format": CHECKPOINT_FORMAT,
                "task": task,
                "labels": list(labels),
                "settings": _fingerprint_settings(s),
                "data_sha256": {
                    "train": _items_digest(train_items),
                    "dev": _items_digest(dev_items),
                },
            }
        store = CheckpointStore(checkpoint_dir, fingerprint)
        state = store.load(model, optimizer, scheduler, scaler)
    state = state or TrainState()
    every = s.checkpoint_every

    logger.info(
        "training %s on %d items: %d epochs x %d steps (batch %d x %d accumulation), %s, %s",
        task,
        len(train.features),
        epochs,
        steps_per_epoch,
        bs,
        accum,
        device,
        precision.name,
    )
    bar = Progress(
        f"fine-tune {task}",
        total_steps,
        "step",
        initial=state.global_step,
        enabled=progress,
    )
    if state.rng is not None:
        # Last thing before the loop: model loading and set-up must not disturb restored RNGs.
        _set_rng_state(state.rng)
    model.train()
    try:
        for epoch in range(state.epoch, epochs):
            batches = epoch_batches(train.lengths, bs, s.seed, epoch, s.mega_batch)
            groups = [batches[i : i + accum] for i in range(0, len(batches), accum)]
            start = state.step_in_epoch if epoch == state.epoch else 0
            for k in range(start, len(groups)):
                t0 = time.perf_counter()
                learning_rate = scheduler.get_last_lr()[0]
                loss_sum = torch.zeros((), device=device)
                n_examples = 0
                for idx in groups[k]:
                    batch = _to_device(collate([train.features[i] for i in idx]), device)
                    with precision.autocast():
                        loss = model(**batch, **extra).loss
                    loss_sum += loss.detach().float()
                    scaled = loss / len(groups[k])
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    n_examples += len(idx)
                if scaler is not None:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss_value = float(loss_sum.item()) / len(groups[k])
                seconds = time.perf_counter() - t0
                state.epoch, state.step_in_epoch = epoch, k + 1
                state.global_step += 1
                state.train_seconds += seconds
                state.examples_seen += n_examples
                row = {
                    "step": state.global_step,
                    "epoch": round(epoch + (k + 1) / len(groups), 4),
                    "loss": loss_value,
                    "learning_rate": learning_rate,
                    "dev_score": None,
                    "examples_per_second": n_examples / seconds if seconds > 0 else None,
                }
                if dev is not None and k == len(groups) - 1:
                    dev_metrics, _ = _evaluate_encoded(
                        model, tokenizer, task, dev_items, labels, dev, s, precision
                    )
                    row["dev_score"] = dev_metrics["score"]
                    if state.best_score is None or dev_metrics["score"] > state.best_score:
                        state.best_score, state.best_epoch = dev_metrics["score"], epoch + 1
                        state.best_dev = dev_metrics
                        state.best_params = _snapshot(model)
                        state.best_version += 1
                    logger.info(
                        "epoch %d: dev %s %.4f (best %.4f, epoch %d)",
                        epoch + 1,
                        dev_metrics["primary"],
                        dev_metrics["score"],
                        state.best_score,
                        state.best_epoch,
                    )
                state.curve.append(row)
                bar.update(1, {"loss": f"{loss_value:.4f}"}, examples=n_examples)
                if store is not None and every and state.global_step % every == 0:
                    store.save(state, model, optimizer, scheduler, scaler)
                    if on_checkpoint is not None:
                        on_checkpoint(store.saved)
    except torch.OutOfMemoryError as exc:
        raise _oom_error(exc, s, "training") from exc
    state.epoch, state.step_in_epoch = epochs, 0
    if state.best_params is not None:
        _restore(model, state.best_params)
        logger.info("restored the weights of epoch %d (best on dev)", state.best_epoch)
    model.eval()
    return state


def apply_lora(model, task: str, lora: LoraSettings | Mapping):
    """Wrap ``model`` with LoRA adapters (peft).

    The classification head (and BERT's pooler for NLI) stays fully trainable
    (``modules_to_save``). Target modules: peft's default for the architecture, else a built-in
    list (bert, gpt2, llama), else all linear layers. Merge with ``merge_and_unload()`` before
    saving.

    Parameters
    ----------
    model
        A ``*ForSequenceClassification`` / ``*ForTokenClassification`` model.
    task
        ``"nli"`` or ``"ner"``.
    lora
        :class:`LoraSettings` (or a mapping of some of its fields); ``r``, ``alpha``,
        ``dropout`` are used, ``enabled`` is not looked at.

    Returns
    -------
    peft.PeftModel
    """
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraSettings.build(lora)

    task_type = TaskType.SEQ_CLS if task == "nli" else TaskType.TOKEN_CLS
    extra_trainable = None
    if task == "nli" and any(name.endswith("pooler") for name, _ in model.named_modules()):
        # BERT-style heads read the pooler; a frozen, possibly newly initialised pooler would
        # cripple the head.
        extra_trainable = ["pooler"]

    def wrap(targets):
        config = LoraConfig(
            task_type=task_type,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=targets,
            modules_to_save=list(extra_trainable) if extra_trainable else None,
            # GPT-2 stores its projections as Conv1D with transposed weights.
            fan_in_fan_out=model.config.model_type == "gpt2",
        )
        return get_peft_model(model, config)

    try:
        wrapped = wrap(None)
    except ValueError:
        targets = _LORA_TARGETS.get(model.config.model_type, "all-linear")
        logger.info(
            "peft has no LoRA default for %s; targeting %s", model.config.model_type, targets
        )
        wrapped = wrap(targets)
    n_train = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in wrapped.parameters())
    logger.info(
        "LoRA: %d of %d parameters trainable (%.2f%%)", n_train, n_all, 100 * n_train / n_all
    )
    return wrapped


def _write_curve(path: Path, rows: Sequence[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CURVE_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {key: "" if row.get(key) is None else row[key] for key in CURVE_COLUMNS}
            )


def predictions_record(task: str, items: Sequence[dict], predictions: Sequence) -> dict:
    """Test predictions beside their gold labels, compact enough for ``metrics.json``: NLI
    label names; NER one string of space-separated IOB2 tags per sentence (one per word)."""
    gold = [item["label"] if task == "nli" else item["tags"] for item in items]
    if task == "ner":
        gold = [" ".join(tags) for tags in gold]
        predictions = [" ".join(tags) for tags in predictions]
    return {
        "ids": [str(item.get("id", i)) for i, item in enumerate(items)],
        "gold": list(gold),
        "predicted": list(predictions),
    }


def run_finetune(
    task: str,
    model_dir: str | Path,
    data_dir: str | Path,
    subset_ids: Sequence[str],
    out_dir: str | Path,
    checkpoint_dir: str | Path | None,
    settings: FinetuneSettings | Mapping | None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> dict:
    """Fine-tune a pre-trained model on the training items in ``subset_ids`` and score it.

    Parameters
    ----------
    task
        ``"nli"`` or ``"ner"``.
    model_dir
        A folder written by :func:`finescope.models.materialize_model`.
    data_dir
        Canonical data folder (``train/dev/test.jsonl``, ``labels.json``).
    subset_ids
        Ids of the training items to train on.
    out_dir
        Receives ``model/`` (HF folder: safetensors, config, tokenizer; LoRA merged),
        ``metrics.json`` (test metrics + run facts) and ``curve.csv``.
    checkpoint_dir
        Where checkpoints go (every ``checkpoint_every`` steps); a matching checkpoint there is
        resumed; removed after success. None: no checkpoints.
    settings
        :class:`FinetuneSettings`, or a mapping of some of its fields (a nested ``lora``
        mapping of some of its own).
    on_checkpoint
        Called with the number of checkpoints written so far, right after each one is on disk
        (the resume tests kill the process there, as a scheduler would).

    Returns
    -------
    dict
        The content of ``metrics.json``.
    """
    s = FinetuneSettings.build(settings)
    out_dir = Path(out_dir)
    labels, train_items, dev_items, test_items = load_task_data(task, data_dir, subset_ids)
    if not train_items:
        raise FinescopeError(
            f"no training items selected from {Path(data_dir) / 'train.jsonl'}: fraction 0 is the "
            "pre-trained model and is not fine-tuned"
        )
    if not test_items:
        raise FinescopeError(f"{Path(data_dir) / 'test.jsonl'} is empty: nothing to score on")
    device = resolve_device(s.device)
    precision = resolve_precision(s.precision, device)
    fingerprint = job_fingerprint(
        task, model_dir, s, list(subset_ids), labels, train_items, dev_items
    )
    with _run_context(s.threads):
        seed_everything(s.seed)
        tokenizer = load_tokenizer(model_dir, trust_remote_code=s.trust_remote_code)
        model = load_model(
            model_dir, task, labels, trust_remote_code=s.trust_remote_code, seed=s.seed
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        if s.lora.enabled:
            model = apply_lora(model, task, s.lora)
        model.to(device)
        state = train_loop(
            model,
            tokenizer,
            task,
            train_items,
            labels,
            s,
            dev_items=dev_items if s.select_on_dev else (),
            checkpoint_dir=checkpoint_dir,
            fingerprint=fingerprint,
            on_checkpoint=on_checkpoint,
        )
        if s.lora.enabled:
            model = model.merge_and_unload()
        model.eval()
        test = _encode_for(model, tokenizer, task, test_items, labels, s, "test")
        test_metrics, test_predictions = _evaluate_encoded(
            model, tokenizer, task, test_items, labels, test, s, precision
        )

    # Facts about the run; test metrics (contract keys, e.g. NER "precision") are never replaced.
    facts = {
        "split": "test",
        "train_items": len(train_items),
        "dev_items": len(dev_items),
        "test_items": len(test_items),
        "epochs": s.epochs,
        "steps": state.global_step,
        "train_seconds": round(state.train_seconds, 3),
        "examples_per_second": (
            state.examples_seen / state.train_seconds if state.train_seconds > 0 else None
        ),
        "device": str(device),
        "compute_precision": precision.name,
        "best_epoch": state.best_epoch,
        "dev": state.best_dev,
        "resumed_from_step": state.resumed_from,
        "seed": s.seed,
        "lora": s.lora.enabled,
        "model_dir": str(model_dir),
        "test_predictions": predictions_record(task, test_items, test_predictions),
    }
    clash = set(facts) & set(test_metrics)
    assert not clash, clash
    metrics = test_metrics | facts
    model.config.pad_token_id = tokenizer.pad_token_id
    with atomic_path(out_dir / "model", is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    _write_curve(out_dir / "curve.csv", state.curve)
    write_json(out_dir / "metrics.json", metrics)
    if checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    logger.info(
        "%s test %s = %.4f after %d steps (%.1f s, %s)",
        task,
        metrics["primary"],
        metrics["score"],
        state.global_step,
        state.train_seconds,
        device,
    )
    return metrics


def finetune_job(
    task: str,
    point: dict,
    model_dir: str,
    labels_path: str,
    subset_path: str,
    model_out: str,
    checkpoint_dir: str,
    settings: FinetuneSettings | Mapping | None,
    tracking: dict | None = None,
) -> None:
    """The ``finetune`` job: fine-tune, write the model, ``metrics.json`` and ``curve.csv``
    beside ``model_out``, and log the run when tracking is on. ``settings``: as for
    :func:`run_finetune` (the workflow passes the plain dict of the job's params)."""
    s = FinetuneSettings.build(settings)
    subset = read_subset(subset_path)
    ids = subset["ids"] if isinstance(subset, dict) else subset
    metrics = run_finetune(
        task,
        model_dir,
        Path(labels_path).parent,
        ids,
        Path(model_out).parent,
        checkpoint_dir,
        s,
    )
    job.log.info("metrics: %s", {k: v for k, v in metrics.items() if k != "test_predictions"})
    dev = (metrics.get("dev") or {}).get("score")
    dev_text = f", dev {dev:.3f}" if isinstance(dev, float) else ""
    job.headline(f"test {metrics['primary']} {metrics['score']:.3f}{dev_text}")
    from finescope import tracking as track

    if track.enabled(tracking):
        curve = Path(model_out).parent / "curve.csv"

        track.log_finetune_run(tracking, point, s.resolved_dict(), metrics, curve)
