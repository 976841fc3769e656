"""Settings of one hidden-state cache (:func:`finescope.extract.run_extract`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from finescope.cache import DTYPES
from finescope.errors import FinescopeError
from finescope.settings import QUIET, Settings, schema_default

NLI_VIEWS = ("pair", "separate")
NER_POOLINGS = ("first", "last", "mean")


def _quiet(default):
    return field(default=default, metadata=QUIET)


@dataclass(frozen=True)
class ExtractSettings(Settings):
    """How one cache is extracted. The first fields are ``extract`` config keys; the workflow
    sets the others per job: the item cap (the test split's ``max_test_items``, none for the
    probe pool) and its seed, the random baseline's ``random_init`` and weight ``seed``, and
    the model's ``trust_remote_code`` and NER sub-word (``ner_pooling``)."""

    KEY = "extract"

    batch_size: int = schema_default("extract.batch_size")
    max_length: int = schema_default("extract.max_length")
    dtype: str = schema_default("extract.dtype")
    # 0 for the probe pool: attention maps are only compared on the test split.
    attention_items: int = schema_default("extract.attention_items")
    # How the forward pass runs, and settings of one task only: quiet, so that a config that
    # does not set them (or a job of the other task) keeps its finished jobs.
    padding_side: str = _quiet(schema_default("extract.padding_side"))
    device: str = _quiet(schema_default("extract.device"))
    bf16_autocast: bool = _quiet(schema_default("extract.bf16_autocast"))
    nli_view: str = _quiet(schema_default("extract.nli_view"))
    trust_remote_code: bool = False
    random_init: bool = False
    # The random baseline's weights; a setting of that job only (probe.seed in the workflow).
    seed: int = _quiet(0)
    ner_pooling: str = _quiet("first")
    # Items of the split kept (None = all), drawn under item_seed.
    max_items: int | None = None
    item_seed: int = schema_default("extract.seed")

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise FinescopeError(
                f"extract settings `dtype`: {self.dtype!r} is not one of {sorted(DTYPES)}"
            )
        if self.padding_side not in ("right", "left"):
            raise FinescopeError(
                f"extract settings `padding_side`: {self.padding_side!r} is not right or left"
            )
        for key in ("batch_size", "max_length"):
            if int(getattr(self, key)) < 1:
                raise FinescopeError(f"extract settings `{key}`: must be a positive integer")
        if int(self.attention_items) < 0:
            raise FinescopeError("extract settings `attention_items`: must be 0 or more")
        if self.nli_view not in NLI_VIEWS:
            raise FinescopeError(
                f"extract settings `nli_view`: {self.nli_view!r} is not one of {list(NLI_VIEWS)}"
            )
        if self.ner_pooling not in NER_POOLINGS:
            raise FinescopeError(
                f"extract settings `ner_pooling`: {self.ner_pooling!r} is not one of "
                f"{list(NER_POOLINGS)}"
            )
        if self.max_items is not None and int(self.max_items) < 1:
            raise FinescopeError("extract settings `max_items`: must be a positive integer")

    @property
    def model_settings(self) -> dict:
        """What the cache's meta.json records as its settings (the item cap is recorded by
        the items themselves)."""
        out = self.to_dict()
        del out["max_items"], out["item_seed"]
        return out
