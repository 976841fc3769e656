"""Fine-tuning a pre-trained model on one task (NLI sequence classification or NER token
classification) with a plain PyTorch loop.

The loop is written out (no ``transformers.Trainer``) so that

* a job killed at any point resumes from its last checkpoint and ends with exactly the metrics of
  an uninterrupted run: the batch order of epoch ``e`` is a pure function of ``(seed, e)``, and a
  checkpoint holds the trainable weights, optimiser, schedule, gradient scaler, all random number
  generator states, the position inside the epoch, the learning curve and the best dev state;
* its overhead can be measured against a bare forward/backward loop over the same batches
  (:func:`build_batches` returns them).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import inspect
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file

from finescope.devices import resolve_device
from finescope.errors import FinescopeError
from finescope.io import atomic_path, read_json, write_json
from finescope.metrics import ner_metrics, nli_metrics
from finescope.models import (
    encode_pairs,
    encode_words,
    is_decoder,
    load_model,
    load_tokenizer,
    word_index,
)
from finescope.progress import Progress
from finescope.settings import defaults, tasks

logger = logging.getLogger("finescope.finetune")

CHECKPOINT_FORMAT = 1
TASKS = tasks()
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CURVE_COLUMNS = ("step", "epoch", "loss", "learning_rate", "dev_score", "examples_per_second")
MAX_GRAD_NORM = 1.0

# The config block's defaults (from the schema, their one home) and the keys only a job sets.
DEFAULT_SETTINGS: dict = {
    **{key: value for key, value in defaults("finetune").items() if key != "keep_model"},
    "seed": 0,
    "trust_remote_code": False,
    # Batch size of dev/test evaluation; None means 2 x batch_size.
    "eval_batch_size": None,
    # Length grouping: items are sorted by length inside windows of this many batches.
    "mega_batch": 50,
    # CPU threads for torch; None keeps torch's default (all cores).
    "threads": None,
    # NER: the sub-word of each word that carries its label and prediction, "first" or "last"
    # ("last" lets a left-to-right decoder see the whole word before labelling it).
    "ner_subword": "first",
}
# Settings that do not change what a run computes: a checkpoint stays valid when they change.
_RESUMABLE_ACROSS = {"checkpoint_every", "device", "threads"}
# LoRA target modules for when peft has no default for an architecture (peft's own choices).
_LORA_TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


# --------------------------------------------------------------------------------------------
# Settings, device, precision


def _setting_error(key: str, value, expected: str) -> FinescopeError:
    return FinescopeError(
        f"config key finetune.{key}: expected {expected}, got {value!r}. Fix it in config.yaml."
    )


def _as_number(key: str, value, *, kind: type, low: float, high: float = math.inf):
    # YAML reads 5e-5 (no dot) as a string; accept numeric strings.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value) if kind is float else int(value)
    ok_types = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise _setting_error(key, value, f"a number in [{low}, {high}]")
    if not low <= value <= high:
        raise _setting_error(key, value, f"a number in [{low}, {high}]")
    return kind(value)


def resolve_settings(settings: dict | None) -> dict:
    """Fill in defaults and validate fine-tuning settings.

    Parameters
    ----------
    settings
        The ``finetune`` section of the config (any subset of :data:`DEFAULT_SETTINGS`).

    Returns
    -------
    dict
        A complete, validated copy; errors name the config key ``finetune.<key>``.
    """
    given = dict(settings or {})
    unknown = sorted(set(given) - set(DEFAULT_SETTINGS))
    if unknown:
        logger.warning("ignoring unknown fine-tuning settings %s", unknown)
    s = copy.deepcopy(DEFAULT_SETTINGS)
    for key in DEFAULT_SETTINGS:
        if key in given and key != "lora":
            s[key] = given[key]
    lora = given.get("lora") or {}
    if not isinstance(lora, dict):
        raise _setting_error("lora", lora, "a mapping with enabled, r, alpha, dropout")
    s["lora"] |= lora

    s["learning_rate"] = _as_number("learning_rate", s["learning_rate"], kind=float, low=1e-12)
    s["epochs"] = _as_number("epochs", s["epochs"], kind=int, low=1)
    s["batch_size"] = _as_number("batch_size", s["batch_size"], kind=int, low=1)
    s["max_length"] = _as_number("max_length", s["max_length"], kind=int, low=4)
    s["warmup_ratio"] = _as_number("warmup_ratio", s["warmup_ratio"], kind=float, low=0, high=1)
    s["weight_decay"] = _as_number("weight_decay", s["weight_decay"], kind=float, low=0)
    s["gradient_accumulation"] = _as_number(
        "gradient_accumulation", s["gradient_accumulation"], kind=int, low=1
    )
    s["seed"] = _as_number("seed", s["seed"], kind=int, low=0, high=2**63 - 1)
    s["checkpoint_every"] = _as_number("checkpoint_every", s["checkpoint_every"], kind=int, low=0)
    s["mega_batch"] = _as_number("mega_batch", s["mega_batch"], kind=int, low=1)
    if s["eval_batch_size"] is None:
        s["eval_batch_size"] = 2 * s["batch_size"]
    s["eval_batch_size"] = _as_number("eval_batch_size", s["eval_batch_size"], kind=int, low=1)
    if s["precision"] not in PRECISIONS:
        raise _setting_error("precision", s["precision"], f"one of {list(PRECISIONS)}")
    for key in ("select_on_dev", "trust_remote_code"):
        if not isinstance(s[key], bool):
            raise _setting_error(key, s[key], "true or false")
    if s["threads"] is not None:
        s["threads"] = _as_number("threads", s["threads"], kind=int, low=1)
    if s["ner_subword"] not in ("first", "last"):
        raise _setting_error("ner_subword", s["ner_subword"], '"first" or "last"')
    if not isinstance(s["device"], str):
        raise _setting_error("device", s["device"], '"auto", "cpu", "cuda" or "cuda:N"')
    lora = s["lora"]
    if not isinstance(lora["enabled"], bool):
        raise _setting_error("lora.enabled", lora["enabled"], "true or false")
    lora["r"] = _as_number("lora.r", lora["r"], kind=int, low=1)
    lora["alpha"] = _as_number("lora.alpha", lora["alpha"], kind=float, low=1e-12)
    lora["dropout"] = _as_number("lora.dropout", lora["dropout"], kind=float, low=0, high=1)
    return s


@dataclass(frozen=True)
class Precision:
    """Numerical precision of a run: weights stay float32, ``dtype`` is the autocast type."""

    name: str
    device_type: str
    dtype: torch.dtype | None = None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """Resolve the ``precision`` setting for a device.

    ``auto`` is bf16 autocast on a CUDA GPU that supports it (fp16 with loss scaling on older
    GPUs) and float32 on CPU; explicit ``fp32``/``bf16``/``fp16`` are honoured (fp16 needs CUDA).

    Parameters
    ----------
    precision
        ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    device
        Where the model runs.

    Returns
    -------
    Precision
        ``name`` (fp32/bf16/fp16), the autocast dtype (None for fp32), whether a loss scaler is
        needed.
    """
    if precision not in PRECISIONS:
        raise _setting_error("precision", precision, f"one of {list(PRECISIONS)}")
    cuda = device.type == "cuda"
    if precision == "auto":
        if not cuda:
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return Precision("fp32", device.type)
    if precision == "fp16" and not cuda:
        raise FinescopeError(
            'config key finetune.precision: "fp16" needs a CUDA GPU and this run is on the CPU. '
            'Use "auto", "fp32" or "bf16".'
        )
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise FinescopeError(
            'config key finetune.precision: this GPU does not support "bf16". Use "auto" or "fp16".'
        )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return Precision(precision, device.type, dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _run_context(threads: int | None) -> Iterator[None]:
    """Deterministic algorithms (cheap on CPU; on CUDA a few kernels warn instead of failing)
    and the CPU thread count, restored afterwards."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    n_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)
        torch.backends.cudnn.benchmark = benchmark
        torch.set_num_threads(n_threads)


