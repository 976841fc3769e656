"""End to end, from the rule benchmark files and the Snakemake log of the last `make run`."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pandas as pd


def stage_totals(bench_dir: Path) -> pd.DataFrame | None:
    """Wall seconds and peak memory per stage, summed over the rule benchmark files."""
    rows = []
    for path in sorted(bench_dir.rglob("*.tsv")):
        table = pd.read_csv(path, sep="\t")
        rows.append(
            {
                "stage": path.relative_to(bench_dir).parts[0],
                "s": float(table["s"].iloc[-1]),
                "max_rss_mb": float(pd.to_numeric(table["max_rss"], errors="coerce").iloc[-1]),
            }
        )
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    return frame.groupby("stage").agg(
        jobs=("s", "size"), seconds=("s", "sum"), peak_rss_mb=("max_rss_mb", "max")
    )


def last_run_wall_seconds(log_dir: Path) -> float | None:
    """Wall seconds of the newest complete Snakemake run in ``log_dir`` (.snakemake/log): from
    its first job's start to its last job's end, as stamped in its log."""
    stamp = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$", re.M)
    for path in sorted(log_dir.glob("*.snakemake.log"), reverse=True):
        text = path.read_text(errors="replace")
        times = stamp.findall(text)
        if "(100%) done" in text and len(times) >= 2:
            first, last = (
                dt.datetime.strptime(t, "%a %b %d %H:%M:%S %Y") for t in (times[0], times[-1])
            )
            return (last - first).total_seconds()
    return None
