"""The hidden-state cache: one forward pass per batch over a task's items, every layer's pooled
vectors written to disk as they come, plus the attention maps of the first few items. The
folder layout and its reader are in :mod:`finescope.cache`.

Choices that matter for the study:

- NLI, ``nli_view: "pair"`` (default): each item is ONE sequence, encoded exactly as
  fine-tuning encodes it (:func:`finescope.models.encode_pairs`, used by both): the
  tokenizer's pair template, e.g. ``[CLS] premise [SEP] hypothesis [SEP]``. Where the template
  puts nothing between the segments (GPT-2-style byte-level BPE, Llama/SmolLM2), the eos token
  is inserted between them (meta ``pair_separator``; None when the tokenizer has its own).
  ``cls`` is the classification position: the first token for encoders, and for decoders the
  rightmost token whose id is not the pad id, which is what transformers'
  ``*ForSequenceClassification`` heads read (the last real token; with pad == eos the
  separator in the middle does not change that). ``premise`` and ``hypothesis`` are the means
  over each segment's own tokens in the joint pass (no special token, no separator; all tokens
  of the pair if a segment has none). Attention maps: one joint sequence per item (sequence k
  is item k).
- NLI, ``nli_view: "separate"`` (the study's view): premise and hypothesis are encoded as two
  separate sequences; each vector is the mean over the sequence's real, non-special tokens
  (padding and tokens such as ``[CLS]``, ``[SEP]`` or ``<s>`` are left out; all real tokens
  are used if a text has no other token). Attention sequence 2i is item i's premise, 2i + 1
  its hypothesis.
- NER: a word's vector comes from its sub-words, found with the tokenizer's own word
  alignment (no sub-word convention is assumed), per ``ner_pooling``: the first sub-word
  (default; what an encoder's token-classification head reads), the last one (what a
  left-to-right decoder should be read at: only there has it seen the whole word), or the
  mean. A word cut by truncation, fully or partly, is left out whatever the pooling.
- ``max_length`` is capped by the tokenizer's limit and the model's position table, as in
  fine-tuning (:func:`finescope.models.effective_max_length`).
- Sequences are padded on the right by default. A real token then sits at the same position as
  without padding, and neither bidirectional attention (masked) nor causal attention (it never
  looks right) can see the pads, so vectors do not depend on the batch. With
  ``padding_side="left"``, explicit ``position_ids`` counting from 0 at the first real token are
  passed, which is right for models whose positions start at 0 (BERT, GPT-2, rotary models).
- Attention maps are only requested when ``attention_items > 0``; the model then runs the
  eager attention implementation (the fused ones do not return maps) for the whole cache, so
  every item's hidden states come from the same kernels. Otherwise the library default is used.
- Attention sequences are batched apart from the others, so only their batches pay for the maps.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from finescope import io, job
from finescope.cache import DTYPES, VIEWS, release_pages, to_storage
from finescope.devices import resolve_device
from finescope.errors import FinescopeError
from finescope.io import atomic_path, write_json
from finescope.models import (
    effective_max_length,
    encode_item_pairs,
    encode_words,
    is_decoder,
    load_model,
    load_tokenizer,
    pair_template,
    real_token_positions,
    uses_token_type_ids,
    word_index,
)
from finescope.probe_pool import probe_items
from finescope.progress import Progress
from finescope.settings import tasks
from finescope.settings.extract import ExtractSettings


@dataclass
class _Sequence:
    """One model input and what to pool from it."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    # (view index, output row, token positions) per pooled vector
    groups: list[tuple[int, int, list[int]]] = field(default_factory=list)
    attention_k: int = -1  # index in the attention store, -1 when not stored


@dataclass
class LoadedModel:
    """A model and tokenizer loaded once for several caches (one extraction job writes the probe
    pool's and the test split's); ``settings`` are what it was loaded under."""

    tokenizer: Any
    model: Any
    device: Any
    settings: ExtractSettings
    load_seconds: float
    # The implementation chosen when no attention maps were asked for (the library default).
    default_attention: str | None


# Settings a loaded model serves unchanged: what each cache stores, not how the model is made.
_PER_CACHE = (
    "batch_size",
    "max_length",
    "dtype",
    "attention_items",
    "nli_view",
    "ner_pooling",
    "max_items",
    "item_seed",
)


