"""Warnings of the workflow's jobs, kept where the summary and the console can find them.

Each job (see :func:`finescope.job.logged`) writes the warnings that finescope raised while it
ran — ``warnings.warn`` from finescope code and WARNING records of the ``finescope`` loggers — to
``<log>.warnings.jsonl`` beside its log (``logs/finetune/nli/bert/f50/s1.log`` ->
``logs/finetune/nli/bert/f50/s1.warnings.jsonl``), one JSON object per warning. A job without
warnings leaves no such file. ``results/summary.md`` lists them and the end of a run prints
their number.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import finescope
from finescope.settings import tasks

SUFFIX = ".warnings.jsonl"
PACKAGE_DIR = Path(finescope.__file__).resolve().parent
TASK_NAMES = tasks()


def record_path(log_path: str | Path) -> Path:
    """Where a job with log ``log_path`` writes its warnings."""
    log_path = Path(log_path)
    return log_path.with_name(log_path.stem + SUFFIX)


def job_context(log_path: str | Path) -> dict[str, Any]:
    """The job and, where its log path tells, the grid point of a job.

    ``logs/<stage>/<task>[/<model>]/f<fraction>/s<seed>.log`` gives ``stage``, ``task``,
    ``model``, ``fraction`` and ``seed``; ``logs/prepare_data/nli.log``
    gives the stage and the task. A log outside a ``logs`` folder names only the job.
    """
    parts = list(Path(log_path).with_suffix("").parts)
    if "logs" not in parts:
        return {"job": Path(log_path).stem}
    parts = parts[len(parts) - parts[::-1].index("logs") :]
    context: dict[str, Any] = {"job": "/".join(parts)}
    if not parts:
        return context
    context["stage"] = parts[0]
    rest = parts[1:]
    if rest and rest[0] in TASK_NAMES:
        context["task"] = rest.pop(0)
    fraction_at = next((i for i, p in enumerate(rest) if re.fullmatch(r"f(\d+|random)", p)), None)
    if fraction_at is None:
        return context
    if fraction_at == 1:
        context["model"] = rest[0]
    context["fraction"] = rest[fraction_at][1:]
    tail = rest[fraction_at + 1 :]
    if tail and re.fullmatch(r"s\d+", tail[0]):
        context["seed"] = int(tail[0][1:])
    return context


def _in_package(filename: str) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def _finescope_raiser() -> str | None:
    """``file:line`` of the finescope code that called ``warnings.warn`` for the warning being
    shown, None when other code raised it (the location ``stacklevel`` attributes it to is not
    used: a library's own warning may be attributed to finescope code that called it)."""
    frame = sys._getframe(2)  # above Recorder._showwarning
    while frame is not None and frame.f_code.co_filename == warnings.__file__:
        frame = frame.f_back
    if frame is None or not _in_package(frame.f_code.co_filename):
        return None
    # Relative to the package (``data/splits.py:120``): module names repeat across subpackages.
    where = Path(frame.f_code.co_filename).resolve().relative_to(PACKAGE_DIR)
    return f"{where.as_posix()}:{frame.f_lineno}"


class Recorder(logging.Handler):
    """Collects one job's finescope warnings and writes them next to its log on :meth:`stop`."""

    def __init__(self, log_path: str | Path):
        super().__init__(level=logging.WARNING)
        self.path = record_path(log_path)
        self.context = {**job_context(log_path), "log": str(log_path)}
        self.records: list[dict] = []
        self._previous_showwarning = None

    def start(self) -> Recorder:
        # A re-run job starts without the warnings of its earlier run.
        self.path.unlink(missing_ok=True)
        logging.getLogger("finescope").addHandler(self)
        self._previous_showwarning = warnings.showwarning
        warnings.showwarning = self._showwarning
        return self

    def stop(self) -> None:
        logging.getLogger("finescope").removeHandler(self)
        if self._previous_showwarning is not None:
            warnings.showwarning = self._previous_showwarning
        if self.records:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", encoding="utf-8") as fh:
                for record in self.records:
                    fh.write(json.dumps(record, sort_keys=True) + "\n")

    def emit(self, record: logging.LogRecord) -> None:
        # WARNING only: errors end the job and reach the console by themselves.
        if record.levelno != logging.WARNING:
            return
        self.records.append(
            {
                **self.context,
                "kind": "log",
                "category": record.levelname,
                "source": record.name,
                "message": record.getMessage(),
            }
        )

    def _showwarning(self, message, category, filename, lineno, file=None, line=None):
        raiser = _finescope_raiser()
        if raiser is not None:
            self.records.append(
                {
                    **self.context,
                    "kind": "warning",
                    "category": category.__name__,
                    "source": raiser,
                    "message": str(message),
                }
            )
        self._previous_showwarning(message, category, filename, lineno, file, line)


def _in_grid(record: Mapping, grid: Mapping | None) -> bool:
    """False for a record of a grid point the current grid no longer has (a stale log)."""
    if not grid:
        return True
    checks = {
        "task": [str(t) for t in grid.get("tasks", [])],
        "model": [str(m) for m in grid.get("models", [])],
        "fraction": [str(f) for f in grid.get("fractions", [])] + ["random"],
        "seed": [str(s) for s in grid.get("seeds", [])],
    }
    if str(record.get("fraction")) in ("0", "random"):
        # The pre-trained model and the random baseline run once, as seed 0.
        checks["seed"].append("0")
    for key, allowed in checks.items():
        if key in record and grid.get(key + "s") is not None and str(record[key]) not in allowed:
            return False
    return True


def collect(logs_dir: str | Path = "logs", grid: Mapping | None = None) -> list[dict]:
    """Every warning record under ``logs_dir``, sorted by job; records of grid points outside
    ``grid`` (logs left from an earlier grid) are left out."""
    records = []
    for path in sorted(Path(logs_dir).glob(f"**/*{SUFFIX}")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a record cut by a killed job: the rest of the file still counts
            if isinstance(record, dict) and "message" in record and _in_grid(record, grid):
                records.append(record)
    return sorted(records, key=lambda r: (str(r.get("job", "")), str(r["message"])))


def print_count(
    grid: Mapping | None = None,
    logs_dir: str | Path = "logs",
    summary: str | Path | None = "results/summary.md",
) -> int:
    """Print ``finescope: N warnings (see ...)`` to stderr when the run's jobs raised any;
    return N. Called at the end of a run (the Snakefile's onsuccess / onerror; after an error
    ``summary`` is None, as summary.md may be an earlier run's)."""
    n = len(collect(logs_dir, grid))
    if n:
        where = summary if summary and Path(summary).is_file() else f"{logs_dir}/**/*{SUFFIX}"
        print(
            f"finescope: {n} warning{'s' if n != 1 else ''} (see {where})",
            file=sys.stderr,
            flush=True,
        )
    return n
