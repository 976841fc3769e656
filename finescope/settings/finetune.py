"""Fine-tuning settings: the frozen :class:`FinetuneSettings` (and its ``lora`` block) with
their checks. No torch here (precision, seeding and the run context are in ``runtime``)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from finescope.errors import FinescopeError
from finescope.settings import QUIET, Settings, schema_default

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Settings that do not change what a run computes: a checkpoint stays valid when they change.
_RESUMABLE_ACROSS = {"checkpoint_every", "device", "threads"}


def _setting_error(key: str, value, expected: str) -> FinescopeError:
    return FinescopeError(
        f"config key finetune.{key}: expected {expected}, got {value!r}. Fix it in config.yaml."
    )


def _as_number(key: str, value, *, kind: type, low: float, high: float = math.inf):
    # YAML reads 5e-5 (no dot) as a string; accept numeric strings.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value) if kind is float else int(value)
    ok_types = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise _setting_error(key, value, f"a number in [{low}, {high}]")
    if not low <= value <= high:
        raise _setting_error(key, value, f"a number in [{low}, {high}]")
    return kind(value)


_LORA_MAPPING = "a mapping with enabled, r, alpha, dropout"


@dataclass(frozen=True)
class LoraSettings(Settings):
    """The ``finetune.lora`` block: LoRA adapters instead of full fine-tuning."""

    KEY = "finetune.lora"

    enabled: bool = schema_default("finetune.lora.enabled")
    r: int = schema_default("finetune.lora.r")
    alpha: float = schema_default("finetune.lora.alpha")
    dropout: float = schema_default("finetune.lora.dropout")

    @classmethod
    def build(cls, given: Mapping | Settings | None = None) -> LoraSettings:
        # The message of the former dict settings, which tests and users know.
        if given is not None and not isinstance(given, (Mapping, LoraSettings)):
            raise _setting_error("lora", given, _LORA_MAPPING)
        return super().build(given)

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise _setting_error("lora.enabled", self.enabled, "true or false")
        self._set("r", _as_number("lora.r", self.r, kind=int, low=1))
        self._set("alpha", _as_number("lora.alpha", self.alpha, kind=float, low=1e-12))
        self._set("dropout", _as_number("lora.dropout", self.dropout, kind=float, low=0, high=1))


@dataclass(frozen=True)
class FinetuneSettings(Settings):
    """Fine-tuning settings: the ``finetune`` config block (``keep_model`` aside, which the
    workflow keeps) and the keys only a job sets. Errors name the config key."""

    KEY = "finetune"

    learning_rate: float = schema_default("finetune.learning_rate")
    epochs: int = schema_default("finetune.epochs")
    batch_size: int = schema_default("finetune.batch_size")
    max_length: int = schema_default("finetune.max_length")
    warmup_ratio: float = schema_default("finetune.warmup_ratio")
    weight_decay: float = schema_default("finetune.weight_decay")
    gradient_accumulation: int = schema_default("finetune.gradient_accumulation")
    precision: str = schema_default("finetune.precision")
    device: str = field(default=schema_default("finetune.device"), metadata=QUIET)
    checkpoint_every: int = schema_default("finetune.checkpoint_every")
    select_on_dev: bool = schema_default("finetune.select_on_dev")
    lora: LoraSettings = field(default_factory=LoraSettings)
    # Keys only a job sets.
    seed: int = 0
    trust_remote_code: bool = False
    # Batch size of dev/test evaluation; None means 2 x batch_size (see eval_batch).
    eval_batch_size: int | None = field(default=None, metadata=QUIET)
    # Length grouping: items are sorted by length inside windows of this many batches.
    mega_batch: int = field(default=50, metadata=QUIET)
    # CPU threads for torch; None keeps torch's default (all cores).
    threads: int | None = field(default=None, metadata=QUIET)
    # NER: the sub-word of each word that carries its label and prediction, "first" or "last"
    # ("last" lets a left-to-right decoder see the whole word before labelling it).
    ner_subword: str = "first"

    def __post_init__(self):
        number = {
            "learning_rate": {"kind": float, "low": 1e-12},
            "epochs": {"kind": int, "low": 1},
            "batch_size": {"kind": int, "low": 1},
            "max_length": {"kind": int, "low": 4},
            "warmup_ratio": {"kind": float, "low": 0, "high": 1},
            "weight_decay": {"kind": float, "low": 0},
            "gradient_accumulation": {"kind": int, "low": 1},
            "seed": {"kind": int, "low": 0, "high": 2**63 - 1},
            "checkpoint_every": {"kind": int, "low": 0},
            "mega_batch": {"kind": int, "low": 1},
        }
        for key, bounds in number.items():
            self._set(key, _as_number(key, getattr(self, key), **bounds))
        if self.eval_batch_size is not None:
            self._set(
                "eval_batch_size",
                _as_number("eval_batch_size", self.eval_batch_size, kind=int, low=1),
            )
        if self.precision not in PRECISIONS:
            raise _setting_error("precision", self.precision, f"one of {list(PRECISIONS)}")
        for key in ("select_on_dev", "trust_remote_code"):
            if not isinstance(getattr(self, key), bool):
                raise _setting_error(key, getattr(self, key), "true or false")
        if self.threads is not None:
            self._set("threads", _as_number("threads", self.threads, kind=int, low=1))
        if self.ner_subword not in ("first", "last"):
            raise _setting_error("ner_subword", self.ner_subword, '"first" or "last"')
        if not isinstance(self.device, str):
            raise _setting_error("device", self.device, '"auto", "cpu", "cuda" or "cuda:N"')

    @property
    def eval_batch(self) -> int:
        """The batch size of dev/test evaluation: ``eval_batch_size``, else 2 x batch_size."""
        return self.eval_batch_size if self.eval_batch_size is not None else 2 * self.batch_size

    def resolved_dict(self) -> dict:
        """:meth:`to_dict` with ``eval_batch_size`` resolved to :attr:`eval_batch`: what
        checkpoint fingerprints and tracking have always held (old checkpoints stay valid)."""
        return self.to_dict() | {"eval_batch_size": self.eval_batch}


def _fingerprint_settings(s: FinetuneSettings) -> dict:
    """The settings that change what a run computes, for a checkpoint's fingerprint."""
    return {k: v for k, v in sorted(s.resolved_dict().items()) if k not in _RESUMABLE_ACROSS}
