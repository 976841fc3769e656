"""Job plumbing shared by every workflow job: the job's log file, offline flag, thread count,
GPU slot, warnings record and the one-line console messages.

``scripts/<rule>.py`` calls its stage function (``finescope.<stage>.<rule>_job``) inside
:func:`logged` and imports it there too: the offline flag and the thread count must be set
before torch and transformers load.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from finescope import job_warnings
from finescope.errors import FinescopeError
from finescope.progress import format_seconds

log = logging.getLogger("finescope")


def _optional(name: str):
    """The module, or None where it is not installed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        return None


@contextlib.contextmanager
def logged(
    log_path: str | Path,
    threads: int | None = None,
    offline: bool = True,
    gpus: int | list[int] | None = None,
) -> Iterator[None]:
    """Send logging, warnings and progress bars of one job to its log file.

    A job that fails on a :class:`FinescopeError` (a problem with the config, the data or a
    model, with a message saying what to do) writes the traceback to the log and one line,
    ``finescope: <message> (log: <path>)``, to the console's stderr, then exits with status 1.
    Any other exception is logged and raised with its traceback.

    Compute jobs run offline (``HF_HUB_OFFLINE=1``): models and hub datasets reach them through
    the folders that the local ``prepare_model`` and ``fetch_data`` jobs wrote, the only jobs
    that may use the network (``offline=False``).

    ``gpus`` (``resources.gpus``) makes the job hold one GPU slot of that many for its life
    (:func:`finescope.gpu.gpu_slot`).
    """
    console = _console_job(log_path)
    if console:
        _HEADLINE.clear()
        _say(f"finescope: {console} started (tail -f {log_path})")
        started = time.monotonic()
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        from threadpoolctl import threadpool_limits

        # Jobs of envs/analysis.yaml have no torch or transformers (finescope without `models`).
        torch = _optional("torch")
        if torch is not None:
            torch.set_num_threads(threads)
        # NumPy/SciPy BLAS and OpenMP pools (the probes' scikit-learn fits) keep to them too.
        threadpool_limits(threads)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    # finescope's warnings also go to <log>.warnings.jsonl, for the summary and the console.
    recorder = job_warnings.Recorder(log_path).start()
    transformers = _optional("transformers")
    if transformers is not None:
        transformers.logging.set_verbosity_error()
    # One GPU per job (resources.gpus), chosen before torch initialises CUDA, logged to the job.
    gpu = contextlib.ExitStack()
    if gpus:
        from finescope.gpu import gpu_slot

        gpu.enter_context(gpu_slot(gpus))
    failure: FinescopeError | None = None
    with open(log_path, "a", encoding="utf-8") as stream, contextlib.redirect_stderr(stream):
        try:
            yield
        except FinescopeError as exc:
            log.exception("job failed")
            failure = exc
        except Exception:
            log.exception("job failed")
            raise
        finally:
            recorder.stop()
            gpu.close()
            root.removeHandler(handler)
            handler.close()
            sys.stderr.flush()
    if failure is not None:
        # stderr is the console's again: one line, no traceback (that is in the log).
        _say(f"finescope: {failure} (log: {log_path})")
        raise SystemExit(1)
    if console:
        took = format_seconds(time.monotonic() - started)
        headline = f": {_HEADLINE['text']}" if _HEADLINE.get("text") else ""
        _say(f"finescope: {console} done in {took}{headline}")


# Long jobs announce themselves on the console: one line when they start, one when they end.
CONSOLE_STAGES = ("finetune", "extract", "probe", "compare")


_HEADLINE: dict[str, str] = {}


def _say(line: str) -> None:
    """One console line in one write: jobs running side by side share the console, and
    print's separate write of the newline lets their lines run together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _console_job(log_path: str | Path) -> str | None:
    """``logs/finetune/nli/bert/f50/s1.log`` -> ``"finetune nli/bert/f50/s1"``; None for the
    jobs that stay quiet (data, models, analysis)."""
    parts = Path(log_path).with_suffix("").parts
    for i, part in enumerate(parts[:-1]):
        if part == "logs" and parts[i + 1] in CONSOLE_STAGES:
            return f"{parts[i + 1]} {'/'.join(parts[i + 2 :])}"
    return None


def headline(text: str) -> None:
    """The number a job's console end line reports (e.g. its test score)."""
    _HEADLINE["text"] = text
