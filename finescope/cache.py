"""The hidden-state cache on disk: its folder layout, the storage cast the writer
(:func:`finescope.extract.run_extract`) uses, and :class:`Cache`, the reader that probing, the
change measures and the figures share. Reading needs numpy only (no torch).

Layout of a cache folder (read by probing and by the change measures)::

    meta.json        what is stored and how it was made (see :func:`finescope.extract.run_extract`)
    cls.npy          NLI pair view: (n_layers, n_items, width), the token the classification
                     head reads, one per item
    premise.npy      NLI: (n_layers, n_items, width), one vector per premise
    hypothesis.npy   NLI: (n_layers, n_items, width), one per hypothesis
    word.npy         NER: (n_layers, n_words, width), one vector per word
    attention.npy    flat; sequence k is (n_blocks, n_heads, T_k, T_k) at meta offsets[k]

``meta.json`` names the stored ``views`` (pair: cls, premise, hypothesis; separate: premise,
hypothesis; NER: word) and records ``nli_view`` and ``pair_separator`` (NLI) or
``ner_pooling`` (NER).
"""

from __future__ import annotations

import math
import mmap
from pathlib import Path

import numpy as np

from finescope import io
from finescope.errors import FinescopeError
from finescope.io import read_json

DTYPES = {"float16": np.float16, "float32": np.float32}
FLOAT16_MAX = float(np.finfo(np.float16).max)
# Stored views per task and NLI view.
VIEWS = {
    "pair": ["cls", "premise", "hypothesis"],
    "separate": ["premise", "hypothesis"],
    "ner": ["word"],
}


def release_pages(array: np.memmap) -> None:
    """Unmap the pages written so far: they stay in the page cache (and reach the file), but no
    longer count towards this process's memory, which stays bounded by one batch."""
    mm = getattr(array, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def to_storage(values: np.ndarray, dtype) -> tuple[np.ndarray, int]:
    """Cast to the storage type; values beyond float16's range are clipped and counted."""
    if dtype is np.float16:
        over = int(np.count_nonzero(np.abs(values) > FLOAT16_MAX))
        if over:
            values = np.clip(values, -FLOAT16_MAX, FLOAT16_MAX)
        return values.astype(np.float16), over
    return values.astype(dtype, copy=False), 0


def _corrupt(path: Path, why: str) -> FinescopeError:
    return FinescopeError(f"corrupt cache at {path}: {why}; delete it and re-run")


class Cache:
    """Read access to a cache folder written by :func:`finescope.extract.run_extract`.

    Opening checks that ``meta.json`` is there and that every array has the shape and type it
    declares; layers and attention maps are then read one at a time through memory maps.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise _corrupt(self.path, "meta.json is missing")
        try:
            self.meta: dict = read_json(meta_path)
            self.n_layers = int(self.meta["n_layers"])
            self.width = int(self.meta["width"])
            self.views: list[str] = list(self.meta["views"])
            self.ids: list[str] = list(self.meta["ids"])
            self.labels: list = list(self.meta["labels"])
            dtype = np.dtype(DTYPES[self.meta["dtype"]])
        except (ValueError, KeyError, TypeError) as exc:
            raise _corrupt(self.path, f"meta.json is unreadable ({exc!r})") from exc
        n_rows = len(self.ids) if self.meta["task"] == "nli" else len(self.labels)
        for view in self.views:
            array = self._open(f"{view}.npy")
            expected = (self.n_layers, n_rows, self.width)
            if array.shape != expected or array.dtype != dtype:
                raise _corrupt(
                    self.path,
                    f"{view}.npy is {array.shape} {array.dtype}, meta.json says {expected} {dtype}",
                )
        att = self.meta.get("attention")
        self.n_attention = int(att["n_sequences"]) if att else 0
        if att:
            total = sum(att["n_blocks"] * att["n_heads"] * t * t for t in att["lengths"])
            array = self._open("attention.npy")
            if array.shape != (total,) or array.dtype != dtype:
                raise _corrupt(
                    self.path,
                    f"attention.npy is {array.shape} {array.dtype}, meta.json says ({total},) "
                    f"{dtype}",
                )

    def _open(self, name: str) -> np.memmap:
        file = self.path / name
        if not file.is_file():
            raise _corrupt(self.path, f"{name} is missing")
        try:
            return np.load(file, mmap_mode="r")
        except (ValueError, OSError, EOFError) as exc:
            raise _corrupt(self.path, f"{name} cannot be read ({exc})") from exc

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def nli_view(self) -> str | None:
        """``"pair"`` or ``"separate"`` for NLI caches (caches made before the pair view
        existed are separate), None for NER."""
        if self.task != "nli":
            return None
        return self.meta.get("nli_view", "separate")

    @property
    def n_rows(self) -> int:
        """Items (NLI) or words (NER) per view."""
        return len(self.ids) if self.task == "nli" else len(self.labels)

    def layer(self, view: str, layer: int) -> np.ndarray:
        """Vectors of one view at one layer, read from disk on demand.

        Returns
        -------
        np.ndarray
            ``(N, width)`` float32; N items (NLI) or words (NER).
        """
        if view not in self.views:
            raise FinescopeError(f"cache {self.path}: no view {view!r}; it has {self.views}")
        if not 0 <= layer < self.n_layers:
            raise FinescopeError(
                f"cache {self.path}: layer {layer} is outside 0..{self.n_layers - 1}"
            )
        array = self._open(f"{view}.npy")
        out = np.array(array[layer], dtype=np.float32)
        del array  # unmap: only this layer was touched
        return out

    def attention(self, k: int) -> np.ndarray:
        """Attention maps of stored sequence ``k`` over its real tokens.

        Returns
        -------
        np.ndarray
            ``(n_blocks, n_heads, T, T)`` float32, rows (queries) sum to 1.
        """
        att = self.meta.get("attention")
        if not att or not 0 <= k < att["n_sequences"]:
            raise FinescopeError(
                f"cache {self.path}: no attention sequence {k} (it stores {self.n_attention}); "
                "raise extract.attention_items"
            )
        t = att["lengths"][k]
        shape = (att["n_blocks"], att["n_heads"], t, t)
        start = att["offsets"][k]
        array = self._open("attention.npy")
        out = np.array(array[start : start + math.prod(shape)], dtype=np.float32).reshape(shape)
        del array
        return out


def truncation_counts(*caches: str | Path) -> dict[str, int | None]:
    """Words (NER) and sequences cut by extract.max_length in hidden-state caches, summed."""
    metas = [io.read_json(Path(c) / "meta.json") for c in caches]
    words = [m.get("n_words_lost") for m in metas]
    return {
        "words_truncated": sum(words) if all(w is not None for w in words) else None,
        "sequences_truncated": sum(int(m.get("n_truncated_sequences") or 0) for m in metas),
    }
