"""Normalising grid coordinates: fractions, layers and heads as sortable strings."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from finescope.analysis.settings import AGGREGATES, RANDOM
from finescope.errors import FinescopeError


def normalize_fraction(value: Any, where: str = "fraction") -> str:
    """Return the canonical string form of a fraction: ``"0"`` .. ``"100"`` or ``"random"``.

    Parameters
    ----------
    value
        An int/float percent, its string form, or ``"random"``.
    where
        Where the value came from, for the error message.

    Returns
    -------
    str
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == RANDOM:
            return RANDOM
        try:
            number = float(text)
        except ValueError:
            number = math.nan
    elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        number = float(value)
    else:
        number = math.nan
    if not math.isfinite(number) or not 0 <= number <= 100:
        raise FinescopeError(
            f"{where}: fraction {value!r} is not a percent in 0..100 or 'random'; "
            "check the grid in config.yaml and the file that produced this row."
        )
    return str(int(number)) if number.is_integer() else f"{number:g}"


def fraction_number(value: Any) -> float:
    """Numeric percent of a fraction (``nan`` for the random baseline)."""
    text = normalize_fraction(value)
    return math.nan if text == RANDOM else float(text)


def fraction_sort_key(value: Any) -> tuple[int, float]:
    """Sort key putting the random baseline first, then fractions in increasing order."""
    text = normalize_fraction(value)
    return (0, 0.0) if text == RANDOM else (1, float(text))


def sorted_fractions(values: Iterable[Any]) -> list[str]:
    """Distinct fractions as canonical strings, random baseline first then increasing."""
    return sorted({normalize_fraction(v) for v in values}, key=fraction_sort_key)


def layer_sort_key(layer: Any) -> tuple[int, float]:
    """Sort key for correlation layers: numeric layers (and depth bins, NA) first, then the
    aggregates in order."""
    if layer is None or (isinstance(layer, float) and math.isnan(layer)) or layer is pd.NA:
        return (0, -1.0)
    text = str(layer)
    if text in AGGREGATES:
        return (1, float(AGGREGATES.index(text)))
    try:
        return (0, float(text))
    except ValueError:
        return (2, 0.0)


def _normalize_head(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "all"
    text = str(value).strip()
    if text.lower() == "all" or text == "":
        return "all"
    try:
        number = float(text)
    except ValueError as exc:
        raise FinescopeError(
            f"change table: head {value!r} is neither 'all' nor an integer head index; "
            "re-run the change stage for this grid point."
        ) from exc
    if not number.is_integer():
        raise FinescopeError(f"change table: head {value!r} is not an integer head index.")
    return str(int(number))