def _oom_error(exc: BaseException, s: dict, what: str) -> FinescopeError:
    return FinescopeError(
        f"the GPU ran out of memory while {what} (batch_size={s['batch_size']}, "
        f"eval_batch_size={s['eval_batch_size']}, max_length={s['max_length']}): {exc}. "
        "Lower `finetune.batch_size` and raise `finetune.gradient_accumulation` by the same "
        "factor (same effective batch), or lower `finetune.max_length` / "
        "`finetune.eval_batch_size`, in config.yaml."
    )


# --------------------------------------------------------------------------------------------
# Data


def _read_split(path: Path, task: str, labels: Sequence[str]) -> list[dict]:
    """Read one canonical split, checking fields and labels (errors give file:line)."""
    if not path.is_file():
        raise FinescopeError(f"{path}: missing; run the data stage for task {task!r} first")
    known = set(labels)
    items = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FinescopeError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
            need = (
                ("id", "premise", "hypothesis", "label")
                if task == "nli"
                else ("id", "tokens", "tags")
            )
            missing = [key for key in need if key not in item]
            if missing:
                raise FinescopeError(f"{path}:{lineno}: item lacks {missing}")
            found = [item["label"]] if task == "nli" else item["tags"]
            if task == "ner" and len(item["tokens"]) != len(item["tags"]):
                raise FinescopeError(
                    f"{path}:{lineno}: {len(item['tokens'])} tokens but {len(item['tags'])} tags"
                )
            bad = sorted(set(found) - known)
            if bad:
                raise FinescopeError(
                    f"{path}:{lineno}: labels {bad} are not in labels.json {list(labels)}; "
                    "re-run the data stage"
                )
            items.append(item)
    return items


