"""The workflow on a real SLURM: a single-node cluster that .ci/slurm/up.sh brings up here.

Opt-in, because it installs Debian packages and starts daemons (root only):

    FINESCOPE_SLURM_TEST=1 .venv/bin/python -m pytest tests/test_slurm.py     # or CI=true

The tiny config runs once locally (profiles/local) and once through profiles/slurm with the
test cluster's overlay profiles/slurm-ci; every non-local job must be a COMPLETED SLURM job in
the accounting database (sacct), on the partition its profile asks for, and the result tables
must equal the local ones.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from tests.workflow_utils import ROOT, planned_jobs, snakemake, tiny_config

UP = ROOT / ".ci" / "slurm" / "up.sh"
DOWN = ROOT / ".ci" / "slurm" / "down.sh"
PROFILES = ["--profile", str(ROOT / "profiles/slurm"), "--profile", str(ROOT / "profiles/slurm-ci")]
# Jobs that never become SLURM jobs: prepare_model is a localrule (it may need the network) and
# `all` has nothing to run.
LOCAL_RULES = {"prepare_model", "all"}
GPU_RULES = {"finetune", "extract"}
RUN_LIMIT_S = 480  # the SLURM run; a job stuck pending would otherwise wait forever
TABLES = ["downstream", "probing", "change"]
# The tiny config cut to what exercises every rule once or twice: one task, one model, the
# pre-trained and one trained point, the fast probe only (each job pays seconds of imports).
SMALL = {
    "tasks": {"ner": {"data": {"source": "synthetic", "train": 40, "dev": 9, "test": 15}}},
    "fractions": [0, 100],
    "probe": {"probes": ["linear"], "selectivity": False, "mdl": False, "random_baseline": False},
}

CI = os.environ.get("CI", "").lower() in ("true", "1")
ENABLED = os.environ.get("FINESCOPE_SLURM_TEST") == "1" or CI
pytestmark = [
    pytest.mark.workflow,
    pytest.mark.skipif(
        not ENABLED,
        reason="brings up a real single-node SLURM (root, apt packages, ~4 min): "
        "set FINESCOPE_SLURM_TEST=1 (or CI=true) to run it",
    ),
]


def _env() -> dict[str, str]:
    # Jobs inherit this environment (sbatch --export=ALL): the venv's python first on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running single-node SLURM with accounting; its daemons are stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root: .ci/slurm/up.sh installs packages and starts the SLURM daemons")
    state = tmp_path_factory.mktemp("slurm")
    up = subprocess.run(["bash", str(UP), str(state)], capture_output=True, text=True, timeout=900)
    if up.returncode != 0:
        subprocess.run(["bash", str(DOWN), str(state)], capture_output=True, timeout=120)
        if "APT_INSTALL_FAILED" in up.stderr:
            pytest.skip(
                f"could not install the SLURM packages (no package registry?):\n{up.stderr}"
            )
        logs = "".join(
            f"--- {log.name}\n{log.read_text()[-3000:]}\n"
            for log in sorted((state / "log").glob("*.log"))
        )
        pytest.fail(f"{UP} failed ({up.returncode}):\n{up.stdout}\n{up.stderr}\n{logs}")
    try:
        yield state
    finally:
        down = subprocess.run(
            ["bash", str(DOWN), str(state)], capture_output=True, text=True, timeout=120
        )
        assert down.returncode == 0, down.stderr


def _sacct(run_id: str) -> list[dict[str, str]]:
    fields = ["JobIDRaw", "State", "Partition", "Account", "AllocTRES", "Comment"]
    out = subprocess.run(
        [
            "sacct",
            "-X",
            "--parsable2",
            "--noheader",
            "--starttime",
            "now-1days",
            "--name",
            run_id,
            "--format",
            ",".join(fields),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line]


def _rule(comment: str) -> str:
    # The plugin tags each job with `rule_<name>` or `rule_<name>_wildcards_<values>`.
    match = re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", comment)
    assert match, comment
    return match.group(1)


def test_tiny_workflow_runs_as_slurm_jobs_and_matches_a_local_run(
    slurm_cluster, tiny_bert_dir, tmp_path
):
    models = {"bert": (tiny_bert_dir, "encoder")}
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    for workdir in (local_dir, slurm_dir):
        workdir.mkdir()
        tiny_config(workdir, models, **SMALL)
    expected = planned_jobs(slurm_dir, *PROFILES)
    assert expected["finetune"] == 1 and expected["extract"] == 2

    snakemake(local_dir, "--profile", str(ROOT / "profiles/local"), "--cores", "2")

    cmd = [
        "timeout",
        "-s",
        "KILL",
        str(RUN_LIMIT_S),
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(slurm_dir),
        *PROFILES,
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=slurm_dir)
    output = run.stdout + run.stderr
    assert run.returncode == 0, (
        f"SLURM run failed ({run.returncode}; -9 = killed after {RUN_LIMIT_S} s):\n{output[-6000:]}"
    )

    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    jobs = _sacct(run_id)
    assert {job["State"] for job in jobs} == {"COMPLETED"}, jobs
    ran = Counter(_rule(job["Comment"]) for job in jobs)
    assert ran == {rule: n for rule, n in expected.items() if rule not in LOCAL_RULES}
    for job in jobs:
        gpu = _rule(job["Comment"]) in GPU_RULES
        assert job["Account"] == "finescope_ci", job
        assert job["Partition"] == ("ci_gpu" if gpu else "ci_cpu"), job
        assert ("gres/gpu=1" in job["AllocTRES"]) == gpu, job

    for table in TABLES:
        name = f"results/tables/{table}.csv"
        local, remote = _deterministic(local_dir / name), _deterministic(slurm_dir / name)
        assert len(local) > 0, name
        pd.testing.assert_frame_equal(remote, local, check_exact=False, rtol=0, atol=1e-6)


def _deterministic(path: Path) -> pd.DataFrame:
    """A result table without wall-clock measurements (train_seconds, examples_per_second)."""
    table = pd.read_csv(path)
    timing = [c for c in table.columns if "second" in c]
    if "measure" in table.columns:  # long form: one row per measure
        table = table[~table["measure"].astype(str).str.contains("second")]
    return table.drop(columns=timing).reset_index(drop=True)
