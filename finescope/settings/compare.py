"""Settings of the change measures between a pre-trained and a fine-tuned cache
(:func:`finescope.compare.run_compare`)."""

from __future__ import annotations

from dataclasses import dataclass

from finescope.errors import FinescopeError
from finescope.settings import Settings, schema_default


@dataclass(frozen=True)
class CompareSettings(Settings):
    KEY = "compare"

    debiased_cka: bool = schema_default("compare.debiased_cka")
    # Items the debiased CKA samples (its cost grows with the square), drawn under seed.
    cka_max_items: int = schema_default("compare.cka_max_items")
    seed: int = schema_default("compare.seed")
    # Attention measures when the caches store maps; off for a job that needs none.
    attention: bool = True

    def __post_init__(self) -> None:
        if int(self.cka_max_items) < 4:
            raise FinescopeError("compare settings `cka_max_items`: must be at least 4")