def load_task_data(
    task: str, data_dir: str | Path, subset_ids: Sequence[str] | None = None
) -> tuple[list[str], list[dict], list[dict], list[dict]]:
    """Read a canonical data folder.

    Parameters
    ----------
    task
        ``"nli"`` or ``"ner"``.
    data_dir
        Folder with ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` and ``labels.json``.
    subset_ids
        Ids of the training items to keep (in file order); None keeps all.

    Returns
    -------
    tuple
        ``(labels, train, dev, test)``.
    """
    if task not in TASKS:
        raise FinescopeError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    data_dir = Path(data_dir)
    labels_path = data_dir / "labels.json"
    if not labels_path.is_file():
        raise FinescopeError(f"{labels_path}: missing; run the data stage for {task!r} first")
    meta = read_json(labels_path)
    if meta.get("task", task) != task:
        raise FinescopeError(f"{labels_path}: holds task {meta.get('task')!r}, not {task!r}")
    labels = list(meta.get("labels") or [])
    if len(labels) < 2:
        raise FinescopeError(f"{labels_path}: needs at least two labels, has {labels}")
    train, dev, test = (
        _read_split(data_dir / f"{s}.jsonl", task, labels) for s in ("train", "dev", "test")
    )
    if subset_ids is not None:
        wanted = set(subset_ids)
        train = [item for item in train if item["id"] in wanted]
        absent = wanted - {item["id"] for item in train}
        if absent:
            raise FinescopeError(
                f"{data_dir / 'train.jsonl'}: {len(absent)} of the {len(wanted)} selected ids are "
                f"not in the training split (e.g. {sorted(absent)[:3]}); the subset was made from "
                "other data - re-run the subsample stage"
            )
    return labels, train, dev, test


@dataclass
class Encoded:
    """Tokenised items, ready for the collator.

    ``features[i]`` holds ``input_ids``, ``attention_mask`` (``token_type_ids`` for encoders that
    use them) and ``labels`` (int for NLI; per token for NER, -100 except on the one sub-word of
    each word that carries its label). ``word_tokens[i][w]`` is the position of that sub-word for
    word ``w`` (-1 when truncation cut the word) — NER only. ``cls_positions[i]`` is the token
    the sequence-classification head reads — NLI only.
    """

    features: list[dict]
    lengths: list[int]
    word_tokens: list[list[int]] = field(default_factory=list)
    cls_positions: list[int] = field(default_factory=list)
    truncated_words: int = 0
    truncated_items: int = 0


