"""Attention change: the study's per-sentence loop over layers and heads against ours."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import MAX_LENGTH, one_sentence, perturbed_copy
from benchmarks.references import reference_attention_measures
from finescope.cache import Cache
from finescope.compare import attention_measures
from finescope.extract import run_extract
from finescope.models import load_model, load_tokenizer


def _study_attention_cosine(model_dir: Path, ft_dirs: list[Path], items: list[dict]) -> dict:
    """The study's loop: one sentence at a time, both models re-run for every comparison, a
    Python loop over layers and heads."""
    tokenizer = load_tokenizer(model_dir)
    pre = load_model(model_dir, "ner", head=False, attn_implementation="eager").eval()
    out = {}
    for ft_dir in ft_dirs:
        ft = load_model(ft_dir, "ner", head=False, attn_implementation="eager").eval()
        total = None
        with torch.inference_mode():
            for item in items:
                enc = one_sentence(tokenizer, item)
                a = pre(**enc, output_attentions=True).attentions
                b = ft(**enc, output_attentions=True).attentions
                if total is None:
                    total = np.zeros((len(a), a[0].shape[1]))
                for layer in range(len(a)):
                    for head in range(a[layer].shape[1]):
                        x = a[layer][0, head].flatten().double()
                        y = b[layer][0, head].flatten().double()
                        total[layer, head] += float(torch.nn.functional.cosine_similarity(x, y, 0))
        out[ft_dir.name] = total / len(items)
    return out


def _our_attention_cosine(model_dir: Path, ft_dirs: list[Path], items, work: Path) -> dict:
    """Ours: the pre-trained side extracted once, each fine-tuned model once, all heads of all
    layers compared at once per sequence from the caches."""
    settings = {"attention_items": len(items), "dtype": "float32", "max_length": MAX_LENGTH}
    run_extract("ner", model_dir, items, work / "att-pre", settings)
    pre = Cache(work / "att-pre")
    out = {}
    for ft_dir in ft_dirs:
        run_extract("ner", ft_dir, items, work / f"att-{ft_dir.name}", settings)
        ft = Cache(work / f"att-{ft_dir.name}")
        total = sum(
            attention_measures(pre.attention(k), ft.attention(k))["attention_cosine"]
            for k in range(pre.n_attention)
        )
        out[ft_dir.name] = total / pre.n_attention
    return out


def bench_attention(
    name: str, model_dir: Path, items: list[dict], work: Path, scales=(0.02, 0.05)
) -> dict:
    """The study's attention loop against ours, on copies of the model with noise of these
    ``scales`` (in units of each weight tensor's standard deviation)."""
    ft_dirs = [
        perturbed_copy(model_dir, work / f"{name}-ft{i}", scale, seed=i)
        for i, scale in enumerate(scales)
    ]
    start = time.perf_counter()
    study = _study_attention_cosine(model_dir, ft_dirs, items)
    study_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ours = _our_attention_cosine(model_dir, ft_dirs, items, work)
    ours_seconds = time.perf_counter() - start
    diff = max(float(np.abs(ours[k] - study[k]).max()) for k in study)

    # The measures alone, on the same cached maps: all heads at once vs head by head, row by row.
    pre, ft = Cache(work / "att-pre"), Cache(work / f"att-{ft_dirs[0].name}")
    maps = [(pre.attention(k), ft.attention(k)) for k in range(pre.n_attention)]
    start = time.perf_counter()
    fast = [attention_measures(a, b) for a, b in maps]
    fast_seconds = time.perf_counter() - start
    start = time.perf_counter()
    slow = []
    for a, b in maps:
        per_layer = [reference_attention_measures(a[i], b[i]) for i in range(len(a))]
        slow.append({m: np.stack([layer[m] for layer in per_layer]) for m in fast[0]})
    slow_seconds = time.perf_counter() - start
    measure_diff = max(
        float(np.abs(f[m] - s[m]).max()) for f, s in zip(fast, slow, strict=True) for m in f
    )
    return {
        "model": name,
        "items": len(items),
        "comparisons": len(ft_dirs),
        "study_s": study_seconds,
        "ours_s": ours_seconds,
        "max_cosine_difference": diff,
        "mean_cosine": float(np.mean([v.mean() for v in ours.values()])),
        "measures_vectorised_s": fast_seconds,
        "measures_loop_s": slow_seconds,
        "max_measure_difference": measure_diff,
    }
