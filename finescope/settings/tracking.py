"""Settings of the optional experiment tracking (:mod:`finescope.tracking`)."""

from __future__ import annotations

from dataclasses import dataclass

from finescope.errors import FinescopeError
from finescope.settings import Settings, schema_default

BACKENDS = ("none", "mlflow")


@dataclass(frozen=True)
class TrackingSettings(Settings):
    KEY = "tracking"

    backend: str = schema_default("tracking.backend")
    # None: MLflow's own default (./mlruns).
    uri: str | None = schema_default("tracking.uri")
    experiment: str = schema_default("tracking.experiment")

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise FinescopeError(
                f"config key tracking.backend: {self.backend!r}; expected 'none' or 'mlflow'"
            )

    @property
    def enabled(self) -> bool:
        return self.backend != "none"