def encode_items(
    task: str,
    tokenizer,
    items: Sequence[dict],
    labels: Sequence[str],
    max_length: int,
    *,
    token_type_ids: bool = False,
    subword: str = "first",
    decoder: bool = False,
) -> Encoded:
    """Tokenise canonical items.

    Parameters
    ----------
    task
        ``"nli"``: one sequence per premise/hypothesis pair from
        :func:`finescope.models.encode_pairs` (the tokenizer's pair template; a separator
        where it has none; extraction encodes pairs with the same function); ``"ner"``:
        pre-split words via
        :func:`finescope.models.encode_words`, labelled on one sub-word per word (no sub-word
        convention such as ``##`` is assumed; ``word_index`` gives the alignment); the other
        sub-words and special tokens get -100.
    max_length
        Truncation length in tokens (special tokens included).
    token_type_ids
        Keep segment ids (BERT-style encoders); decoders and models without them drop them.
    subword
        NER: ``"first"`` or ``"last"`` sub-word of each word carries the label.
    decoder
        NLI: the model reads left to right (only changes ``cls_positions``).
    """
    label_id = {label: i for i, label in enumerate(labels)}
    keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_type_ids else [])
    if not items:
        return Encoded([], [])
    if task == "nli":
        pairs = encode_pairs(
            tokenizer,
            [item["premise"] for item in items],
            [item["hypothesis"] for item in items],
            max_length,
            decoder=decoder,
            token_type_ids=token_type_ids,
        )
        features = []
        for pair, item in zip(pairs, items, strict=True):
            feature = {"input_ids": pair.input_ids, "attention_mask": [1] * len(pair.input_ids)}
            if pair.token_type_ids is not None:
                feature["token_type_ids"] = pair.token_type_ids
            feature["labels"] = label_id[item["label"]]
            features.append(feature)
        return Encoded(
            features,
            [len(f["input_ids"]) for f in features],
            cls_positions=[pair.cls for pair in pairs],
            truncated_items=sum(pair.truncated for pair in pairs),
        )
    if task != "ner":
        raise FinescopeError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    enc = encode_words(tokenizer, [list(item["tokens"]) for item in items], max_length)
    features, word_tokens = [], []
    cut = empty = cut_items = 0
    for i, item in enumerate(items):
        word_ids = word_index(enc, i)
        chosen = [-1] * len(item["tokens"])
        for position, w in enumerate(word_ids):
            if w is not None and (chosen[w] < 0 or subword == "last"):
                chosen[w] = position
        token_labels = [-100] * len(word_ids)
        for w, position in enumerate(chosen):
            if position >= 0:
                token_labels[position] = label_id[item["tags"][w]]
        last_seen = max((w for w in word_ids if w is not None), default=-1)
        n_cut = len(chosen) - 1 - last_seen
        cut += n_cut
        empty += sum(p < 0 for p in chosen) - n_cut
        cut_items += n_cut > 0
        feature = {key: list(enc[key][i]) for key in keys if key in enc}
        feature["labels"] = token_labels
        features.append(feature)
        word_tokens.append(chosen)
    if empty:
        logger.warning("%d words produced no token at all; they are predicted 'O'", empty)
    return Encoded(
        features,
        [len(f["input_ids"]) for f in features],
        word_tokens,
        truncated_words=cut + empty,
        truncated_items=cut_items,
    )


def _unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _forward_params(model) -> set[str]:
    return set(inspect.signature(_unwrap(model).forward).parameters)


def uses_token_type_ids(model) -> bool:
    """Whether ``model`` is given segment ids: encoders whose forward takes them (decoders such
    as GPT-2 accept them too, but were not trained with them)."""
    config = _unwrap(model).config
    return (
        not is_decoder(config)
        and "token_type_ids" in _forward_params(model)
        and getattr(config, "type_vocab_size", 0) > 0
    )


_uses_token_type_ids = uses_token_type_ids


def _uses_position_ids(model) -> bool:
    # Decoders number positions from the first column, so with left padding the real tokens
    # would sit at shifted positions; explicit ids make both padding sides give the same result.
    return is_decoder(_unwrap(model).config) and "position_ids" in _forward_params(model)


def _extra_inputs(model) -> dict:
    params = _forward_params(model)
    return (
        {"use_cache": False} if is_decoder(_unwrap(model).config) and "use_cache" in params else {}
    )


