"""Settings of the probe pool, the items set aside for probing (:mod:`finescope.probe_pool`)."""

from __future__ import annotations

from dataclasses import dataclass

from finescope.errors import FinescopeError
from finescope.settings import Settings, schema_default

SOURCES = ("train", "dev")


@dataclass(frozen=True)
class ProbePoolSettings(Settings):
    KEY = "probe_pool"

    # The split the pool is taken from.
    source: str = schema_default("probe_pool.source")
    # A share of that split in (0, 1), or a count of items.
    size: float = schema_default("probe_pool.size")
    # The share of the pool that chooses probe hyperparameters (probe-dev).
    dev_share: float = schema_default("probe_pool.dev_share")

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise FinescopeError(
                f"config key probe_pool.source: {self.source!r} is not one of {', '.join(SOURCES)}"
            )
        size = self.size
        if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0:
            raise FinescopeError(
                f"config key probe_pool.size: {size!r} must be a share in (0, 1) or a count >= 1"
            )
        if size >= 1 and float(size) != int(size):
            raise FinescopeError(f"config key probe_pool.size: {size!r} must be a whole count")
        share = self.dev_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            raise FinescopeError(
                f"config key probe_pool.dev_share: {share!r} must be a number between 0 and 1"
            )
