"""Progress that reaches the user: steady progress lines in the job log, and exactly one
console line when a long job starts and one when it ends."""

from __future__ import annotations

import logging
import os
import re

import pytest

from finescope import job
from finescope.finetune import finetune_job
from finescope.progress import Progress, format_seconds
from finescope.subsample import write_subset
from tests.test_finetune import _train_ids, _write_toy


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_logs_at_a_steady_cadence_with_rate_and_eta(caplog):
    clock = Clock()
    bar = Progress("extract nli", 10, "batch", every=20.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="finescope.progress"):
        for _ in range(10):
            clock.now += 5.0  # 0.2 batches/s
            bar.update(1, tokens=100)
    lines = [r.getMessage() for r in caplog.records]
    # The first batch, then every 20 s (4 batches), and the last one.
    assert len(lines) == 4
    assert lines[0] == "extract nli: 1/10 batches (10 %), 0.20 batches/s, 20 tokens/s, ETA 45 s"
    assert lines[1].startswith("extract nli: 5/10 batches (50 %)") and "ETA 25 s" in lines[1]
    assert lines[-1].startswith("extract nli: 10/10") and lines[-1].endswith("took 50 s")


def test_resumed_progress_rates_count_new_work_only():
    clock = Clock()
    bar = Progress("fine-tune ner", 100, "step", initial=60, clock=clock, enabled=False)
    clock.now = 10.0
    bar.update(20, {"loss": "0.5000"})
    assert bar.line() == "fine-tune ner: 80/100 steps (80 %), 2.00 steps/s, ETA 10 s, loss 0.5000"


def test_format_seconds():
    assert format_seconds(3.21) == "3.2 s"
    assert format_seconds(42) == "42 s"
    assert format_seconds(185) == "3 min 05 s"
    assert format_seconds(3720) == "1 h 02 min"


def test_only_long_jobs_announce_themselves(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    quiet = tmp_path / "logs" / "analysis" / "tables.log"
    with job.logged(quiet):
        logging.getLogger("finescope").info("inside")
    assert capsys.readouterr().err == ""
    assert "inside" in quiet.read_text()

    loud = tmp_path / "logs" / "extract" / "nli" / "bert" / "f0" / "s0" / "test.log"
    with job.logged(loud):
        job.headline("12 items x 3 layers")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"finescope: extract nli/bert/f0/s0/test started (tail -f {loud})"
    assert err[1].startswith("finescope: extract nli/bert/f0/s0/test done in ")
    assert err[1].endswith(": 12 items x 3 layers") and len(err) == 2


def test_a_finetune_job_reports_progress_to_its_log_and_two_lines_to_the_console(
    tmp_path, tiny_bert_dir, capsys, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("finescope.progress.EVERY_SECONDS", 0.0)
    data = _write_toy("nli", tmp_path / "data" / "nli")
    subset = tmp_path / "s1.json"
    write_subset(subset, _train_ids(data), "nli", 100, 1)
    out = tmp_path / "results" / "finetune" / "nli" / "bert" / "f100" / "s1"
    log = tmp_path / "logs" / "finetune" / "nli" / "bert" / "f100" / "s1.log"
    settings = {"threads": 1, "epochs": 2, "batch_size": 8, "learning_rate": 1e-3}
    with job.logged(log, threads=1):
        finetune_job(
            "nli",
            {"task": "nli", "model": "bert", "fraction": "100", "seed": 1},
            str(tiny_bert_dir),
            str(data / "labels.json"),
            str(subset),
            str(out / "model"),
            str(tmp_path / "ckpt"),
            settings,
        )
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert err[0] == f"finescope: finetune nli/bert/f100/s1 started (tail -f {log})"
    assert "done in" in err[1] and ": test macro_f1 0." in err[1] and ", dev 0." in err[1]
    text = log.read_text()
    progress = [line for line in text.splitlines() if "fine-tune nli: " in line]
    assert len(progress) >= 2  # 48 items / batch 8 = 6 steps x 2 epochs
    assert "steps/s" in progress[0] and "examples/s" in progress[0] and "loss " in progress[0]
    assert "ETA" in progress[0] and "12/12 steps (100 %)" in progress[-1]
    assert "test_predictions" not in text  # the metrics line leaves the predictions out


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("logs/probe/ner/llama/frandom/s0.log", "probe ner/llama/frandom/s0"),
        ("/x/logs/compare/nli/bert/f50/s2.log", "compare nli/bert/f50/s2"),
        ("logs/prepare_data/nli.log", None),
        ("logs/analysis/figures.log", None),
    ],
)
def test_console_job_names(path, expected):
    assert job._console_job(path) == expected


def test_console_lines_of_jobs_side_by_side_do_not_run_together():
    """Two jobs writing their console lines to one pipe at once: every line stays whole."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom finescope.job import _say\n"
        "for i in range(3000): _say(f'finescope: job {sys.argv[1]} line {i}')\n"
    )
    read, write = os.pipe()
    procs = [subprocess.Popen([sys.executable, "-c", code, name], stderr=write) for name in "AB"]
    os.close(write)
    with os.fdopen(read) as stream:
        lines = stream.read().splitlines()
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert len(lines) == 6000
    assert all(re.fullmatch(r"finescope: job [AB] line \d+", line) for line in lines)
