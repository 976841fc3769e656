"""Extraction: ours against the bare batched forward and the study's one-sentence-at-a-time
encoding."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch

from benchmarks.common import MAX_LENGTH, Sizes, best_of, one_sentence
from finescope import extract
from finescope.extract import run_extract
from finescope.models import load_model, load_tokenizer


@contextlib.contextmanager
def counting_forward_rows() -> Iterator[dict]:
    """Count the sequences that go through models loaded by the extract stage."""
    seen = {"rows": 0, "calls": 0}
    original = extract._load_model

    def hook(module, args, kwargs, output):
        seen["rows"] += int(kwargs["input_ids"].shape[0])
        seen["calls"] += 1

    def loader(*args, **kwargs):
        model = original(*args, **kwargs)
        model.register_forward_hook(hook, with_kwargs=True)
        return model

    with mock.patch.object(extract, "_load_model", loader):
        yield seen


def _bare_batches(tokenizer, items: list[dict], batch_size: int) -> list[dict]:
    """Exactly the batches the extract stage builds, collated ahead of time."""
    sequences, _, _ = extract._plan_ner(tokenizer, items, MAX_LENGTH, 0)
    device = torch.device("cpu")
    return [
        extract._collate([sequences[i] for i in batch], tokenizer.pad_token_id, False, device)[0]
        for batch in extract._batches(sequences, batch_size)
    ]


def bench_extraction(name: str, model_dir: Path, items: list[dict], z: Sizes, work: Path) -> dict:
    """Ours (tokenise, forward, pool, write float16) vs the bare batched forward vs the study's
    one-sentence-at-a-time encoding; tokens/s of each, and forward passes per item counted."""
    settings = {"batch_size": z.batch_size, "max_length": MAX_LENGTH, "dtype": "float16"}
    runs = []
    with counting_forward_rows() as seen:
        for r in range(z.repeats):
            runs.append(run_extract("ner", model_dir, items, work / f"{name}-cache-{r}", settings))
    rows_per_item = seen["rows"] / (z.repeats * len(items))
    n_tokens = runs[0]["n_tokens"]
    ours = min(meta["seconds"] - meta["load_seconds"] for meta in runs)

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, "ner", head=False).eval()
    batches = _bare_batches(tokenizer, items, z.batch_size)

    def bare():
        with torch.inference_mode():
            for inputs in batches:
                model(**inputs, output_hidden_states=True)

    bare_seconds = best_of(z.repeats, bare)

    few = items[: z.study_items]
    encoded = [one_sentence(tokenizer, item) for item in few]
    study_tokens = sum(int(e["input_ids"].shape[1]) for e in encoded)

    def study():
        with torch.inference_mode():
            for item in few:
                model(**one_sentence(tokenizer, item), output_hidden_states=True)

    study_seconds = best_of(1, study)

    # A probing job the study's way: every sentence encoded alone, again for each probe and
    # layer; ours encodes once and every probe reads the cache.
    job = items[: z.probe_job_items]
    n_layers = runs[0]["n_layers"]
    job_meta = run_extract("ner", model_dir, job, work / f"{name}-job", settings)
    ours_job = job_meta["seconds"] - job_meta["load_seconds"]

    def study_job():
        with torch.inference_mode():
            for _probe in range(z.probe_job_probes):
                for layer in range(n_layers):
                    for item in job:
                        out = model(**one_sentence(tokenizer, item), output_hidden_states=True)
                        out.hidden_states[layer].mean(1)

    study_job_seconds = best_of(1, study_job)
    return {
        "model": name,
        "items": len(items),
        "tokens": n_tokens,
        "layers": n_layers,
        "ours_tokens_per_s": n_tokens / ours,
        "bare_tokens_per_s": n_tokens / bare_seconds,
        "ratio_to_bare": bare_seconds / ours,
        "study_tokens_per_s": study_tokens / study_seconds,
        "study_items": len(few),
        "forward_rows_per_item": rows_per_item,
        "forward_passes": runs[0]["forward_passes"],
        "probe_job_items": len(job),
        "probe_job_probes": z.probe_job_probes,
        "probe_job_ours_s": ours_job,
        "probe_job_study_s": study_job_seconds,
    }
