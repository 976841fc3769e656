"""The execution profiles and the DAG drawing.

`snakemake -n` of the study's grid (config/paper.yaml) under profiles/local and profiles/slurm:
the jobs each schedules and the resources each job would ask for, read from the dry-run's job
printout. Needs neither a GPU nor SLURM: a dry run under `executor: slurm` submits nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from tests.workflow_utils import ROOT, dry_run_jobs

PAPER = ROOT / "config" / "paper.yaml"
LOCAL = ROOT / "profiles" / "local"
SLURM = ROOT / "profiles" / "slurm"
SLURM_CI = ROOT / "profiles" / "slurm-ci"
GPU_RULES = {"finetune", "extract"}
ANALYSIS_RULES = ["data_table", "tables", "correlations", "figures", "summary"]
# Run by Snakemake itself, never submitted: a localrule, and the target rule with nothing to run.
NOT_SUBMITTED = {"prepare_model", "all"}


def _profile(path) -> dict:
    return yaml.safe_load((path / "config.yaml").read_text())


def expected_paper_counts() -> dict[str, int]:
    """Jobs per rule of the study's grid (the same arithmetic as test_workflow_plan)."""
    config = yaml.safe_load(PAPER.read_text())
    tasks, models = len(config["tasks"]), len(config["models"])
    trained = len([f for f in config["fractions"] if f > 0]) * len(config["seeds"])
    internal = 2 + trained  # pre-trained, random-weights baseline, trained points
    counts = {
        "prepare_data": tasks,
        "prepare_model": models,
        "subsample": tasks * trained,
        "finetune": tasks * models * trained,
        "extract": tasks * models * internal * 2,
        "probe": tasks * models * internal,
        "compare": tasks * models * trained,
        "all": 1,
    }
    return counts | dict.fromkeys(ANALYSIS_RULES, 1)


@pytest.fixture(scope="module")
def local_jobs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("local")
    return dry_run_jobs(workdir, "--configfile", str(PAPER), "--profile", str(LOCAL))


@pytest.fixture(scope="module")
def slurm_jobs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm")
    return dry_run_jobs(workdir, "--configfile", str(PAPER), "--profile", str(SLURM))


def test_local_profile_plans_the_paper_grid_one_gpu_job_per_gpu(local_jobs):
    assert Counter(job["rule"] for job in local_jobs) == expected_paper_counts()
    for job in local_jobs:
        gpu = 1 if job["rule"] in GPU_RULES else 0
        assert job["resources"]["gpu"] == gpu, job
    finetune = next(job for job in local_jobs if job["rule"] == "finetune")
    # The rule's own values pass through: threads, and memory scaled by the attempt.
    assert finetune["threads"] == 2
    assert finetune["resources"]["mem_mb"] == 8000 and finetune["resources"]["runtime"] == 240
    profile = _profile(LOCAL)
    # The global limit that makes GPU jobs queue one per GPU.
    assert isinstance(profile["resources"]["gpu"], int) and profile["resources"]["gpu"] >= 1
    assert profile["cores"] == "all"
    assert profile["keep-going"] and profile["rerun-incomplete"] and profile["printshellcmds"]


def test_slurm_profile_plans_the_paper_grid_with_gpu_requests(slurm_jobs):
    assert Counter(job["rule"] for job in slurm_jobs) == expected_paper_counts()
    profile = _profile(SLURM)
    assert profile["executor"] == "slurm"
    for job in slurm_jobs:
        resources = job["resources"]
        if job["rule"] in GPU_RULES:
            assert resources["slurm_partition"] == "gpu", job
            assert resources["gpu"] == 1 and resources["cpus_per_gpu"] == 8, job
            assert resources["mem_mb"] == 32000, job  # "32000 * attempt" at the first attempt
        elif job["rule"] not in NOT_SUBMITTED:
            assert resources["slurm_partition"] == "cpu", job
            assert "gpu" not in resources and "cpus_per_gpu" not in resources, job
        assert resources["slurm_account"] == "finescope", job
        assert isinstance(resources["runtime"], int), job  # every sbatch gets a time limit
    by_rule = {job["rule"]: job["resources"] for job in slurm_jobs}
    assert by_rule["finetune"]["runtime"] == 480 and by_rule["extract"]["runtime"] == 180
    # CPU rules keep their own memory and time.
    assert by_rule["probe"]["mem_mb"] == 4000 and by_rule["probe"]["runtime"] == 120
    assert by_rule["compare"]["mem_mb"] == 4000 and by_rule["compare"]["runtime"] == 60
    # A retry asks for more memory: every memory the profile sets grows with the attempt.
    assert profile["retries"] >= 1
    for rule, resources in profile["set-resources"].items():
        if "mem_mb" in resources:
            expression = str(resources["mem_mb"])
            assert "attempt" in expression, rule
            assert eval(expression, {"attempt": 2}) == 2 * eval(expression, {"attempt": 1})
    for key in ("jobs", "latency-wait"):
        assert profile[key] > 0
    assert profile["keep-going"] and profile["rerun-incomplete"]


def test_slurm_ci_overlay_restates_every_resource_of_the_slurm_profile(tmp_path):
    """A later --profile replaces whole keys: the overlay must not drop a resource by accident."""
    base, overlay = _profile(SLURM), _profile(SLURM_CI)
    assert set(base["default-resources"]) <= set(overlay["default-resources"])
    for rule, resources in base["set-resources"].items():
        assert set(resources) <= set(overlay["set-resources"].get(rule, {})), rule
    # The overlay profile resolves on the default config: the test cluster's names.
    jobs = dry_run_jobs(
        tmp_path,
        "--configfile",
        str(ROOT / "config.yaml"),
        "--profile",
        str(SLURM),
        "--profile",
        str(SLURM_CI),
    )
    assert jobs
    for job in jobs:
        if job["rule"] in NOT_SUBMITTED:
            continue
        gpu = job["rule"] in GPU_RULES
        assert job["resources"]["slurm_partition"] == ("ci_gpu" if gpu else "ci_cpu"), job
        assert job["resources"]["slurm_account"] == "finescope_ci", job
        assert job["resources"].get("gpu", 0) == (1 if gpu else 0), job


def test_dag_writes_rule_graph_and_job_dag(tmp_path):
    out = tmp_path / "dag"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "finescope.dag",
            "--out",
            str(out),
            "--configfile",
            str(ROOT / "config.yaml"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    rulegraph = (out / "rulegraph.dot").read_text()
    dag = (out / "dag.dot").read_text()
    assert rulegraph.startswith("digraph") and dag.startswith("digraph")
    for rule in ["finetune", "extract", "probe", "compare", "prepare_model", *ANALYSIS_RULES]:
        assert f'label = "{rule}"' in rulegraph, rule
    # The job DAG of the default config: 8 fine-tuning jobs, one node each.
    assert dag.count('label = "finetune"') == 8
    if shutil.which("dot"):
        assert (out / "dag.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    else:
        assert "flowchart" in (out / "rulegraph.mmd").read_text()
        assert "flowchart" in (out / "dag.mmd").read_text()


def test_make_dag_calls_the_dag_module():
    dag_target = re.search(r"^dag:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert dag_target and "-m finescope.dag --out" in dag_target.group(1)
