"""Probe settings: the probe families, the typed settings of the ``probe`` config block and
their checks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from finescope.errors import FinescopeError
from finescope.settings import QUIET, Settings, schema_default

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
NLI_FEATURES = {
    "cls": ("cls",),
    "segments": ("premise", "hypothesis"),
    "cls_segments": ("cls", "premise", "hypothesis"),
}
NLI_CONTROLS = ("lexical", "none")

LINEAR_BACKENDS = ("torch", "sklearn")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _resolve_C(value: Any, key: str) -> float | tuple[float, ...]:
    """A positive number, or a non-empty list of them (sorted, duplicates dropped)."""
    if isinstance(value, (list, tuple)):
        if not value or not all(_is_number(c) and c > 0 for c in value):
            raise FinescopeError(f"config key {key}: expected a non-empty list of numbers > 0")
        return tuple(sorted({float(c) for c in value}))
    if not _is_number(value) or not value > 0:
        raise FinescopeError(f"config key {key}: expected a number > 0 or a list of them")
    return value


@dataclass(frozen=True)
class LinearSettings(Settings):
    """``probe.linear``: C (a number, or a list searched per layer on probe-dev macro-F1)."""

    KEY: ClassVar[str] = "probe.linear"

    C: float | tuple[float, ...] = schema_default("probe.linear.C")
    max_iter: int = schema_default("probe.linear.max_iter")
    backend: str = schema_default("probe.linear.backend")

    def __post_init__(self) -> None:
        self._set("C", _resolve_C(self.C, "probe.linear.C"))
        if self.backend not in LINEAR_BACKENDS:
            raise FinescopeError(
                f"config key probe.linear.backend: {self.backend!r}; use one of "
                f"{list(LINEAR_BACKENDS)}"
            )


@dataclass(frozen=True)
class MlpSettings(Settings):
    """``probe.mlp``: one hidden layer."""

    KEY: ClassVar[str] = "probe.mlp"

    hidden: int = schema_default("probe.mlp.hidden")
    alpha: float = schema_default("probe.mlp.alpha")
    max_iter: int = schema_default("probe.mlp.max_iter")


@dataclass(frozen=True)
class SvmSettings(Settings):
    """``probe.svm``: RBF SVC; C as for :class:`LinearSettings`."""

    KEY: ClassVar[str] = "probe.svm"

    C: float | tuple[float, ...] = schema_default("probe.svm.C")
    gamma: str | float = schema_default("probe.svm.gamma")

    def __post_init__(self) -> None:
        self._set("C", _resolve_C(self.C, "probe.svm.C"))


@dataclass(frozen=True)
class BilstmCrfSettings(Settings):
    """``probe.bilstm_crf``: the NER sequence probe."""

    KEY: ClassVar[str] = "probe.bilstm_crf"

    hidden: int = schema_default("probe.bilstm_crf.hidden")
    epochs: int = schema_default("probe.bilstm_crf.epochs")
    lr: float = schema_default("probe.bilstm_crf.lr")
    batch_size: int = schema_default("probe.bilstm_crf.batch_size")

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise FinescopeError("config key probe.bilstm_crf.lr: must be > 0")


_MDL_SHAPE = "config key probe.mdl: expected true/false or {enabled, probe, portions, C_grid}"


@dataclass(frozen=True)
class MdlSettings(Settings):
    """``probe.mdl``: the online code; the config gives true/false or this block (its defaults
    are the method's constants, not config defaults)."""

    KEY: ClassVar[str] = "probe.mdl"

    enabled: bool = True
    probe: str = "linear"
    portions: tuple[float, ...] = MDL_PORTIONS
    C_grid: tuple[float, ...] = MDL_C_GRID

    @classmethod
    def build(cls, given: Mapping | Settings | bool | None = None) -> MdlSettings:
        if isinstance(given, bool):
            return cls(enabled=given)
        if given is not None and not isinstance(given, (Mapping, cls)):
            raise FinescopeError(_MDL_SHAPE)
        return super().build(given)

    def __post_init__(self) -> None:
        grid = self.C_grid
        if (
            not isinstance(grid, (list, tuple))
            or not grid
            or any(not isinstance(c, (int, float)) or c <= 0 for c in grid)
        ):
            raise FinescopeError("config key probe.mdl.C_grid: expected a list of positive numbers")
        self._set("C_grid", tuple(grid))
        if self.probe not in MDL_PROBES:
            raise FinescopeError(
                f"config key probe.mdl.probe: {self.probe!r} gives no probabilities; "
                f"use one of {list(MDL_PROBES)}"
            )
        mdl_block_ends(1000, self.portions)  # validates
        self._set("portions", tuple(self.portions))


@dataclass(frozen=True)
class ProbeSettings(Settings):
    """The ``probe`` config block (less ``random_baseline``, which the workflow reads), plus
    the keys only a job or a notebook caller sets: optional caps (None = off) on probe-train
    and test items (probe-dev is never capped) and the worker count (results do not depend
    on it)."""

    KEY: ClassVar[str] = "probe"

    probes: tuple[str, ...] = schema_default("probe.probes")
    linear: LinearSettings = field(default_factory=LinearSettings)
    mlp: MlpSettings = field(default_factory=MlpSettings)
    svm: SvmSettings = field(default_factory=SvmSettings)
    bilstm_crf: BilstmCrfSettings = field(default_factory=BilstmCrfSettings)
    selectivity: bool = schema_default("probe.selectivity")
    nli_control: str = schema_default("probe.nli_control")
    nli_features: str = schema_default("probe.nli_features")
    nli_interactions: bool = schema_default("probe.nli_interactions")
    mdl: MdlSettings = field(default_factory=MdlSettings)
    seed: int = schema_default("probe.seed")
    # Quiet: not in the workflow's params, so they stay out of them at their defaults.
    max_train_items: int | None = field(default=None, metadata=QUIET)
    max_test_items: int | None = field(default=None, metadata=QUIET)
    n_jobs: int = field(default=1, metadata=QUIET)

    def __post_init__(self) -> None:
        probes = self.probes
        if isinstance(probes, str) or not probes:
            raise FinescopeError(
                "config key probe.probes: expected a non-empty list of probe names"
            )
        for name in probes:
            if name not in PROBES:
                raise FinescopeError(
                    f"config key probe.probes: unknown probe {name!r}; use some of {list(PROBES)}"
                )
        self._set("probes", tuple(dict.fromkeys(probes)))
        for key in ("max_train_items", "max_test_items"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise FinescopeError(f"config key probe.{key}: expected a positive integer or null")
        if not isinstance(self.n_jobs, int) or self.n_jobs == 0:
            raise FinescopeError("config key probe.n_jobs: expected a non-zero integer (-1 = all)")
        for key, allowed in (
            ("nli_features", tuple(["auto", *NLI_FEATURES])),
            ("nli_control", NLI_CONTROLS),
        ):
            if getattr(self, key) not in allowed:
                raise FinescopeError(
                    f"config key probe.{key}: {getattr(self, key)!r}; use one of {list(allowed)}"
                )
        for key in ("nli_interactions", "selectivity"):
            if not isinstance(getattr(self, key), bool):
                raise FinescopeError(f"config key probe.{key}: expected true or false")


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
