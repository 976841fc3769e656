"""Probe settings: the probe families, their schema defaults and checks."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from finescope import columns
from finescope.errors import FinescopeError
from finescope.settings import defaults

log = logging.getLogger("finescope.probe")

PROBES = ("linear", "mlp", "svm", "bilstm_crf")
# Probes that read sequences of word vectors and so only apply to NER.
SEQUENCE_PROBES = frozenset({"bilstm_crf"})
# Probes whose C may be a list, chosen per layer on probe-dev.
C_PROBES = ("linear", "svm")
# Probes whose per-item probabilities the online code can use.
MDL_PROBES = ("linear", "mlp")
# Voita & Titov (2020) block boundaries, in percent of the probe training set.
MDL_PORTIONS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.25, 12.5, 25.0, 50.0, 100.0)
# L2 strengths the online code's linear probe chooses from at every block.
MDL_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
COLUMNS = columns.PROBING
NLI_VIEWS = ("premise", "hypothesis")
NLI_LAYOUTS = ("pair", "separate")
NLI_FEATURES = {
    "cls": ("cls",),
    "segments": ("premise", "hypothesis"),
    "cls_segments": ("cls", "premise", "hypothesis"),
}
NLI_CONTROLS = ("lexical", "none")
NER_VIEW = "word"
NER_OUTSIDE = "O"
# Function words skipped when taking a hypothesis's first content word (fixed: changing it
# changes the NLI control task).
STOP_WORDS = frozenset(
    """a an the this that these those some any all each every no not
    is are was were be been being am has have had do does did will would can could
    there here it its he she they we i you his her their our my your him them us
    of in on at to for with by from as into over under about and or but if then so""".split()
)
# Largest finite float16: an overflowed half-precision activation is clipped back to it.
_FP16_MAX = float(np.finfo(np.float16).max)

# The config block's defaults (from the schema, their one home; C: a number, or a list searched
# per layer on probe-dev macro-F1) and the keys only a job sets: optional caps (None = off) on
# probe-train and test items (probe-dev is never capped) and the worker count.
DEFAULT_SETTINGS: dict[str, Any] = {
    **{key: value for key, value in defaults("probe").items() if key != "random_baseline"},
    "max_train_items": None,
    "max_test_items": None,
    "n_jobs": 1,
}
# Keys the workflow may pass that matter elsewhere, not here.
_IGNORED_KEYS = frozenset({"random_baseline"})


LINEAR_BACKENDS = ("torch", "sklearn")


def resolve_settings(settings: dict) -> dict:
    """``settings`` over :data:`DEFAULT_SETTINGS`, checked; errors name the config key.

    Parameters
    ----------
    settings
        Any subset of the keys of :data:`DEFAULT_SETTINGS` (nested dicts merge key by key).

    Returns
    -------
    A complete settings dict; ``mdl`` is normalised to ``{enabled, probe, portions, C_grid}``
    and a list ``linear.C`` / ``svm.C`` is sorted ascending, duplicates dropped.
    """
    if not isinstance(settings, dict):
        raise FinescopeError("config key probe: expected a mapping of probe settings")
    unknown = set(settings) - set(DEFAULT_SETTINGS) - _IGNORED_KEYS
    if unknown:
        raise FinescopeError(
            f"config key probe: unknown setting(s) {sorted(unknown)}; known: "
            f"{sorted(DEFAULT_SETTINGS)}"
        )
    out = copy.deepcopy(DEFAULT_SETTINGS)
    for key, value in settings.items():
        if key in _IGNORED_KEYS:
            continue
        if isinstance(out.get(key), dict):
            if not isinstance(value, dict):
                raise FinescopeError(f"config key probe.{key}: expected a mapping")
            extra = set(value) - set(out[key])
            if extra:
                raise FinescopeError(
                    f"config key probe.{key}: unknown setting(s) {sorted(extra)}; known: "
                    f"{sorted(out[key])}"
                )
            out[key].update(value)
        else:
            out[key] = copy.deepcopy(value)
    probes = out["probes"]
    if isinstance(probes, str) or not probes:
        raise FinescopeError("config key probe.probes: expected a non-empty list of probe names")
    for name in probes:
        if name not in PROBES:
            raise FinescopeError(
                f"config key probe.probes: unknown probe {name!r}; use some of {list(PROBES)}"
            )
    out["probes"] = list(dict.fromkeys(probes))
    for key in ("max_train_items", "max_test_items"):
        if out[key] is not None and (not isinstance(out[key], int) or out[key] < 1):
            raise FinescopeError(f"config key probe.{key}: expected a positive integer or null")
    if not isinstance(out["n_jobs"], int) or out["n_jobs"] == 0:
        raise FinescopeError("config key probe.n_jobs: expected a non-zero integer (-1 = all)")
    for key in C_PROBES:
        out[key]["C"] = _resolve_C(out[key]["C"], f"probe.{key}.C")
    if out["linear"]["backend"] not in LINEAR_BACKENDS:
        raise FinescopeError(
            f"config key probe.linear.backend: {out['linear']['backend']!r}; use one of "
            f"{list(LINEAR_BACKENDS)}"
        )
    if not out["bilstm_crf"]["lr"] > 0:
        raise FinescopeError("config key probe.bilstm_crf.lr: must be > 0")
    for key, allowed in (
        ("nli_features", tuple(["auto", *NLI_FEATURES])),
        ("nli_control", NLI_CONTROLS),
    ):
        if out[key] not in allowed:
            raise FinescopeError(
                f"config key probe.{key}: {out[key]!r}; use one of {list(allowed)}"
            )
    for key in ("nli_interactions", "selectivity"):
        if not isinstance(out[key], bool):
            raise FinescopeError(f"config key probe.{key}: expected true or false")
    out["mdl"] = _resolve_mdl(out["mdl"])
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _resolve_C(value: Any, key: str) -> float | list[float]:
    """A positive number, or a non-empty list of them (sorted, duplicates dropped)."""
    if isinstance(value, (list, tuple)):
        if not value or not all(_is_number(c) and c > 0 for c in value):
            raise FinescopeError(f"config key {key}: expected a non-empty list of numbers > 0")
        return sorted({float(c) for c in value})
    if not _is_number(value) or not value > 0:
        raise FinescopeError(f"config key {key}: expected a number > 0 or a list of them")
    return value


def _resolve_mdl(mdl: Any) -> dict:
    if isinstance(mdl, bool):
        mdl = {"enabled": mdl}
    if not isinstance(mdl, dict) or set(mdl) - {"enabled", "probe", "portions", "C_grid"}:
        raise FinescopeError(
            "config key probe.mdl: expected true/false or {enabled, probe, portions, C_grid}"
        )
    out = {
        "enabled": True,
        "probe": "linear",
        "portions": list(MDL_PORTIONS),
        "C_grid": list(MDL_C_GRID),
        **mdl,
    }
    grid = out["C_grid"]
    if not grid or any(not isinstance(c, (int, float)) or c <= 0 for c in grid):
        raise FinescopeError("config key probe.mdl.C_grid: expected a list of positive numbers")
    if out["probe"] not in MDL_PROBES:
        raise FinescopeError(
            f"config key probe.mdl.probe: {out['probe']!r} gives no probabilities; "
            f"use one of {list(MDL_PROBES)}"
        )
    mdl_block_ends(1000, out["portions"])  # validates
    return out


def mdl_block_ends(n: int, portions: Sequence[float] = MDL_PORTIONS) -> list[int]:
    """End offsets of the online-code blocks over ``n`` items.

    The end of the block at portion ``p`` percent is ``floor(n * p / 100)`` clipped to
    ``[1, n]``; the last end is ``n``; repeated ends (empty blocks) are dropped.

    Parameters
    ----------
    n
        Number of items (>= 1).
    portions
        Increasing percentages in (0, 100], ending with 100.

    Returns
    -------
    Strictly increasing ends; the first block is ``[0, ends[0])``.
    """
    portions = [float(p) for p in portions]
    if (
        not portions
        or portions[-1] != 100.0
        or portions[0] <= 0
        or any(b <= a for a, b in zip(portions, portions[1:], strict=False))
    ):
        raise FinescopeError(
            f"config key probe.mdl.portions: {portions} must increase strictly from > 0 to 100"
        )
    if n < 1:
        raise FinescopeError("online code: no items to transmit")
    # The small epsilon keeps exact products (n * 6.25 / 100) from flooring one short.
    ends = [min(max(int(math.floor(n * p / 100 + 1e-9)), 1), n) for p in portions[:-1]] + [n]
    return list(dict.fromkeys(ends))
