"""Encoding inputs the same way for every stage: words with their word index, and sentence pairs."""

from __future__ import annotations

from dataclasses import dataclass

import transformers

from finescope.errors import FinescopeError


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


def encode_item_pairs(
    tokenizer, items: list[dict], max_length: int, *, decoder: bool, token_type_ids: bool
) -> list[PairEncoding]:
    """:func:`encode_pairs` of NLI items (their ``premise`` and ``hypothesis`` fields)."""
    return encode_pairs(
        tokenizer,
        [item["premise"] for item in items],
        [item["hypothesis"] for item in items],
        max_length,
        decoder=decoder,
        token_type_ids=token_type_ids,
    )


def real_token_positions(attention_mask):
    """``position_ids`` counted over real tokens only (0 at the first one; padding gets 0), so a
    left-padded decoder sees the same positions as an unpadded one."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
