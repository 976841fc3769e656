"""Control tasks: selectivity labels and hypothesis-only baselines."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

import numpy as np

from finescope.errors import FinescopeError

# Function words skipped when taking a hypothesis's first content word (fixed: changing it
# changes the NLI control task).
STOP_WORDS = frozenset(
    """a an the this that these those some any all each every no not
    is are was were be been being am has have had do does did will would can could
    there here it its he she they we i you his her their our my your him them us
    of in on at to for with by from as into over under about and or but if then so""".split()
)


def _key_uniform(seed: int, key: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, key), the same in every process."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def selectivity_control_labels(keys: Sequence[str], label_pool: Sequence, seed: int) -> np.ndarray:
    """Control-task labels (Hewitt & Liang, 2019): one fixed random label per distinct key.

    Each distinct key draws its label from the empirical distribution of ``label_pool``, using
    a uniform number hashed from ``(seed, key)``: the same key always gets the same label, in
    the train and the test split alike and whatever other keys are present, so every grid
    point sees the same control task. Keys are used as given (the caller lower-cases words).

    Parameters
    ----------
    keys
        One key per row, shape (N,): the lower-cased word (NER) or the hypothesis type
        (NLI, :func:`hypothesis_type`).
    label_pool
        Task labels whose empirical distribution is sampled (the training labels), shape (M,).
    seed
        Control-task seed.

    Returns
    -------
    Control labels, shape (N,), drawn from the values of ``label_pool``.
    """
    classes, counts = np.unique(np.asarray(label_pool), return_counts=True)
    if len(classes) == 0:
        raise FinescopeError("selectivity control: the label pool is empty")
    cdf = np.cumsum(counts) / counts.sum()
    table: dict[str, int] = {}
    codes = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        key = str(key)
        if key not in table:
            u = _key_uniform(seed, key)
            table[key] = min(int(np.searchsorted(cdf, u, side="right")), len(classes) - 1)
        codes[i] = table[key]
    return classes[codes]


def hypothesis_type(text: str) -> str:
    """Lexical type of an NLI hypothesis, the key of its control label: its first content word.

    The text is split on whitespace; each word is lower-cased and reduced to its letters
    (``"IL-2"`` -> ``"il"``, ``"dog's"`` -> ``"dogs"``). The type is the first such word that
    is not empty and not in :data:`STOP_WORDS`; if every word is a stop word, the first
    non-empty one; if no word has a letter, the first whitespace word, lower-cased (``""``
    for an empty text).

    Examples
    --------
    ``"A man is sleeping."`` -> ``"man"``; ``"It is not."`` -> ``"it"``; ``"42 !"`` -> ``"42"``.
    """
    words = str(text).lower().split()
    letters = [w for w in ("".join(ch for ch in word if ch.isalpha()) for word in words) if w]
    for word in letters:
        if word not in STOP_WORDS:
            return word
    if letters:
        return letters[0]
    return words[0] if words else ""


def control_coverage(keys: Sequence[str], train_keys: Iterable[str]) -> float:
    """Share of ``keys`` that occur among ``train_keys`` (nan for no keys): the scored items
    whose control label a probe could have memorised."""
    keys = [str(k) for k in keys]
    if not keys:
        return math.nan
    seen = {str(k) for k in train_keys}
    return float(np.mean([k in seen for k in keys]))