def load_for_extraction(
    task: str,
    model_dir: str | Path,
    settings: ExtractSettings | Mapping,
    need_attention: bool = False,
) -> LoadedModel:
    """Tokenizer and model of ``model_dir`` on the settings' device, as :func:`run_extract`
    loads them."""
    settings = ExtractSettings.build(settings)
    model_dir = Path(model_dir)
    started = time.perf_counter()
    tokenizer = load_tokenizer(model_dir, trust_remote_code=bool(settings.trust_remote_code))
    model = _load_model(model_dir, task, settings, need_attention)
    device = resolve_device(str(settings.device), key="extract.device")
    model.to(device).eval()
    default = None if need_attention else model.config._attn_implementation
    return LoadedModel(tokenizer, model, device, settings, time.perf_counter() - started, default)


def _use_attention(loaded: LoadedModel, need_attention: bool) -> bool:
    """Switch the loaded model to the eager kernels when maps are wanted (fused kernels return
    none) and back to the default otherwise, as if it had been loaded for this cache; False
    when the model cannot switch once loaded (then it has to be loaded again)."""
    wanted = "eager" if need_attention else loaded.default_attention
    if loaded.model.config._attn_implementation == wanted:
        return True
    if wanted is None:
        return False
    loaded.model.set_attn_implementation(wanted)
    return loaded.model.config._attn_implementation == wanted


def _load_model(model_dir: Path, task: str, settings: ExtractSettings, need_attention: bool):
    """The bare model, pre-trained weights or (``random_init``) the same architecture with
    freshly initialised weights drawn under ``seed``."""
    attn = "eager" if need_attention else None
    trust = bool(settings.trust_remote_code)
    if settings.random_init:
        config = transformers.AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust)
        kwargs: dict = {"trust_remote_code": trust, "dtype": torch.float32}
        if attn:
            kwargs["attn_implementation"] = attn
        torch.manual_seed(int(settings.seed))
        return transformers.AutoModel.from_config(config, **kwargs)
    return load_model(
        model_dir, task, head=False, attn_implementation=attn, trust_remote_code=trust
    )


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _check_items(task: str, items: list[dict]) -> None:
    if task not in tasks():
        raise FinescopeError(f"extract: unknown task {task!r}; expected one of {sorted(tasks())}")
    if not items:
        raise FinescopeError(f"extract ({task}): no items to encode; check the data stage output")
    for item in items:
        if task == "nli":
            if not isinstance(item.get("premise"), str) or not isinstance(
                item.get("hypothesis"), str
            ):
                raise FinescopeError(
                    f"extract (nli): item {item.get('id')!r} needs string `premise` and "
                    "`hypothesis` fields"
                )
        else:
            tokens, tags = item.get("tokens"), item.get("tags")
            if (
                not isinstance(tokens, list)
                or not isinstance(tags, list)
                or len(tokens) != len(tags)
            ):
                raise FinescopeError(
                    f"extract (ner): item {item.get('id')!r} needs `tokens` and `tags` lists of "
                    "equal length"
                )


def _encode_texts(tokenizer, texts: list[str], max_length: int):
    """Token ids, token type ids and pooling positions of each text, and how many were cut."""
    kwargs = {"return_special_tokens_mask": True, "verbose": False}
    enc = tokenizer(texts, **kwargs)
    long = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) > max_length]
    rows = {i: {key: enc[key][i] for key in enc.keys()} for i in range(len(texts))}
    if long:
        cut = tokenizer([texts[i] for i in long], truncation=True, max_length=max_length, **kwargs)
        for j, i in enumerate(long):
            rows[i] = {key: cut[key][j] for key in cut.keys()}
    out = []
    for i in range(len(texts)):
        row = rows[i]
        special = row.get("special_tokens_mask") or [0] * len(row["input_ids"])
        positions = [t for t, s in enumerate(special) if not s]
        if not positions:  # a text made only of special tokens: use what there is
            positions = list(range(len(row["input_ids"])))
        out.append((row["input_ids"], row.get("token_type_ids"), positions))
    return out, len(long)


