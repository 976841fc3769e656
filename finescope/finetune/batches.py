"""Fine-tuning data: encoding items, the collator, length-grouped batches of one epoch."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers

from finescope.errors import FinescopeError
from finescope.finetune.runtime import TASKS, logger
from finescope.io import read_json
from finescope.models import (
    effective_max_length,
    encode_item_pairs,
    encode_words,
    is_decoder,
    real_token_positions,
    unwrap,
    uses_position_ids,
    uses_token_type_ids,
    word_index,
)
from finescope.settings.finetune import FinetuneSettings


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
        pairs = encode_item_pairs(
            tokenizer, items, max_length, decoder=decoder, token_type_ids=token_type_ids
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
            batch["position_ids"] = real_token_positions(batch["attention_mask"])
        return batch

    return collate


def _encode_for(
    model, tokenizer, task: str, items, labels, s: FinetuneSettings, split: str
) -> Encoded:
    """:func:`encode_items` with the settings and model facts of a run; logs truncation."""
    max_length = effective_max_length(model, tokenizer, s.max_length)
    enc = encode_items(
        task,
        tokenizer,
        items,
        labels,
        max_length,
        token_type_ids=uses_token_type_ids(model),
        subword=s.ner_subword,
        decoder=is_decoder(unwrap(model).config),
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
    settings: FinetuneSettings | Mapping | None = None,
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
        :class:`FinetuneSettings` (or a mapping of some of its fields; ``batch_size``,
        ``max_length``, ``seed``, ``mega_batch``, ... are used).
    epoch
        0-based epoch whose order is wanted.

    Returns
    -------
    list[dict[str, torch.Tensor]]
        CPU tensors ``input_ids``, ``attention_mask`` (, ``token_type_ids``, ``position_ids``),
        ``labels``, each (batch, length) — NLI ``labels`` (batch,); ``model(**batch).loss``
        works as is.
    """
    s = FinetuneSettings.build(settings)
    enc = _encode_for(model, tokenizer, task, items, labels, s, "train")
    collate = make_collator(task, tokenizer, position_ids=uses_position_ids(model))
    order = epoch_batches(enc.lengths, s.batch_size, s.seed, epoch, s.mega_batch)
    return [collate([enc.features[i] for i in batch]) for batch in order]
