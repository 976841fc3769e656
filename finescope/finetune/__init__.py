"""Fine-tuning a pre-trained model on one task (NLI sequence classification or NER token
classification) with a plain PyTorch loop.

The loop is written out (no ``transformers.Trainer``) so that

* a job killed at any point resumes from its last checkpoint and ends with exactly the metrics of
  an uninterrupted run: the batch order of epoch ``e`` is a pure function of ``(seed, e)``, and a
  checkpoint holds the trainable weights, optimiser, schedule, gradient scaler, all random number
  generator states, the position inside the epoch, the learning curve and the best dev state;
* its overhead can be measured against a bare forward/backward loop over the same batches
  (:func:`build_batches` returns them).
"""

from finescope.finetune.batches import (
    build_batches,
    effective_max_length,
    encode_items,
    epoch_batches,
    load_task_data,
    make_collator,
    uses_token_type_ids,
)
from finescope.finetune.checkpoint import CheckpointStore
from finescope.finetune.evaluation import evaluate
from finescope.finetune.runtime import CURVE_COLUMNS, resolve_precision
from finescope.finetune.train import (
    apply_lora,
    finetune_job,
    predictions_record,
    run_finetune,
    train_loop,
)
from finescope.settings.finetune import FinetuneSettings, LoraSettings

__all__ = [
    "CURVE_COLUMNS",
    "CheckpointStore",
    "FinetuneSettings",
    "LoraSettings",
    "apply_lora",
    "build_batches",
    "effective_max_length",
    "encode_items",
    "epoch_batches",
    "evaluate",
    "finetune_job",
    "load_task_data",
    "make_collator",
    "predictions_record",
    "resolve_precision",
    "run_finetune",
    "train_loop",
    "uses_token_type_ids",
]