def _plan_pairs(tokenizer, items, max_length, n_attention, *, decoder, token_type_ids):
    """One joint sequence per item; views cls (0), premise (1), hypothesis (2)."""
    pairs = encode_item_pairs(
        tokenizer, items, max_length, decoder=decoder, token_type_ids=token_type_ids
    )
    sequences = []
    for i, pair in enumerate(pairs):
        # A segment left without tokens (an empty text) falls back to all tokens of the pair.
        every = list(range(len(pair.input_ids)))
        groups = [
            (0, i, [pair.cls]),
            (1, i, pair.premise or every),
            (2, i, pair.hypothesis or every),
        ]
        seq = _Sequence(pair.input_ids, pair.token_type_ids, groups)
        if i < n_attention:
            seq.attention_k = i
        sequences.append(seq)
    extra = {
        "n_truncated_sequences": sum(pair.truncated for pair in pairs),
        "pair_separator": pair_template(tokenizer).separator,
    }
    return sequences, [item.get("label") for item in items], extra


def _plan_nli(tokenizer, items, max_length, n_attention):
    """Premise and hypothesis as two sequences; views premise (0), hypothesis (1)."""
    texts = [item["premise"] for item in items] + [item["hypothesis"] for item in items]
    encoded, n_cut = _encode_texts(tokenizer, texts, max_length)
    n = len(items)
    sequences = []
    for i in range(n):
        for view in (0, 1):
            ids, types, positions = encoded[i + view * n]
            seq = _Sequence(ids, types, [(view, i, positions)])
            if i < n_attention:
                seq.attention_k = 2 * i + view  # premise first, then hypothesis
            sequences.append(seq)
    extra = {"n_truncated_sequences": n_cut, "pair_separator": None}
    return sequences, [item.get("label") for item in items], extra


def _plan_ner(tokenizer, items, max_length, n_attention, pooling: str = "mean"):
    """One sequence per sentence; each kept word pools its first, last or all sub-words."""
    words = [list(item["tokens"]) for item in items]
    full = encode_words(tokenizer, words, None)
    long = [i for i in range(len(items)) if len(full["input_ids"][i]) > max_length]
    cut = encode_words(tokenizer, [words[i] for i in long], max_length) if long else None
    where = {i: j for j, i in enumerate(long)}

    sequences, labels, word_item, word_position, word_text = [], [], [], [], []
    n_lost = n_empty = 0
    for i, item in enumerate(items):
        n_words = len(words[i])
        full_ids = word_index(full, i)
        counts = np.bincount([w for w in full_ids if w is not None], minlength=n_words)
        enc, k = (cut, where[i]) if i in where else (full, i)
        ids = enc["input_ids"][k]
        types = enc["token_type_ids"][k] if "token_type_ids" in enc else None
        positions: dict[int, list[int]] = {}
        for t, w in enumerate(word_index(enc, k)):
            if w is not None:
                positions.setdefault(w, []).append(t)
        seq = _Sequence(ids, types, attention_k=i if i < n_attention else -1)
        for w in range(n_words):
            kept = positions.get(w, [])
            if counts[w] == 0:
                n_empty += 1  # the tokenizer gives this word no token at all
                continue
            if len(kept) != counts[w]:
                n_lost += 1  # cut (fully or partly) by truncation at max_length
                continue
            chosen = {"first": kept[:1], "last": kept[-1:], "mean": kept}[pooling]
            seq.groups.append((0, len(labels), chosen))
            labels.append(item["tags"][w])
            word_item.append(i)
            word_position.append(w)
            word_text.append(words[i][w])
        sequences.append(seq)
    extra = {
        "word_item": word_item,
        "word_position": word_position,
        # The word strings, so a control task can give each word type a fixed label.
        "words": word_text,
        "n_truncated_sequences": len(long),
        "n_words_lost": n_lost,
        "n_words_without_tokens": n_empty,
        # Tokenizers without a fast backend: sentences whose pieces could not be mapped back to
        # the words in context, so they were tokenised word by word.
        "n_sentences_word_by_word": getattr(full, "n_word_by_word", 0),
    }
    return sequences, labels, extra


def _pooling_note(task: str, settings: ExtractSettings) -> str:
    if task == "ner":
        return {
            "first": "first sub-word of each word",
            "last": "last sub-word of each word",
            "mean": "mean of each word's sub-words",
        }[settings.ner_pooling]
    if settings.nli_view == "pair":
        return (
            "one sequence per pair: cls = the token the classification head reads; premise, "
            "hypothesis = mean over each segment's own tokens"
        )
    return "premise and hypothesis apart: mean over real non-special tokens"


