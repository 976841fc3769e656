"""Fine-tuning at run time: precision, seeding, the run context, the out-of-memory message."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from finescope.errors import FinescopeError
from finescope.settings import tasks
from finescope.settings.finetune import PRECISIONS, FinetuneSettings, _setting_error

logger = logging.getLogger("finescope.finetune")

CHECKPOINT_FORMAT = 1
TASKS = tasks()
CURVE_COLUMNS = ("step", "epoch", "loss", "learning_rate", "dev_score", "examples_per_second")
MAX_GRAD_NORM = 1.0
# LoRA target modules for when peft has no default for an architecture (peft's own choices).
_LORA_TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


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


def _oom_error(exc: BaseException, s: FinetuneSettings, what: str) -> FinescopeError:
    return FinescopeError(
        f"the GPU ran out of memory while {what} (batch_size={s.batch_size}, "
        f"eval_batch_size={s.eval_batch}, max_length={s.max_length}): {exc}. "
        "Lower `finetune.batch_size` and raise `finetune.gradient_accumulation` by the same "
        "factor (same effective batch), or lower `finetune.max_length` / "
        "`finetune.eval_batch_size`, in config.yaml."
    )
