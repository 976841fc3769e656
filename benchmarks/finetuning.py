"""Fine-tuning: our training loop against a bare step loop and the study's recipe."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from benchmarks.common import MAX_LENGTH, Sizes, best_of
from finescope import finetune
from finescope.finetune.train import adamw
from finescope.models import load_model, load_tokenizer


def _study_batches(tokenizer, items, labels, model) -> list[dict]:
    """The study's recipe: batch size 1, every example padded to the longest in the data."""
    enc = finetune.encode_items(
        "ner",
        tokenizer,
        items,
        labels,
        MAX_LENGTH,
        token_type_ids=finetune.uses_token_type_ids(model),
    )
    longest = max(enc.lengths)
    batches = []
    for feature in enc.features:
        pad = longest - len(feature["input_ids"])
        batch = {}
        for key, value in feature.items():
            fill = {"labels": -100, "input_ids": tokenizer.pad_token_id}.get(key, 0)
            batch[key] = torch.tensor([list(value) + [fill] * pad])
        batches.append(batch)
    return batches


def _bare_steps(model, batches: list[dict], learning_rate: float) -> None:
    # The same optimiser as ours (fused where it can be), so the gap is the loop's own cost.
    optimizer = adamw([{"params": list(model.parameters())}], learning_rate)
    model.train()
    for batch in batches:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def bench_finetune(name: str, model_dir: Path, items: list[dict], z: Sizes) -> dict:
    """Examples/s of the training loop against a bare forward + backward + AdamW step loop over
    the same batches, and against the study's recipe."""
    labels = sorted({tag for item in items for tag in item["tags"]})
    settings = finetune.FinetuneSettings(
        epochs=1,
        batch_size=z.batch_size // 2,
        learning_rate=1e-4,
        select_on_dev=False,
        checkpoint_every=0,
        seed=1,
    )
    tokenizer = load_tokenizer(model_dir)

    def fresh():
        model = load_model(model_dir, "ner", labels, seed=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        return model

    batches = finetune.build_batches(fresh(), tokenizer, "ner", items, labels, settings)
    _bare_steps(fresh(), batches[:2], 1e-4)  # warm-up: the first backward pass sets up threads

    def ours():
        finetune.train_loop(fresh(), tokenizer, "ner", items, labels, settings, progress=False)

    # Loading a fresh model is inside both timings (a few ms), so each run starts equal.
    ours_seconds = best_of(z.repeats, ours)
    bare_seconds = best_of(z.repeats, lambda: _bare_steps(fresh(), batches, 1e-4))

    few = items[: z.study_finetune_items]
    model = fresh()
    study_batches = _study_batches(tokenizer, few, labels, model)
    start = time.perf_counter()
    _bare_steps(model, study_batches, 1e-4)
    study_seconds = time.perf_counter() - start
    return {
        "model": name,
        "items": len(items),
        "batch_size": settings.batch_size,
        "ours_examples_per_s": len(items) / ours_seconds,
        "bare_examples_per_s": len(items) / bare_seconds,
        "overhead": ours_seconds / bare_seconds - 1.0,
        "study_examples_per_s": len(few) / study_seconds,
        "study_items": len(few),
        "study_padded_length": int(study_batches[0]["input_ids"].shape[1]),
        "tokens_per_example": sum(
            int(b["attention_mask"].sum()) for b in batches if "attention_mask" in b
        )
        / len(items),
    }