def _batches(sequences: list[_Sequence], batch_size: int) -> list[list[int]]:
    """Attention sequences first, then the rest; each part sorted longest first so that similar
    lengths share a batch (little padding) and an out-of-memory batch shows up at once."""
    att = [i for i, s in enumerate(sequences) if s.attention_k >= 0]
    rest = [i for i, s in enumerate(sequences) if s.attention_k < 0]
    batches = []
    for part in (att, rest):
        part = sorted(part, key=lambda i: -len(sequences[i].input_ids))
        batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    return batches


def _collate(batch: list[_Sequence], pad_id: int, left: bool, device):
    width = max(len(s.input_ids) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    types = None
    if batch[0].token_type_ids is not None:
        types = torch.zeros((len(batch), width), dtype=torch.long)
    starts = []
    for b, seq in enumerate(batch):
        n = len(seq.input_ids)
        start = width - n if left else 0
        starts.append(start)
        ids[b, start : start + n] = torch.tensor(seq.input_ids)
        mask[b, start : start + n] = 1
        if types is not None:
            types[b, start : start + n] = torch.tensor(seq.token_type_ids)
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if types is not None:
        inputs["token_type_ids"] = types.to(device)
    if left:
        inputs["position_ids"] = real_token_positions(mask).to(device)
    return inputs, starts, width


def run_extract(
    task: str,
    model_dir: str | Path,
    items: list[dict],
    out_dir: str | Path,
    settings: ExtractSettings | Mapping | None = None,
    loaded: LoadedModel | None = None,
) -> dict:
    """Encode ``items`` with the model in ``model_dir`` and write the hidden-state cache.

    Parameters
    ----------
    task
        ``"nli"`` or ``"ner"``.
    model_dir
        A model folder written by :func:`finescope.models.materialize_model` (or fine-tuning).
    items
        Canonical items of the task (already capped by the caller), in the order to store.
    out_dir
        The cache folder; written under a temporary name and renamed when complete.
    settings
        :class:`~finescope.settings.extract.ExtractSettings` (a mapping of some of its fields
        is built into one): ``max_length`` is capped by the tokenizer and the model's position
        table, ``dtype`` is the storage of vectors and attention maps, ``attention_items`` the
        number of items whose maps are kept, ``random_init`` re-initialises the weights under
        ``seed``. The item cap is the caller's (``items`` are stored as given).
    loaded
        The model of ``model_dir`` from :func:`load_for_extraction`, loaded under the same
        settings but for those of :data:`_PER_CACHE` (None: loaded here).

    Returns
    -------
    dict
        ``meta.json`` without its per-item lists (ids, labels, word alignment, attention
        lengths and offsets).
    """
    settings = ExtractSettings.build(settings)
    _check_items(task, items)
    model_dir = Path(model_dir)
    out_dir = Path(out_dir)
    started = time.perf_counter()

    n_attention = min(int(settings.attention_items), len(items))
    if loaded is not None:
        _check_same_model(loaded, settings)
        if not _use_attention(loaded, n_attention > 0):
            loaded = None  # it cannot switch kernels once loaded: load it for this cache
    load_seconds = 0.0
    if loaded is None:
        loaded = load_for_extraction(task, model_dir, settings, need_attention=n_attention > 0)
        load_seconds = loaded.load_seconds
    tokenizer, model, device = loaded.tokenizer, loaded.model, loaded.device
    decoder = is_decoder(model.config)

    # The same cap as fine-tuning: the tokenizer's limit and the model's position table.
    max_length = effective_max_length(model, tokenizer, int(settings.max_length))
    if task == "nli" and settings.nli_view == "pair":
        sequences, labels, extra = _plan_pairs(
            tokenizer,
            items,
            max_length,
            n_attention,
            decoder=decoder,
            token_type_ids=uses_token_type_ids(model),
        )
    elif task == "nli":
        sequences, labels, extra = _plan_nli(tokenizer, items, max_length, n_attention)
    else:
        sequences, labels, extra = _plan_ner(
            tokenizer, items, max_length, n_attention, settings.ner_pooling
        )
    views = VIEWS[settings.nli_view if task == "nli" else "ner"]
    n_rows = len(items) if task == "nli" else len(labels)
    text_config = _text_config(model.config)
    n_layers = int(text_config.num_hidden_layers) + 1
    width = int(text_config.hidden_size)
    n_heads = int(text_config.num_attention_heads)
    n_blocks = n_layers - 1
    dtype = DTYPES[settings.dtype]

    att_seqs = sorted((s for s in sequences if s.attention_k >= 0), key=lambda s: s.attention_k)
    lengths = [len(s.input_ids) for s in att_seqs]
    offsets = np.concatenate([[0], np.cumsum([n_blocks * n_heads * t * t for t in lengths])])
    offsets = [int(o) for o in offsets]

    batches = _batches(sequences, int(settings.batch_size))
    left = settings.padding_side == "left"
    pad_id = tokenizer.pad_token_id
    autocast = bool(settings.bf16_autocast) and device.type == "cuda"
    forward_passes = n_tokens = n_clipped = 0
    forward_seconds = 0.0

    with atomic_path(out_dir, is_dir=True) as tmp:
        arrays = [
            np.lib.format.open_memmap(
                tmp / f"{view}.npy", mode="w+", dtype=dtype, shape=(n_layers, n_rows, width)
            )
            for view in views
        ]
        att_store = None
        if att_seqs:
            att_store = np.lib.format.open_memmap(
                tmp / "attention.npy", mode="w+", dtype=dtype, shape=(offsets[-1],)
            )
        bar = Progress(f"extract {task}", len(batches), "batch")
        for batch_index in batches:
            batch = [sequences[i] for i in batch_index]
            want_att = any(s.attention_k >= 0 for s in batch)
            inputs, starts, seq_width = _collate(batch, pad_id, left, device)
            tick = time.perf_counter()
            with (
                torch.inference_mode(),
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast),
            ):
                out = model(**inputs, output_hidden_states=True, output_attentions=want_att)
            forward_passes += 1
            hidden = out.hidden_states
            if len(hidden) != n_layers:
                raise FinescopeError(
                    f"extract: model {model_dir} returned {len(hidden)} hidden states, expected "
                    f"{n_layers} (embeddings + {n_blocks} blocks); this architecture is not "
                    "supported"
                )
            forward_seconds += time.perf_counter() - tick
            n_tokens += sum(len(s.input_ids) for s in batch)
            bar.update(1, tokens=sum(len(s.input_ids) for s in batch))

            # Mean-pool every group in one scatter-add: token (b, t) adds into its group.
            token_flat, token_group, group_size = [], [], []
            group_view, group_row = [], []
            for b, seq in enumerate(batch):
                for view, row, positions in seq.groups:
                    g = len(group_size)
                    token_flat += [b * seq_width + starts[b] + t for t in positions]
                    token_group += [g] * len(positions)
                    group_size.append(len(positions))
                    group_view.append(view)
                    group_row.append(row)
            # Layer by layer, so only the pooled tokens are ever copied out of the model output.
            tokens = torch.tensor(token_flat, device=device)
            groups = torch.tensor(token_group, device=device)
            pooled = torch.zeros((n_layers, len(group_size), width), device=device)
            for layer, states in enumerate(hidden):
                picked = states.reshape(-1, width).index_select(0, tokens)
                pooled[layer].index_add_(0, groups, picked.float())
            pooled /= torch.tensor(group_size, device=device, dtype=pooled.dtype)[:, None]
            pooled = pooled.cpu().numpy()
            group_view = np.asarray(group_view)
            group_row = np.asarray(group_row)
            for v, array in enumerate(arrays):
                sel = np.flatnonzero(group_view == v)
                if sel.size:
                    values, over = to_storage(pooled[:, sel], dtype)
                    n_clipped += over
                    array[:, group_row[sel]] = values
                    release_pages(array)

            if want_att:
                att = out.attentions
                if att is None or len(att) != n_blocks or att[0].shape[1] != n_heads:
                    raise FinescopeError(
                        f"extract: model {model_dir} did not return {n_blocks} blocks x "
                        f"{n_heads} heads of attention maps; set extract.attention_items: 0 "
                        "for this model"
                    )
                for b, seq in enumerate(batch):
                    if seq.attention_k < 0:
                        continue
                    s, n = starts[b], len(seq.input_ids)
                    maps = torch.stack([a[b, :, s : s + n, s : s + n] for a in att])
                    o = offsets[seq.attention_k]
                    att_store[o : o + maps.numel()] = maps.float().cpu().numpy().ravel()
                release_pages(att_store)
            del out, hidden, pooled

        for array in [*arrays, att_store]:
            if array is not None:
                array.flush()
        del arrays, att_store
        seconds = time.perf_counter() - started
        meta = {
            "task": task,
            "n_layers": n_layers,
            "width": width,
            "dtype": settings.dtype,
            "views": views,
            "ids": [str(item["id"]) for item in items],
            "labels": labels,
            "n_items": len(items),
            "n_rows": n_rows,
            "forward_passes": forward_passes,
            "n_batches": len(batches),
            "model_dir": str(model_dir.resolve()),
            "model_type": model.config.model_type,
            "decoder": decoder,
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "device": str(device),
            "max_length": max_length,
            "pooling": _pooling_note(task, settings),
            **(
                {"nli_view": settings.nli_view}
                if task == "nli"
                else {"ner_pooling": settings.ner_pooling}
            ),
            "attention": {
                "n_sequences": len(att_seqs),
                "n_items": n_attention,
                "n_blocks": n_blocks,
                "n_heads": n_heads,
                "lengths": lengths,
                "offsets": offsets[:-1],
                # Token strings of each stored map, for drawing it.
                "tokens": [tokenizer.convert_ids_to_tokens(s.input_ids) for s in att_seqs],
            }
            if att_seqs
            else None,
            "n_clipped_float16": n_clipped,
            "n_tokens": n_tokens,
            "seconds": round(seconds, 3),
            "load_seconds": round(load_seconds, 3),
            "forward_seconds": round(forward_seconds, 3),
            "tokens_per_second": round(n_tokens / seconds, 1) if seconds > 0 else None,
            "settings": settings.model_settings,
            **extra,
        }
        write_json(tmp / "meta.json", meta)
    per_item = {"ids", "labels", "word_item", "word_position", "words"}
    summary = {k: v for k, v in meta.items() if k not in per_item}
    if summary["attention"]:
        summary["attention"] = {
            k: v
            for k, v in summary["attention"].items()
            if k not in ("lengths", "offsets", "tokens")
        }
    return summary


