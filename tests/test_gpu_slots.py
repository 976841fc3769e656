"""One GPU per job: concurrent processes take different GPU slots through real lock files; a
job that finds every slot taken waits for one to be released. Needs no GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finescope.errors import FinescopeError
from finescope.gpu import gpu_slot, slot_ids
from tests.workflow_utils import ROOT

# A job: takes a slot of two, writes CUDA_VISIBLE_DEVICES as it sees it, holds the slot until
# its release file appears, then reports what it saw after the release.
JOB = """
import logging, os, sys, time
from pathlib import Path
from finescope.gpu import gpu_slot
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s", force=True)
out, release = Path(sys.argv[1]), Path(sys.argv[2])
with gpu_slot(2, lock_dir=sys.argv[3], poll_seconds=0.1) as gpu:
    out.write_text(f"{gpu} {os.environ['CUDA_VISIBLE_DEVICES']}")
    while not release.exists():
        time.sleep(0.05)
print("after:", os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
"""

TIMEOUT = 120  # generous: the machine may be loaded


def _start(tmp_path: Path, name: str, env: dict | None = None) -> subprocess.Popen:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES")
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            JOB,
            str(tmp_path / f"{name}.out"),
            str(tmp_path / f"{name}.go"),
            str(tmp_path / "locks"),
        ],
        env={**clean, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists() or not path.read_text():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def _finish(tmp_path: Path, name: str, proc: subprocess.Popen) -> str:
    (tmp_path / f"{name}.go").touch()
    output = proc.communicate(timeout=TIMEOUT)[0]
    assert proc.returncode == 0, output
    return output


def test_two_jobs_get_different_gpus_and_a_third_waits_for_a_release(tmp_path):
    first, second = _start(tmp_path, "a"), _start(tmp_path, "b")
    seen = {"a": _wait_for(tmp_path / "a.out", first), "b": _wait_for(tmp_path / "b.out", second)}
    # Each sees only its own GPU: slot id and CUDA_VISIBLE_DEVICES agree, and they differ.
    ids = {name: text.split() for name, text in seen.items()}
    assert all(gpu == visible for gpu, visible in ids.values()), ids
    assert {ids["a"][0], ids["b"][0]} == {"0", "1"}

    third = _start(tmp_path, "c")
    time.sleep(1.5)  # 15 polls: long enough to have taken a free slot, were there one
    assert not (tmp_path / "c.out").exists(), "a third job took a slot while both were held"

    output_a = _finish(tmp_path, "a", first)
    assert _wait_for(tmp_path / "c.out", third).split()[0] == ids["a"][0]
    output_c = _finish(tmp_path, "c", third)
    output_b = _finish(tmp_path, "b", second)
    assert "all 2 slots (0, 1) are taken; waiting" in output_c
    assert f"slot {ids['a'][0]} of 0, 1 after waiting" in output_c
    assert f"slot {ids['a'][0]} of 0, 1 (CUDA_VISIBLE_DEVICES={ids['a'][0]})" in output_a
    # Released at the end of the block, and the variable is gone again.
    for output in (output_a, output_b, output_c):
        assert "GPU: released slot" in output and "after: None" in output


def test_a_killed_job_frees_its_slot(tmp_path):
    holder = _start(tmp_path, "a")
    gpu = _wait_for(tmp_path / "a.out", holder).split()[0]
    other = _start(tmp_path, "b")
    taken = _wait_for(tmp_path / "b.out", other).split()[0]
    holder.kill()  # no release: the kernel drops the lock with the process
    holder.communicate(timeout=TIMEOUT)
    waiting = _start(tmp_path, "c")
    assert _wait_for(tmp_path / "c.out", waiting).split()[0] == gpu != taken
    _finish(tmp_path, "c", waiting)
    _finish(tmp_path, "b", other)


@pytest.mark.parametrize(
    "env",
    [{"SLURM_JOB_ID": "4242", "CUDA_VISIBLE_DEVICES": "3"}, {"CUDA_VISIBLE_DEVICES": "5"}],
    ids=["slurm", "visible-devices-set"],
)
def test_the_schedulers_assignment_is_kept(tmp_path, env):
    proc = _start(tmp_path, "a", env)
    visible = env["CUDA_VISIBLE_DEVICES"]
    assert _wait_for(tmp_path / "a.out", proc) == f"{visible} {visible}"
    output = _finish(tmp_path, "a", proc)
    assert "kept the scheduler's choice" in output
    assert f"after: {env['CUDA_VISIBLE_DEVICES']}" in output
    assert not (tmp_path / "locks").exists()


def test_no_gpus_declared_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for gpus in (0, None, []):
        with gpu_slot(gpus, lock_dir=tmp_path / "locks") as gpu:
            assert gpu is None and "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not (tmp_path / "locks").exists()


def test_slot_ids_from_a_number_or_a_list():
    assert slot_ids(3) == ["0", "1", "2"]
    assert slot_ids([2, 5]) == ["2", "5"]
    with pytest.raises(FinescopeError, match="config key resources.gpus"):
        slot_ids("two")


def test_the_job_log_names_the_gpu(tmp_path, monkeypatch):
    from finescope.job import logged

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    log_path = tmp_path / "job.log"
    with logged(log_path, gpus=[7]):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"
        assert (tmp_path / ".snakemake" / "finescope-gpu" / "7.lock").is_file()
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    text = log_path.read_text()
    assert "GPU: slot 7 of 7 (CUDA_VISIBLE_DEVICES=7)" in text and "released slot 7" in text


@pytest.mark.workflow
def test_workflow_jobs_take_a_gpu_slot_and_log_it(tmp_path, tiny_bert_dir):
    """resources.gpus reaches the fine-tuning and extraction jobs through their scripts; each
    job's log names its GPU (the slot is taken even without a GPU: torch then uses the CPU)."""
    from tests.workflow_utils import snakemake, tiny_config

    config = tiny_config(tmp_path, {"bert": (tiny_bert_dir, "encoder")}, resources={"gpus": [3]})
    target = "results/cache/ner/bert/f100/s1/probe"
    # Run as on a workstation: no scheduler's GPU assignment inherited from this shell.
    snakemake(
        tmp_path,
        "--configfile",
        str(config),
        "--cores",
        "1",
        target,
        unset=("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID"),
    )
    for log in ("logs/finetune/ner/bert/f100/s1.log", "logs/extract/ner/bert/f100/s1.log"):
        text = (tmp_path / log).read_text()
        assert "GPU: slot 3 of 3 (CUDA_VISIBLE_DEVICES=3)" in text, log
        assert "GPU: released slot 3" in text, log
    assert (tmp_path / ".snakemake" / "finescope-gpu" / "3.lock").is_file()
    # Jobs without a GPU take no slot.
    assert "GPU:" not in (tmp_path / "logs/prepare_data/ner.log").read_text()