def make_collator(task: str, tokenizer, *, position_ids: bool = False) -> Callable:
    """Collator with dynamic padding to the longest sequence of the batch.

    Parameters
    ----------
    task
        ``"nli"`` (``DataCollatorWithPadding``) or ``"ner"``
        (``DataCollatorForTokenClassification``, labels padded with -100).
    tokenizer
        Its ``padding_side`` and pad token are used.
    position_ids
        Add ``position_ids`` counted over real tokens only (decoders: left and right padding then
        give the same result).

    Returns
    -------
    Callable
        ``features -> dict[str, torch.Tensor]``, each tensor of shape (batch, longest) or
        (batch,) for NLI labels.
    """
    if task == "ner":
        base = transformers.DataCollatorForTokenClassification(tokenizer, return_tensors="pt")
    else:
        base = transformers.DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def collate(features: list[dict]) -> dict[str, torch.Tensor]:
        batch = dict(base(features))
        if position_ids:
            batch["position_ids"] = (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        return batch

    return collate


def effective_max_length(model, tokenizer, max_length: int) -> int:
    """``max_length`` capped at what the model's position embeddings and tokenizer allow.

    Returns
    -------
    int
        The truncation length in tokens.
    """
    config = _unwrap(model).config
    limits = [max_length]
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limits.append(int(tokenizer.model_max_length))
    limit = min(limits)
    if limit < max_length:
        logger.info("max_length %d capped at %d (model/tokenizer limit)", max_length, limit)
    return limit


def _encode_for(model, tokenizer, task: str, items, labels, s: dict, split: str) -> Encoded:
    """:func:`encode_items` with the settings and model facts of a run; logs truncation."""
    max_length = effective_max_length(model, tokenizer, s["max_length"])
    enc = encode_items(
        task,
        tokenizer,
        items,
        labels,
        max_length,
        token_type_ids=uses_token_type_ids(model),
        subword=s["ner_subword"],
        decoder=is_decoder(_unwrap(model).config),
    )
    if enc.truncated_items:
        if task == "ner":
            effect = "lose their label" if split == "train" else "are predicted 'O'"
            what = f"{enc.truncated_words} words {effect}"
        else:
            what = "the text beyond it is not seen"
        logger.warning(
            "%s: max_length=%d truncates %d of %d items (%s)",
            split,
            max_length,
            enc.truncated_items,
            len(enc.features),
            what,
        )
    return enc


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, mega_batch: int = 50
) -> list[list[int]]:
    """Training batches of one epoch as lists of item indices — a pure function of
    ``(seed, epoch)``, so a resumed run can skip exactly the batches already consumed.

    Items are shuffled, cut into windows of ``mega_batch * batch_size`` items, sorted by length
    inside each window (little padding), batched, and the batch order is shuffled again; all
    from one ``torch.Generator`` seeded from ``(seed, epoch)``.

    Parameters
    ----------
    lengths
        Token count of each item.
    batch_size, mega_batch
        Items per batch; batches per length-sorting window.
    seed, epoch
        Determine the order.

    Returns
    -------
    list[list[int]]
        ``ceil(n / batch_size)``-ish batches (the last batch of each window may be smaller).
    """
    n = len(lengths)
    generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    order = torch.randperm(n, generator=generator).tolist()
    window = mega_batch * batch_size
    batches: list[list[int]] = []
    for start in range(0, n, window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[k] for k in shuffled]