def _check_same_model(loaded: LoadedModel, settings: ExtractSettings) -> None:
    differ = sorted(
        f.name
        for f in dataclasses.fields(settings)
        if f.name not in _PER_CACHE
        and getattr(settings, f.name) != getattr(loaded.settings, f.name)
    )
    if differ:
        raise FinescopeError(
            f"extract: the loaded model does not serve these settings ({', '.join(differ)} "
            "differ); load it again for them"
        )


def extract_job(
    task: str,
    model_dir: str,
    data_paths: Mapping[str, str],
    out_dirs: Mapping[str, str],
    settings: Mapping[str, ExtractSettings | Mapping],
) -> None:
    """The ``extract`` job of one grid point: a hidden-state cache per split (the probe pool and
    the capped test items; keys of ``out_dirs``), from one model loaded once for all of them.

    The model is loaded with the library's default attention kernels and switched to the eager
    ones for a cache with attention maps, so each cache is what a job of its own would write
    (one import and load per grid point: most of a small model's extraction time)."""
    loaded, lines = None, []
    for split, out_dir in out_dirs.items():
        split_settings = ExtractSettings.build(settings[split])
        items = probe_items(
            io.read_jsonl(data_paths[split]), split_settings.max_items, split_settings.item_seed
        )
        if loaded is None:
            loaded = load_for_extraction(task, model_dir, split_settings)
            job.log.info("loaded %s in %.1f s", model_dir, loaded.load_seconds)
        info = run_extract(task, model_dir, items, Path(out_dir), split_settings, loaded)
        job.log.info("extracted %d %s items: %s", len(items), split, info)
        _warn_truncation(task, split, info)
        lines.append(f"{split} {len(items)} items")
    job.headline(f"{', '.join(lines)} x {info.get('n_layers')} layers")


def _warn_truncation(task: str, split: str, info: dict) -> None:
    """A warning (it reaches the summary) when extract.max_length cut the input."""
    cut = info.get("n_truncated_sequences") or 0
    if not cut:
        return
    if task == "ner":
        job.log.warning(
            "extract.max_length=%d cut %d of %d %s sentences: %d words lost, left out of the "
            "probes; raise extract.max_length to keep them",
            info["max_length"],
            cut,
            info["n_items"],
            split,
            info.get("n_words_lost") or 0,
        )
    else:
        job.log.warning(
            "extract.max_length=%d cut %d of %d %s sequences: the text beyond it is not seen; "
            "raise extract.max_length to keep it",
            info["max_length"],
            cut,
            # The separate view encodes premise and hypothesis as two sequences.
            info["n_items"] * (2 if info.get("nli_view") == "separate" else 1),
            split,
        )
