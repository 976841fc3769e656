"""Probing: our linear probe against scikit-learn layer by layer, and the linear probe's torch
and scikit-learn backends side by side."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (
    DEFAULT_MODELS,
    MAX_LENGTH,
    PROBE_ITEMS,
    PROBE_THREADS,
    PROBE_WIDTHS,
    Sizes,
    model_folder,
    ner_corpus,
    sample,
)
from benchmarks.references import layerwise_logreg_baseline
from finescope.cache import Cache
from finescope.extract import run_extract
from finescope.probe import merge_ner_tag, run_probes


def bench_probing(name: str, model_dir: Path, train: list[dict], test: list[dict], work: Path):
    """All layers of one grid point: our linear probe against scikit-learn's default
    ``LogisticRegression`` fitted layer by layer on the raw features."""
    settings = {"max_length": MAX_LENGTH, "dtype": "float16"}
    run_extract("ner", model_dir, train, work / "probe-train", settings)
    run_extract("ner", model_dir, test, work / "probe-test", settings)
    point = {"task": "ner", "model": name, "fraction": "0", "seed": 0}
    probe_settings = {"probes": ["linear"], "selectivity": False, "mdl": False}
    start = time.perf_counter()
    ours = run_probes("ner", work / "probe-train", work / "probe-test", point, probe_settings)
    ours_seconds = time.perf_counter() - start

    tr, te = Cache(work / "probe-train"), Cache(work / "probe-test")
    start = time.perf_counter()
    baseline = layerwise_logreg_baseline(
        [tr.layer("word", layer) for layer in range(tr.n_layers)],
        [merge_ner_tag(tag) for tag in tr.labels],
        [te.layer("word", layer) for layer in range(te.n_layers)],
        [merge_ner_tag(tag) for tag in te.labels],
    )
    baseline_seconds = time.perf_counter() - start

    def best(table):
        f1 = table[table["measure"] == "macro_f1"]
        return float(f1["value"].max()), int(f1.loc[f1["value"].idxmax(), "layer"])

    (ours_f1, ours_layer), (base_f1, base_layer) = best(ours), best(baseline)
    return {
        "model": name,
        "layers": tr.n_layers,
        "train_words": tr.n_rows,
        "test_words": te.n_rows,
        "ours_s": ours_seconds,
        "baseline_s": baseline_seconds,
        "ours_best_macro_f1": ours_f1,
        "ours_best_layer": ours_layer,
        "baseline_best_macro_f1": base_f1,
        "baseline_best_layer": base_layer,
    }


# --------------------------------------------------------------------------------------------
# Linear probe backends


def probe_word_vectors(
    model_dir: Path, train: list[dict], test: list[dict], work: Path, layer: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One layer's word vectors and merged entity labels of ``train`` and ``test`` sentences."""
    out = []
    for split, items in (("train", train), ("test", test)):
        folder = work / f"probe-backends-{split}"
        run_extract("ner", model_dir, items, folder, {"max_length": MAX_LENGTH})
        cache = Cache(folder)
        X = np.asarray(cache.layer("word", min(layer, cache.n_layers - 1)), dtype=np.float32)
        out += [X, np.array([merge_ner_tag(tag) for tag in cache.labels])]
    return out[0], out[1], out[2], out[3]


def _widen(X: np.ndarray, width: int, seed: int = 0) -> np.ndarray:
    """``X`` at ``width`` columns: itself, or a seeded random projection of it (+ tanh, so the
    extra columns are not a linear copy) that keeps the real labels' signal."""
    if width == X.shape[1]:
        return X
    proj = np.random.default_rng(seed).normal(size=(X.shape[1], width)).astype(np.float32)
    return np.tanh(X @ (proj / np.sqrt(X.shape[1]))).astype(np.float32)


def _slope(x: list[float], y: list[float]) -> float:
    """Least-squares slope of log y on log x (the exponent of the scaling)."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def bench_probe_backends(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    widths: tuple[int, ...] = PROBE_WIDTHS,
    items: tuple[int, ...] = PROBE_ITEMS,
    threads: int = PROBE_THREADS,
    C: float = 1.0,
) -> dict:
    """The linear probe (standardise + logistic regression, same C and objective) with the
    torch and the scikit-learn backend, side by side at every width x training size; both on
    ``threads`` threads (torch intra-op, BLAS for scikit-learn)."""
    from threadpoolctl import threadpool_limits

    from finescope.probe import LinearProbe

    rows = []
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for width in widths:
            Xtr, Xte = _widen(X_train, width), _widen(X_test, width)
            for n in items:
                take = np.random.default_rng(n).choice(len(Xtr), min(n, len(Xtr)), replace=False)
                row = {"width": width, "items": len(take)}
                for backend in ("torch", "sklearn"):
                    probe = LinearProbe(C, backend=backend)
                    with threadpool_limits(limits=threads):
                        start = time.perf_counter()
                        probe.fit(Xtr[take], y_train[take])
                        row[f"{backend}_s"] = time.perf_counter() - start
                        row[f"{backend}_accuracy"] = float((probe.predict(Xte) == y_test).mean())
                row["speed_up"] = row["sklearn_s"] / row["torch_s"]
                rows.append(row)
    finally:
        torch.set_num_threads(torch_threads)
    slopes = {}
    for backend in ("torch", "sklearn"):
        for width in widths:
            sel = [r for r in rows if r["width"] == width]
            slopes[f"{backend}_n_d{width}"] = _slope(
                [r["items"] for r in sel], [r[f"{backend}_s"] for r in sel]
            )
        if len(widths) > 1:
            n_max = max(r["items"] for r in rows)
            sel = [r for r in rows if r["items"] == n_max]
            slopes[f"{backend}_d"] = _slope(
                [r["width"] for r in sel], [r[f"{backend}_s"] for r in sel]
            )
    return {
        "rows": rows,
        "slopes": slopes,
        "threads": threads,
        "C": C,
        "classes": int(len(np.unique(y_train))),
        "test_items": len(y_test),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def run_probe_backends(
    z: Sizes, data_dir: Path, work: Path, log: Callable[[str], None] = print
) -> dict:
    """The probe-backend section alone (``--only probe``)."""
    started = time.perf_counter()
    corpus, source = ner_corpus(data_dir, work)
    folder = model_folder("minilm", DEFAULT_MODELS["minilm"], work)
    log("linear probe backends: extracting minilm word vectors")
    # About 26 words per JNLPBA sentence: enough sentences for the largest training size.
    n_items = max(z.probe_backend_items) if z.probe_backend_items else 0
    train = sample(corpus["train"], max(1, n_items // 20), seed=3)
    test = sample(corpus["test"], z.probe_backend_test_items, seed=4)
    X_tr, y_tr, X_te, y_te = probe_word_vectors(folder, train, test, work)
    log(f"linear probe backends: {len(y_tr):,} train words, fitting")
    result = bench_probe_backends(
        X_tr, y_tr, X_te, y_te, widths=z.probe_backend_widths, items=z.probe_backend_items
    )
    result["source"] = f"minilm layer 3 word vectors, {source}"
    result["seconds"] = time.perf_counter() - started
    result["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return result
