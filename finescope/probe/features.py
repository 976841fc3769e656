"""Reading caches into probe features: item selection, views and layer matrices."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finescope.cache import FLOAT16_MAX
from finescope.errors import FinescopeError
from finescope.probe.constants import NER_VIEW, NLI_LAYOUTS, NLI_VIEWS, log
from finescope.probe.controls import hypothesis_type
from finescope.probe_pool import cap_items
from finescope.settings.probe import NLI_FEATURES, ProbeSettings


def open_cache(path: str | Path) -> Any:
    """Open a hidden-state cache (a folder written by :func:`finescope.extract.run_extract`)."""
    from finescope.cache import Cache

    path = Path(path)
    if not (path / "meta.json").is_file():
        raise FinescopeError(
            f"{path}: not a hidden-state cache (no meta.json); run the extract stage first"
        )
    return Cache(path)


def merge_ner_tag(tag: str) -> str:
    """Entity type of an IOB2 (or IOB1/IOBES) tag: ``B-DNA`` / ``I-DNA`` -> ``DNA``; ``O``."""
    if len(tag) > 2 and tag[1] == "-" and tag[0] in "BIES":
        return tag[2:]
    return tag


@dataclass
class _Split:
    """Rows of one cache chosen for probing, with what each row needs."""

    rows: np.ndarray  # row indices into the cache's arrays, shape (n,)
    labels: np.ndarray  # probe labels, shape (n,)
    groups: np.ndarray | None  # sentence (item index) of each row (NER)
    keys: np.ndarray | None  # control-task key of each row (selectivity)
    control: np.ndarray | None = None  # control-task label of each row (selectivity)
    coverage: float = math.nan  # share of rows whose key occurs in probe-train (NLI control)


@dataclass(frozen=True)
class FeatureSpec:
    """What a probe reads: the views concatenated, in order, and the NLI interaction terms."""

    name: str  # the ``features`` column, e.g. "cls+premise+hypothesis", "word:last"
    views: tuple[str, ...]
    interactions: bool = False

    @property
    def needed_views(self) -> tuple[str, ...]:
        extra = NLI_VIEWS if self.interactions else ()
        return tuple(dict.fromkeys((*self.views, *extra)))


def sample_item_indices(ids: Sequence[str], max_items: int | None, seed: int) -> np.ndarray:
    """Sorted indices into ``ids`` of the items kept under a cap (see
    :func:`finescope.probe_pool.cap_items`, the workflow's item cap)."""
    try:
        return np.asarray(cap_items(ids, max_items, seed), dtype=np.int64)
    except FinescopeError as exc:
        raise FinescopeError(f"cache meta.json: {exc}") from None


def nli_layout(meta: dict, path: str | Path = "cache") -> str:
    """``"pair"`` or ``"separate"``: how an NLI cache was encoded (absent = separate)."""
    layout = meta.get("nli_view") or "separate"
    if layout not in NLI_LAYOUTS:
        raise FinescopeError(
            f"{path}/meta.json: nli_view {layout!r}; expected one of {list(NLI_LAYOUTS)}"
        )
    return layout


def resolve_features(
    task: str, meta: dict, settings: ProbeSettings | Mapping | None = None
) -> FeatureSpec:
    """The features probed for a cache, from its meta and the settings.

    Parameters
    ----------
    task
        ``"nli"`` or ``"ner"``.
    meta
        The cache's ``meta.json`` (``nli_view``, ``ner_pooling`` are read; absent = separate
        and mean).
    settings
        :class:`ProbeSettings` or a mapping of some of its keys (``nli_features``,
        ``nli_interactions`` are read).

    Returns
    -------
    The :class:`FeatureSpec`; its ``name`` is the ``features`` column of the output.
    """
    s = ProbeSettings.build(settings)
    if task == "ner":
        return FeatureSpec(f"{NER_VIEW}:{meta.get('ner_pooling') or 'mean'}", (NER_VIEW,))
    layout = nli_layout(meta)
    mode = s.nli_features
    if mode == "auto":
        mode = "cls_segments" if layout == "pair" else "segments"
    views = NLI_FEATURES[mode]
    if "cls" in views and layout != "pair":
        raise FinescopeError(
            f"config key probe.nli_features: {mode!r} reads the 'cls' view, which only pair "
            "caches store (extract.nli_view: pair); use segments or auto for separate caches"
        )
    name = "+".join(views) + ("+|u-v|+u*v" if s.nli_interactions else "")
    return FeatureSpec(name, views, s.nli_interactions)


def _item_ids(cache: Any, path: Path) -> list[str]:
    ids = [str(i) for i in cache.ids]
    if len(set(ids)) != len(ids):
        raise FinescopeError(f"{path}/meta.json: item ids are not unique")
    return ids


def _hypothesis_keys(
    cache: Any, path: Path, items: np.ndarray, given: Mapping | Sequence | None, arg: str
) -> np.ndarray:
    """Hypothesis type of each chosen item: texts from ``given`` (by id or in cache order) or
    from ``meta["hypotheses"]``."""
    ids = _item_ids(cache, path)
    texts = cache.meta.get("hypotheses") if given is None else given
    if texts is None:
        raise FinescopeError(
            f"{path}: the lexical NLI control needs the hypothesis texts; pass {arg} (id -> "
            "hypothesis), or set probe.nli_control: none or probe.selectivity: false"
        )
    if isinstance(texts, Mapping):
        missing = [ids[i] for i in items if ids[i] not in texts]
        if missing:
            raise FinescopeError(
                f"{path}: {arg} lacks the hypothesis of {len(missing)} cached item(s), "
                f"e.g. {missing[:3]}"
            )
        return np.asarray([hypothesis_type(texts[ids[i]]) for i in items], dtype=object)
    if len(texts) != len(ids):
        raise FinescopeError(f"{path}: {len(texts)} hypotheses for {len(ids)} cached items")
    return np.asarray([hypothesis_type(texts[i]) for i in items], dtype=object)


def _select(
    task: str,
    cache: Any,
    path: Path,
    items: np.ndarray,
    control: bool,
    words: Sequence[str] | None,
    hypotheses: Mapping | Sequence | None,
    arg: str,
) -> _Split:
    """The rows of ``items`` (item indices into the cache), their labels and control keys."""
    labels = np.asarray([str(label) for label in cache.labels])
    if task == "nli":
        if len(labels) != len(cache.ids):
            raise FinescopeError(
                f"{path}/meta.json: {len(labels)} labels for {len(cache.ids)} items"
            )
        keys = (
            _hypothesis_keys(cache, path, items, hypotheses, f"{arg}_hypotheses")
            if control
            else None
        )
        return _Split(items, labels[items], None, keys)
    word_item = cache.meta.get("word_item")
    if word_item is None:
        raise FinescopeError(
            f"{path}/meta.json: NER cache without 'word_item'; re-run the extract stage"
        )
    word_item = np.asarray(word_item, dtype=np.int64)
    if len(word_item) != len(labels):
        raise FinescopeError(
            f"{path}/meta.json: {len(labels)} word labels but {len(word_item)} word_item entries"
        )
    if len(word_item) and (word_item.min() < 0 or word_item.max() >= len(cache.ids)):
        raise FinescopeError(f"{path}/meta.json: word_item points outside the item list")
    rows = np.flatnonzero(np.isin(word_item, items))
    merged = np.asarray([merge_ner_tag(tag) for tag in labels[rows]])
    keys = None
    if control:
        words = cache.meta.get("words") if words is None else words
        if words is None:
            raise FinescopeError(
                f"{path}/meta.json: NER selectivity needs the word strings (meta 'words'); "
                f"re-run extract, pass {arg}_words, or set probe.selectivity: false"
            )
        if len(words) != len(labels):
            raise FinescopeError(f"{path}: {len(words)} words for {len(labels)} word labels")
        keys = np.asarray([str(words[r]).lower() for r in rows])
    return _Split(rows, merged, word_item[rows], keys)


def _check_caches(
    task: str, probe: Any, test: Any, paths: tuple[Path, Path], settings: ProbeSettings
) -> FeatureSpec:
    """Both caches fit the task and each other; the features they are probed on."""
    for cache, path in zip((probe, test), paths, strict=True):
        cached_task = cache.meta.get("task", task)
        if cached_task != task:
            raise FinescopeError(f"{path}/meta.json: a {cached_task} cache given for task {task}")
    for key in ("n_layers", "width"):
        if probe.meta.get(key) != test.meta.get(key):
            raise FinescopeError(
                f"{paths[0]} and {paths[1]}: meta.json {key} differs "
                f"({probe.meta.get(key)} vs {test.meta.get(key)}); extract both from one model"
            )
    if task == "nli":
        layouts = [nli_layout(c.meta, p) for c, p in zip((probe, test), paths, strict=True)]
        if layouts[0] != layouts[1]:
            raise FinescopeError(
                f"{paths[0]} and {paths[1]}: meta.json nli_view differs ({layouts[0]} vs "
                f"{layouts[1]}); extract both with the same extract.nli_view"
            )
    specs = [resolve_features(task, c.meta, settings) for c in (probe, test)]
    if specs[0] != specs[1]:
        raise FinescopeError(
            f"{paths[0]} and {paths[1]}: meta.json ner_pooling differs ({specs[0].name} vs "
            f"{specs[1].name}); extract both with the same extract.ner_pooling"
        )
    spec = specs[0]
    for cache, path in zip((probe, test), paths, strict=True):
        stored = cache.meta.get("views", spec.needed_views)
        missing = [v for v in spec.needed_views if v not in stored]
        if missing:
            raise FinescopeError(
                f"{path}/meta.json: views {missing} missing for task {task} with features "
                f"{spec.name}"
            )
    return spec


def _view_matrix(cache: Any, view: str, layer: int, rows: np.ndarray) -> np.ndarray:
    X = np.asarray(cache.layer(view, layer)[rows], dtype=np.float32)
    if not np.isfinite(X).all():
        if np.isnan(X).any():
            raise FinescopeError(
                f"cache {getattr(cache, 'path', '')}: layer {layer} holds NaN hidden states; "
                "delete the cache and re-extract (extract.dtype: float32 if it recurs)"
            )
        # float16 overflow of very large activations: keep them, at the largest half value.
        log.warning("layer %d: infinite hidden states clipped to +-%g", layer, FLOAT16_MAX)
        X = np.clip(X, -FLOAT16_MAX, FLOAT16_MAX)
    return X


def layer_features(cache: Any, layer: int, rows: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The feature matrix of one layer: ``spec.views`` side by side, then ``|u-v|`` and
    ``u*v`` of the premise (u) and hypothesis (v) vectors if ``spec.interactions``.

    Parameters
    ----------
    cache
        An open cache (:func:`open_cache`).
    layer
        Layer index.
    rows
        Row indices into the cache's arrays, shape (n,).
    spec
        From :func:`resolve_features`.

    Returns
    -------
    float32 array of shape (n, width * (len(spec.views) + 2 * spec.interactions)).
    """
    parts = [_view_matrix(cache, view, layer, rows) for view in spec.views]
    if spec.interactions:
        u, v = (_view_matrix(cache, view, layer, rows) for view in NLI_VIEWS)
        parts += [np.abs(u - v), u * v]
    return np.concatenate(parts, axis=1)
