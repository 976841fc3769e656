"""Fine-tuning settings: schema defaults and their checks, precision and the run context."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from finescope.errors import FinescopeError
from finescope.settings import defaults, tasks

logger = logging.getLogger("finescope.finetune")

CHECKPOINT_FORMAT = 1
TASKS = tasks()
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CURVE_COLUMNS = ("step", "epoch", "loss", "learning_rate", "dev_score", "examples_per_second")
MAX_GRAD_NORM = 1.0

# The config block's defaults (from the schema, their one home) and the keys only a job sets.
DEFAULT_SETTINGS: dict = {
    **{key: value for key, value in defaults("finetune").items() if key != "keep_model"},
    "seed": 0,
    "trust_remote_code": False,
    # Batch size of dev/test evaluation; None means 2 x batch_size.
    "eval_batch_size": None,
    # Length grouping: items are sorted by length inside windows of this many batches.
    "mega_batch": 50,
    # CPU threads for torch; None keeps torch's default (all cores).
    "threads": None,
    # NER: the sub-word of each word that carries its label and prediction, "first" or "last"
    # ("last" lets a left-to-right decoder see the whole word before labelling it).
    "ner_subword": "first",
}
# Settings that do not change what a run computes: a checkpoint stays valid when they change.
_RESUMABLE_ACROSS = {"checkpoint_every", "device", "threads"}
# LoRA target modules for when peft has no default for an architecture (peft's own choices).
_LORA_TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


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


def resolve_settings(settings: dict | None) -> dict:
    """Fill in defaults and validate fine-tuning settings.

    Parameters
    ----------
    settings
        The ``finetune`` section of the config (any subset of :data:`DEFAULT_SETTINGS`).

    Returns
    -------
    dict
        A complete, validated copy; errors name the config key ``finetune.<key>``.
    """
    given = dict(settings or {})
    unknown = sorted(set(given) - set(DEFAULT_SETTINGS))
    if unknown:
        logger.warning("ignoring unknown fine-tuning settings %s", unknown)
    s = copy.deepcopy(DEFAULT_SETTINGS)
    for key in DEFAULT_SETTINGS:
        if key in given and key != "lora":
            s[key] = given[key]
    lora = given.get("lora") or {}
    if not isinstance(lora, dict):
        raise _setting_error("lora", lora, "a mapping with enabled, r, alpha, dropout")
    s["lora"] |= lora

    s["learning_rate"] = _as_number("learning_rate", s["learning_rate"], kind=float, low=1e-12)
    s["epochs"] = _as_number("epochs", s["epochs"], kind=int, low=1)
    s["batch_size"] = _as_number("batch_size", s["batch_size"], kind=int, low=1)
    s["max_length"] = _as_number("max_length", s["max_length"], kind=int, low=4)
    s["warmup_ratio"] = _as_number("warmup_ratio", s["warmup_ratio"], kind=float, low=0, high=1)
    s["weight_decay"] = _as_number("weight_decay", s["weight_decay"], kind=float, low=0)
    s["gradient_accumulation"] = _as_number(
        "gradient_accumulation", s["gradient_accumulation"], kind=int, low=1
    )
    s["seed"] = _as_number("seed", s["seed"], kind=int, low=0, high=2**63 - 1)
    s["checkpoint_every"] = _as_number("checkpoint_every", s["checkpoint_every"], kind=int, low=0)
    s["mega_batch"] = _as_number("mega_batch", s["mega_batch"], kind=int, low=1)
    if s["eval_batch_size"] is None:
        s["eval_batch_size"] = 2 * s["batch_size"]
    s["eval_batch_size"] = _as_number("eval_batch_size", s["eval_batch_size"], kind=int, low=1)
    if s["precision"] not in PRECISIONS:
        raise _setting_error("precision", s["precision"], f"one of {list(PRECISIONS)}")
    for key in ("select_on_dev", "trust_remote_code"):
        if not isinstance(s[key], bool):
            raise _setting_error(key, s[key], "true or false")
    if s["threads"] is not None:
        s["threads"] = _as_number("threads", s["threads"], kind=int, low=1)
    if s["ner_subword"] not in ("first", "last"):
        raise _setting_error("ner_subword", s["ner_subword"], '"first" or "last"')
    if not isinstance(s["device"], str):
        raise _setting_error("device", s["device"], '"auto", "cpu", "cuda" or "cuda:N"')
    lora = s["lora"]
    if not isinstance(lora["enabled"], bool):
        raise _setting_error("lora.enabled", lora["enabled"], "true or false")
    lora["r"] = _as_number("lora.r", lora["r"], kind=int, low=1)
    lora["alpha"] = _as_number("lora.alpha", lora["alpha"], kind=float, low=1e-12)
    lora["dropout"] = _as_number("lora.dropout", lora["dropout"], kind=float, low=0, high=1)
    return s


@dataclass(frozen=True)
class Precision:
    """Numerical precision of a run: weights stay float32, ``dtype`` is the autocast type."""

    name: str
    device_type: str
    dtype: torch.dtype | None = None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """Resolve the ``precision`` setting for a device.

    ``auto`` is bf16 autocast on a CUDA GPU that supports it (fp16 with loss scaling on older
    GPUs) and float32 on CPU; explicit ``fp32``/``bf16``/``fp16`` are honoured (fp16 needs CUDA).

    Parameters
    ----------
    precision
        ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
    device
        Where the model runs.

    Returns
    -------
    Precision
        ``name`` (fp32/bf16/fp16), the autocast dtype (None for fp32), whether a loss scaler is
        needed.
    """
    if precision not in PRECISIONS:
        raise _setting_error("precision", precision, f"one of {list(PRECISIONS)}")
    cuda = device.type == "cuda"
    if precision == "auto":
        if not cuda:
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return Precision("fp32", device.type)
    if precision == "fp16" and not cuda:
        raise FinescopeError(
            'config key finetune.precision: "fp16" needs a CUDA GPU and this run is on the CPU. '
            'Use "auto", "fp32" or "bf16".'
        )
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise FinescopeError(
            'config key finetune.precision: this GPU does not support "bf16". Use "auto" or "fp16".'
        )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return Precision(precision, device.type, dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _run_context(threads: int | None) -> Iterator[None]:
    """Deterministic algorithms (cheap on CPU; on CUDA a few kernels warn instead of failing)
    and the CPU thread count, restored afterwards."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    n_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)
        torch.backends.cudnn.benchmark = benchmark
        torch.set_num_threads(n_threads)


def _oom_error(exc: BaseException, s: dict, what: str) -> FinescopeError:
    return FinescopeError(
        f"the GPU ran out of memory while {what} (batch_size={s['batch_size']}, "
        f"eval_batch_size={s['eval_batch_size']}, max_length={s['max_length']}): {exc}. "
        "Lower `finetune.batch_size` and raise `finetune.gradient_accumulation` by the same "
        "factor (same effective batch), or lower `finetune.max_length` / "
        "`finetune.eval_batch_size`, in config.yaml."
    )
