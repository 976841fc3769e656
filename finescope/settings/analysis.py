"""Settings of the correlation analysis (:mod:`finescope.analysis`)."""

from __future__ import annotations

from dataclasses import dataclass

from finescope.errors import FinescopeError
from finescope.settings import Settings, schema_default

ENTITY_F1_KINDS = ("strict", "conlleval")


@dataclass(frozen=True)
class AnalysisSettings(Settings):
    KEY = "analysis"

    # Bootstrap resamples of each interval (0: no intervals).
    n_boot: int = schema_default("analysis.n_boot")
    seed: int = schema_default("analysis.seed")
    # Grid points a correlation needs; below it a row is underpowered.
    min_n: int = schema_default("analysis.min_n")
    # Relative-depth bins on which per-layer measures of different models are pooled.
    depth_bins: int = schema_default("analysis.depth_bins")
    # The NER entity F1 that is correlated (both are reported).
    entity_f1: str = schema_default("analysis.entity_f1")

    def __post_init__(self) -> None:
        for key, low in (("n_boot", 0), ("min_n", 4), ("depth_bins", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise FinescopeError(
                    f"config key analysis.{key}: {value!r} must be an integer >= {low}"
                )
        if self.entity_f1 not in ENTITY_F1_KINDS:
            raise FinescopeError(
                f"config key analysis.entity_f1: {self.entity_f1!r} is not one of "
                f"{list(ENTITY_F1_KINDS)}"
            )
