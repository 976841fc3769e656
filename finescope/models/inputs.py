"""What a model's forward takes and how long its inputs may be: facts of the loaded model that
fine-tuning and extraction both need (kept here so extraction does not import fine-tuning)."""

from __future__ import annotations

import inspect
import logging

from finescope.models.loading import is_decoder

logger = logging.getLogger("finescope.models")


def unwrap(model):
    """The transformers model under a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def forward_params(model) -> set[str]:
    """Names of the arguments the model's forward takes."""
    return set(inspect.signature(unwrap(model).forward).parameters)


def uses_token_type_ids(model) -> bool:
    """Whether ``model`` is given segment ids: encoders whose forward takes them (decoders such
    as GPT-2 accept them too, but were not trained with them)."""
    config = unwrap(model).config
    return (
        not is_decoder(config)
        and "token_type_ids" in forward_params(model)
        and getattr(config, "type_vocab_size", 0) > 0
    )


def uses_position_ids(model) -> bool:
    """Whether batches give explicit position ids (decoders that take them)."""
    # Decoders number positions from the first column, so with left padding the real tokens
    # would sit at shifted positions; explicit ids make both padding sides give the same result.
    return is_decoder(unwrap(model).config) and "position_ids" in forward_params(model)


def extra_inputs(model) -> dict:
    """Fixed forward arguments: no key-value cache for decoders (nothing is generated)."""
    params = forward_params(model)
    return (
        {"use_cache": False} if is_decoder(unwrap(model).config) and "use_cache" in params else {}
    )


def effective_max_length(model, tokenizer, max_length: int) -> int:
    """``max_length`` capped at what the model's position embeddings and tokenizer allow.

    Returns
    -------
    int
        The truncation length in tokens.
    """
    config = unwrap(model).config
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
