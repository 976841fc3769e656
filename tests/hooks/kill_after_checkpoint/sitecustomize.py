"""Put on PYTHONPATH by the resume test: a fine-tuning job (Snakemake runs its script as
``python <tmp>.finetune.py``) dies by SIGKILL right after its first checkpoint is on disk, as a
job killed by the scheduler or the out-of-memory killer would. Other processes are untouched."""

import os
import signal
import sys


def _kill_after_first(count: int) -> None:
    if count == 1:
        os.kill(os.getpid(), signal.SIGKILL)


if sys.argv and sys.argv[0].endswith(".finetune.py"):
    import finescope.finetune.train

    _run_finetune = finescope.finetune.train.run_finetune

    def _killed_run(*args, **kwargs):
        return _run_finetune(*args, on_checkpoint=_kill_after_first, **kwargs)

    # finetune_job calls run_finetune from its own module.
    finescope.finetune.train.run_finetune = _killed_run