def build_batches(
    model,
    tokenizer,
    task: str,
    items: Sequence[dict],
    labels: Sequence[str],
    settings: dict | None = None,
    *,
    epoch: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """The collated training batches of one epoch, in the order :func:`train_loop` uses them —
    e.g. to time a bare forward/backward loop against :func:`train_loop` on the same batches.

    Parameters
    ----------
    model
        The task model (decides segment ids and decoder position ids).
    items, labels
        Canonical training items and label names.
    settings
        Fine-tuning settings (``batch_size``, ``max_length``, ``seed``, ``mega_batch``, ...).
    epoch
        0-based epoch whose order is wanted.

    Returns
    -------
    list[dict[str, torch.Tensor]]
        CPU tensors ``input_ids``, ``attention_mask`` (, ``token_type_ids``, ``position_ids``),
        ``labels``, each (batch, length) — NLI ``labels`` (batch,); ``model(**batch).loss``
        works as is.
    """
    s = resolve_settings(settings)
    enc = _encode_for(model, tokenizer, task, items, labels, s, "train")
    collate = make_collator(task, tokenizer, position_ids=_uses_position_ids(model))
    order = epoch_batches(enc.lengths, s["batch_size"], s["seed"], epoch, s["mega_batch"])
    return [collate([enc.features[i] for i in batch]) for batch in order]


# --------------------------------------------------------------------------------------------
# Evaluation


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
    collate = make_collator(task, tokenizer, position_ids=_uses_position_ids(model))
    extra = _extra_inputs(model)
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


def _evaluate_encoded(model, tokenizer, task, items, labels, enc, s, precision):
    try:
        predictions = _predict(model, tokenizer, task, enc, labels, s["eval_batch_size"], precision)
    except torch.OutOfMemoryError as exc:
        raise _oom_error(exc, s, "evaluating") from exc
    metrics = _score(task, items, predictions, labels)
    metrics["truncated_words"] = enc.truncated_words
    metrics["truncated_items"] = enc.truncated_items
    return metrics, predictions


def evaluate(
    model, tokenizer, task: str, items: Sequence[dict], labels: Sequence[str], settings: dict | None
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
        Fine-tuning settings (``max_length``, ``eval_batch_size``, ``precision`` are used).

    Returns
    -------
    tuple
        ``(metrics, predictions)``: :func:`finescope.metrics.nli_metrics` /
        :func:`~finescope.metrics.ner_metrics` plus ``truncated_words`` and ``truncated_items``;
        predictions are label names (NLI, one per item) or tag lists (NER, one tag per word;
        words cut by truncation are "O").
    """
    s = resolve_settings(settings)
    precision = resolve_precision(s["precision"], _model_device(model))
    enc = _encode_for(model, tokenizer, task, items, labels, s, "evaluation")
    return _evaluate_encoded(model, tokenizer, task, list(items), labels, enc, s, precision)


# --------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class TrainState:
    """Where training stands; everything here goes into a checkpoint."""

    epoch: int = 0  # epoch in progress (0-based)
    step_in_epoch: int = 0  # optimiser steps done in that epoch
    global_step: int = 0
    curve: list[dict] = field(default_factory=list)
    best_score: float | None = None
    best_epoch: int | None = None  # 1-based
    best_dev: dict | None = None
    best_params: dict[str, torch.Tensor] | None = None
    best_version: int = 0  # bumped whenever best_params change
    train_seconds: float = 0.0
    examples_seen: int = 0
    resumed_from: int | None = None
    rng: dict | None = None


def _rng_state() -> dict:
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss_next},
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().to("cpu", copy=True).contiguous() for name, p in _trainable(model).items()
    }


def _restore(model, tensors: dict[str, torch.Tensor]) -> None:
    params = _trainable(model)
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _items_digest(items: Sequence[dict]) -> str:
    text = "\n".join(json.dumps(item, sort_keys=True, ensure_ascii=False) for item in items)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def job_fingerprint(
    task: str,
    model_dir: str | Path,
    settings: dict,
    subset_ids: Sequence[str],
    labels: Sequence[str],
    train: Sequence[dict],
    dev: Sequence[dict],
) -> dict:
    """What a checkpoint must match to be resumed.

    Returns
    -------
    dict
        JSON-able: model (config.json hash, weight file sizes), task, labels, the settings that
        change results (all but checkpoint_every, device, threads), hash of the subset ids and
        of the training and dev items.
    """
    model_dir = Path(model_dir)
    weights = sorted(
        (p.name, p.stat().st_size) for p in model_dir.glob("*.safetensors") if p.is_file()
    )
    return {
        "format": CHECKPOINT_FORMAT,
        "task": task,
        "model": {
            "config_sha256": _file_digest(model_dir / "config.json"),
            "weights": [list(w) for w in weights],
        },
        "labels": list(labels),
        "settings": {k: v for k, v in sorted(settings.items()) if k not in _RESUMABLE_ACROSS},
        "subset_sha256": hashlib.sha256("\n".join(subset_ids).encode()).hexdigest(),
        "data_sha256": {"train": _items_digest(train), "dev": _items_digest(dev)},
    }


class CheckpointStore:
    """Checkpoints of one job in ``folder/step-<global step>/``, each written atomically (temp
    folder + rename); only the newest is kept.

    Files: ``model.safetensors`` (trainable weights), ``best.safetensors`` (best dev weights, if
    any), ``state.pt`` (optimiser, schedule, scaler, RNG states, position, curve, fingerprint;
    readable with ``torch.load(weights_only=True)``), ``fingerprint.json`` (for people).
    """

    def __init__(self, folder: str | Path, fingerprint: dict):
        self.folder = Path(folder)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self.saved = 0

    def _steps(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("step-*"), reverse=True)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _differences(self, other: dict) -> list[str]:
        diffs = []
        for key in sorted(set(self.fingerprint) | set(other)):
            mine, theirs = self.fingerprint.get(key), other.get(key)
            if key == "settings" and isinstance(theirs, dict):
                diffs += [
                    f"settings.{k}"
                    for k in sorted(set(mine) | set(theirs))
                    if mine.get(k) != theirs.get(k)
                ]
            elif mine != theirs:
                diffs.append(key)
        return diffs

    def load(self, model, optimizer, scheduler, scaler) -> TrainState | None:
        """Restore the newest usable checkpoint into the given objects; None when there is none
        (a checkpoint of another job, or an unreadable one, is reported and removed)."""
        # Leftovers of a write that was killed before its rename.
        for partial in self.folder.glob(".step-*.tmp") if self.folder.is_dir() else []:
            shutil.rmtree(partial, ignore_errors=True)
        for step_dir in self._steps():
            try:
                payload = torch.load(step_dir / "state.pt", map_location="cpu", weights_only=True)
                if payload.get("format") != CHECKPOINT_FORMAT:
                    raise ValueError(f"format {payload.get('format')!r}")
                stored = json.loads(payload["fingerprint"])
            except Exception as exc:  # any unreadable file means: do not use it
                logger.warning(
                    "checkpoint %s is unreadable (%s: %s); ignoring it",
                    step_dir,
                    type(exc).__name__,
                    exc,
                )
                shutil.rmtree(step_dir, ignore_errors=True)
                continue
            if stored != self.fingerprint:
                logger.warning(
                    "checkpoint %s belongs to another job (differs in: %s); it is not used - "
                    "removing it and starting fresh",
                    step_dir,
                    ", ".join(self._differences(stored)),
                )
                self.clear()
                return None
            try:
                weights = load_file(step_dir / "model.safetensors")
                best_path = step_dir / "best.safetensors"
                best = load_file(best_path) if best_path.is_file() else None
                expected = {n: tuple(p.shape) for n, p in _trainable(model).items()}
                for tensors in (weights, best or weights):
                    got = {n: tuple(t.shape) for n, t in tensors.items()}
                    if got != expected:
                        raise ValueError("weights do not match the model's trainable parameters")
            except Exception as exc:
                logger.warning(
                    "checkpoint %s is unreadable (%s: %s); ignoring it",
                    step_dir,
                    type(exc).__name__,
                    exc,
                )
                shutil.rmtree(step_dir, ignore_errors=True)
                continue
            try:
                _restore(model, weights)
                optimizer.load_state_dict(payload["optimizer"])
                scheduler.load_state_dict(payload["scheduler"])
                if scaler is not None and payload["scaler"]:
                    scaler.load_state_dict(payload["scaler"])
            except Exception as exc:
                raise FinescopeError(
                    f"checkpoint {step_dir} matches this job but could not be restored ({exc}). "
                    f"Delete {self.folder} to start this job afresh."
                ) from exc
            state = TrainState(
                epoch=payload["epoch"],
                step_in_epoch=payload["step_in_epoch"],
                global_step=payload["global_step"],
                curve=list(payload["curve"]),
                best_score=payload["best"]["score"],
                best_epoch=payload["best"]["epoch"],
                best_dev=payload["best"]["dev"],
                best_params=best,
                best_version=1 if best is not None else 0,
                train_seconds=payload["train_seconds"],
                examples_seen=payload["examples_seen"],
                resumed_from=payload["global_step"],
                rng=payload["rng"],
            )
            logger.info(
                "resuming from checkpoint %s (epoch %d, step %d)",
                step_dir,
                state.epoch + 1,
                state.global_step,
            )
            return state
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()
        return None

    def save(self, state: TrainState, model, optimizer, scheduler, scaler) -> Path:
        """Write a checkpoint of the current state, then drop older ones."""
        previous = self._steps()
        step_dir = self.folder / f"step-{state.global_step:09d}"
        payload = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
            "epoch": state.epoch,
            "step_in_epoch": state.step_in_epoch,
            "global_step": state.global_step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": _rng_state(),
            "curve": state.curve,
            "best": {"score": state.best_score, "epoch": state.best_epoch, "dev": state.best_dev},
            "train_seconds": state.train_seconds,
            "examples_seen": state.examples_seen,
        }
        with atomic_path(step_dir, is_dir=True) as tmp:
            save_file(_snapshot(model), str(tmp / "model.safetensors"))
            if state.best_params is not None:
                self._write_best(state, previous, tmp / "best.safetensors")
            torch.save(payload, tmp / "state.pt")
            (tmp / "fingerprint.json").write_text(
                json.dumps(self.fingerprint, indent=2, sort_keys=True) + "\n"
            )
        self._best_written = state.best_version
        for old in previous:
            if old != step_dir:
                shutil.rmtree(old, ignore_errors=True)
        self.saved += 1
        return step_dir

    def _write_best(self, state: TrainState, previous: list[Path], target: Path) -> None:
        # The best weights change only at epoch ends: link the previous file when unchanged.
        source = previous[0] / "best.safetensors" if previous else None
        if (
            getattr(self, "_best_written", None) == state.best_version
            and source
            and source.is_file()
        ):
            try:
                os.link(source, target)
                return
            except OSError:
                pass
        save_file(state.best_params, str(target))


# --------------------------------------------------------------------------------------------
# Training


def _optimizer(model, s: dict) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in _trainable(model).values():
        # Biases and norm weights (1-d) are not decayed.
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": s["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=s["learning_rate"])


def train_loop(
    model,
    tokenizer,
    task: str,
    train_items: Sequence[dict],
    labels: Sequence[str],
    settings: dict | None = None,
    *,
    dev_items: Sequence[dict] = (),
    checkpoint_dir: str | Path | None = None,
    fingerprint: dict | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
) -> TrainState:
    """Train ``model`` (in place, on its current device) and return the final state.

    AdamW (no decay on 1-d parameters), linear schedule with warm-up, gradient accumulation,
    gradient clipping at 1.0, autocast per ``settings["precision"]`` (fp16 with loss scaling),
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
    s = resolve_settings(settings)
    device = _model_device(model)
    precision = resolve_precision(s["precision"], device)
    train = _encode_for(model, tokenizer, task, train_items, labels, s, "train")
    if not train.features:
        raise FinescopeError("no training items: the selected subset is empty")
    select = s["select_on_dev"] and len(dev_items) > 0
    dev = _encode_for(model, tokenizer, task, dev_items, labels, s, "dev") if select else None
    collate = make_collator(task, tokenizer, position_ids=_uses_position_ids(model))
    extra = _extra_inputs(model)

    bs, accum, epochs = s["batch_size"], s["gradient_accumulation"], s["epochs"]
    steps_per_epoch = math.ceil(math.ceil(len(train.features) / bs) / accum)
    total_steps = epochs * steps_per_epoch
    warmup = math.ceil(s["warmup_ratio"] * total_steps)
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
                "settings": {k: v for k, v in sorted(s.items()) if k not in _RESUMABLE_ACROSS},
                "data_sha256": {
                    "train": _items_digest(train_items),
                    "dev": _items_digest(dev_items),
                },
            }
        store = CheckpointStore(checkpoint_dir, fingerprint)
        state = store.load(model, optimizer, scheduler, scaler)
    state = state or TrainState()
    every = s["checkpoint_every"]

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
            batches = epoch_batches(train.lengths, bs, s["seed"], epoch, s["mega_batch"])
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


def apply_lora(model, task: str, lora: dict):
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
        ``{"r", "alpha", "dropout"}``.

    Returns
    -------
    peft.PeftModel
    """
    from peft import LoraConfig, TaskType, get_peft_model

    task_type = TaskType.SEQ_CLS if task == "nli" else TaskType.TOKEN_CLS
    extra_trainable = None
    if task == "nli" and any(name.endswith("pooler") for name, _ in model.named_modules()):
        # BERT-style heads read the pooler; a frozen, possibly newly initialised pooler would
        # cripple the head.
        extra_trainable = ["pooler"]

    def wrap(targets):
        config = LoraConfig(
            task_type=task_type,
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
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
    settings: dict | None,
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
        See :data:`DEFAULT_SETTINGS`.
    on_checkpoint
        Called with the number of checkpoints written so far, right after each one is on disk
        (the resume tests kill the process there, as a scheduler would).

    Returns
    -------
    dict
        The content of ``metrics.json``.
    """
    s = resolve_settings(settings)
    out_dir = Path(out_dir)
    labels, train_items, dev_items, test_items = load_task_data(task, data_dir, subset_ids)
    if not train_items:
        raise FinescopeError(
            f"no training items selected from {Path(data_dir) / 'train.jsonl'}: fraction 0 is the "
            "pre-trained model and is not fine-tuned"
        )
    if not test_items:
        raise FinescopeError(f"{Path(data_dir) / 'test.jsonl'} is empty: nothing to score on")
    device = resolve_device(s["device"])
    precision = resolve_precision(s["precision"], device)
    fingerprint = job_fingerprint(
        task, model_dir, s, list(subset_ids), labels, train_items, dev_items
    )
    with _run_context(s["threads"]):
        seed_everything(s["seed"])
        tokenizer = load_tokenizer(model_dir, trust_remote_code=s["trust_remote_code"])
        model = load_model(
            model_dir, task, labels, trust_remote_code=s["trust_remote_code"], seed=s["seed"]
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        if s["lora"]["enabled"]:
            model = apply_lora(model, task, s["lora"])
        model.to(device)
        state = train_loop(
            model,
            tokenizer,
            task,
            train_items,
            labels,
            s,
            dev_items=dev_items if s["select_on_dev"] else (),
            checkpoint_dir=checkpoint_dir,
            fingerprint=fingerprint,
            on_checkpoint=on_checkpoint,
        )
        if s["lora"]["enabled"]:
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
        "epochs": s["epochs"],
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
        "seed": s["seed"],
        "lora": s["lora"]["enabled"],
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
