"""One GPU per job on a machine with several: a lock file per GPU slot.

Snakemake's ``--resources gpu=N`` (profiles/local) caps how many GPU jobs run at once but does
not say which GPU each job gets, so every job would use ``cuda:0``. With ``resources.gpus`` in
the config, each fine-tuning and extraction job takes a free slot for its whole life (an
exclusive ``fcntl.flock`` on ``.snakemake/finescope-gpu/<id>.lock``) and sets
``CUDA_VISIBLE_DEVICES`` to that GPU before torch initialises CUDA; a job that finds every slot
taken waits. Under a scheduler (SLURM, or ``CUDA_VISIBLE_DEVICES`` already set) the scheduler's
assignment is kept. The lock is released when the job ends, or when its process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from finescope.errors import FinescopeError

log = logging.getLogger("finescope.gpu")

LOCK_DIR = Path(".snakemake") / "finescope-gpu"
POLL_SECONDS = 5.0


def slot_ids(gpus: int | Sequence[int] | None) -> list[str]:
    """The GPU ids of the declared slots: ``N`` means GPUs 0..N-1, a list names them."""
    if not gpus:
        return []
    if isinstance(gpus, bool) or not isinstance(gpus, (int, list, tuple)):
        raise FinescopeError(
            f"config key resources.gpus: {gpus!r} is neither a number of GPUs nor a list of ids"
        )
    ids = range(gpus) if isinstance(gpus, int) else gpus
    return [str(int(i)) for i in ids]


def _scheduler_assignment() -> str | None:
    """Why the GPUs of this job are already chosen, or None when they are not."""
    if os.environ.get("SLURM_JOB_ID"):
        return f"SLURM job {os.environ['SLURM_JOB_ID']}"
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return "CUDA_VISIBLE_DEVICES set before the job started"
    return None


def _try_lock(path: Path):
    """The open lock file, locked, or None when another process holds it."""
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


@contextlib.contextmanager
def gpu_slot(
    gpus: int | Sequence[int] | None,
    lock_dir: str | Path = LOCK_DIR,
    poll_seconds: float = POLL_SECONDS,
) -> Iterator[str | None]:
    """Hold one GPU slot for the duration of the block; yields the GPU id (None: no slot taken).

    Parameters
    ----------
    gpus
        ``resources.gpus``: 0/None (nothing changes), a number N (GPUs 0..N-1) or a list of ids.
    lock_dir
        Folder of the lock files, shared by every job of the workflow.
    poll_seconds
        How often a job that found every slot taken tries again.
    """
    ids = slot_ids(gpus)
    if not ids:
        yield None
        return
    assigned = _scheduler_assignment()
    if assigned is not None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
        log.info(
            "GPU: kept the scheduler's choice (%s): CUDA_VISIBLE_DEVICES=%s", assigned, visible
        )
        yield os.environ.get("CUDA_VISIBLE_DEVICES")
        return
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise FinescopeError(
            "a GPU slot was taken after torch initialised CUDA, so CUDA_VISIBLE_DEVICES has no "
            "effect; take the slot before the first CUDA call"
        )
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    waiting = False
    while True:
        for gpu in ids:
            handle = _try_lock(lock_dir / f"{gpu}.lock")
            if handle is not None:
                break
        else:
            if not waiting:
                log.info("GPU: all %d slots (%s) are taken; waiting", len(ids), ", ".join(ids))
                waiting = True
            time.sleep(poll_seconds)
            continue
        break
    waited = f" after waiting {time.monotonic() - started:.0f} s" if waiting else ""
    log.info("GPU: slot %s of %s%s (CUDA_VISIBLE_DEVICES=%s)", gpu, ", ".join(ids), waited, gpu)
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    try:
        yield gpu
    finally:
        del os.environ["CUDA_VISIBLE_DEVICES"]
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
        log.info("GPU: released slot %s", gpu)
