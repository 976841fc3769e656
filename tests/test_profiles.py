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
from pathlib import Path

import pytest
import yaml

from finescope.data import is_hub_dataset
from tests.workflow_utils import ROOT, dry_run_jobs, snakemake

PAPER = ROOT / "config" / "paper.yaml"
LOCAL = ROOT / "profiles" / "local"
SLURM = ROOT / "profiles" / "slurm"
SLURM_CI = ROOT / "profiles" / "slurm-ci"
GPU_RULES = {"finetune", "extract"}
ANALYSIS_RULES = ["data_table", "tables", "correlations", "figures", "summary"]
# Run by Snakemake itself, never submitted: the local rules, and the target rule (nothing to run).
NOT_SUBMITTED = {"prepare_model", "fetch_data", "all"}
THREADED_RULES = ["finetune", "extract", "probe", "compare"]


def _profile(path) -> dict:
    return yaml.safe_load((path / "profile.yaml").read_text())


def expected_paper_counts() -> dict[str, int]:
    """Jobs per rule of the study's grid (the same arithmetic as test_workflow_plan)."""
    config = yaml.safe_load(PAPER.read_text())
    tasks, models = len(config["tasks"]), len(config["models"])
    trained = len([f for f in config["fractions"] if f > 0]) * len(config["seeds"])
    internal = 2 + trained  # pre-trained, random-weights baseline, trained points
    counts = {
        "prepare_data": tasks,
        "prepare_model": models,
        # The hub datasets (NER's tner/bionlp2004); MedNLI is read from local files.
        "fetch_data": sum(is_hub_dataset(t["data"]) for t in config["tasks"].values()),
        "subsample": tasks * trained,
        "finetune": tasks * models * trained,
        "extract": tasks * models * internal,
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
    assert finetune["threads"] == 1
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
            assert resources["gpu"] == 1, job
            assert resources["mem_mb"] == 32000, job  # "32000 * attempt" at the first attempt
        elif job["rule"] not in NOT_SUBMITTED:
            assert resources["slurm_partition"] == "cpu", job
            assert "gpu" not in resources, job
        # The CPUs asked for come from the threads alone (test_slurm_cpus_are_the_threads).
        assert "cpus_per_gpu" not in resources and "cpus_per_task" not in resources, job
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


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_dag_writes_both_graphs(tmp_path):
    """`make dag` itself, with this interpreter (-o install: no venv check or install)."""
    out = tmp_path / "graphs"
    result = subprocess.run(
        ["make", "-o", "install", "dag", f"DAG_OUT={out}", f"BIN={Path(sys.executable).parent}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for graph in ("rulegraph", "dag"):
        assert (out / f"{graph}.dot").read_text().startswith("digraph"), graph
    assert (out / "dag.dot").read_text().count('label = "finetune"') == 8


def test_slurm_cpus_are_the_threads_each_job_gives_torch(tmp_path):
    """What sbatch asks for (the SLURM plugin's own rule, on each planned job) equals the job's
    threads, which the job hands to torch.set_num_threads and the BLAS pools."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.partitions import get_job_cpu_requirement

    # A dry run caps threads at --cores (1 when not given); a real run under the SLURM
    # executor does not, so plan with more cores than any rule asks for.
    jobs = dry_run_jobs(
        tmp_path, "--configfile", str(PAPER), "--profile", str(SLURM), "--cores", "256"
    )
    wanted = _profile(SLURM)["set-threads"]
    assert set(wanted) == set(THREADED_RULES)
    seen = set()
    for job in jobs:
        if job["rule"] in NOT_SUBMITTED:
            continue
        fake = SimpleNamespace(threads=job["threads"], resources=job["resources"])
        cpus, kind = get_job_cpu_requirement(fake)
        assert (cpus, kind) == (job["threads"], "task"), job
        if job["rule"] in wanted:
            assert job["threads"] == wanted[job["rule"]], job
            seen.add(job["rule"])
    assert seen == set(THREADED_RULES)
    # The scripts of these rules pass the job's threads on to job.logged.
    for rule in THREADED_RULES:
        call = _logged_call(rule)
        assert _keyword(call, "threads") == "snakemake.threads", rule


def test_slurm_ci_threads_fit_the_test_cluster():
    threads = _profile(SLURM_CI)["set-threads"]
    assert set(threads) == set(_profile(SLURM)["set-threads"])
    assert all(1 <= n <= 2 for n in threads.values())


def _logged_call(rule: str):
    """The ``job.logged(...)`` call of a rule's script."""
    import ast

    tree = ast.parse((ROOT / "scripts" / f"{rule}.py").read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "logged"
    ]
    assert len(calls) == 1, rule
    return calls[0]


def _keyword(call, name: str):
    import ast

    for keyword in call.keywords:
        if keyword.arg == name:
            return ast.unparse(keyword.value)
    return None


def _local_rules() -> set[str]:
    """The rules the workflow declares local (``localrules:``), read from the loaded workflow."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from snakemake.api import SnakemakeApi\n"
        "from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings\n"
        "with SnakemakeApi(OutputSettings(quiet={'all'})) as api:\n"
        "    wf = api.workflow(\n"
        "        resource_settings=ResourceSettings(),\n"
        "        config_settings=ConfigSettings(configfiles=[Path(sys.argv[2])]),\n"
        "        snakefile=Path(sys.argv[1]),\n"
        "        workdir=Path(sys.argv[3]),\n"
        "    )\n"
        "    print(' '.join(sorted(wf._workflow._localrules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "Snakefile"), str(PAPER), str(ROOT)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return set(result.stdout.split())


def test_only_local_jobs_may_use_the_network_under_slurm(tmp_path):
    """`HF_HUB_OFFLINE=1 snakemake -n --profile profiles/slurm --configfile config/paper.yaml`
    plans the grid offline; of its jobs, those that may reach the Hub (their script runs
    job.logged with offline=False) are exactly the local rules, which run on the login
    node; every submitted job's script sets HF_HUB_OFFLINE=1 itself (offline defaults to
    True), whatever the environment it is started in."""
    result = snakemake(
        tmp_path,
        "-n",
        "--configfile",
        str(PAPER),
        "--profile",
        str(SLURM),
        env={"HF_HUB_OFFLINE": "1"},
    )
    planned = {
        m.group(1) for m in re.finditer(r"^rule (\w+):$", result.stdout + result.stderr, re.M)
    }
    assert planned == set(expected_paper_counts()), planned
    local = _local_rules()
    assert local == {"prepare_model", "fetch_data"}
    for rule in sorted(planned - {"all"}):
        offline = _keyword(_logged_call(rule), "offline")
        if rule in local:
            assert offline == "False", rule  # may download
        else:
            assert offline is None, rule  # the default: offline


def test_make_does_not_force_the_hub_offline_for_local_jobs():
    """HF_HUB_OFFLINE=1 only for the test targets: `make run` and the local download jobs it
    starts may reach the Hub."""
    makefile = (ROOT / "Makefile").read_text()
    assert not re.search(r"^export HF_HUB_OFFLINE", makefile, re.M)
    result = subprocess.run(
        ["make", "-n", "run", "test", "TORCH=cpu", "VENV=/nonexistent/venv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    snakemake_lines = [line for line in lines if "/snakemake " in line]
    assert snakemake_lines and not any("HF_HUB_OFFLINE" in line for line in snakemake_lines)
    assert any("HF_HUB_OFFLINE=1" in line and "pytest" in line for line in lines)
    # TORCH=cpu takes the CPU index; the stamp names the build, so switching reinstalls.
    assert "--index-url https://download.pytorch.org/whl/cpu" in result.stdout
    assert "/nonexistent/venv/.installed-torch-cpu" in result.stdout


def test_the_download_step_plans_only_the_local_jobs(tmp_path):
    """README "Running the study", step 3: on the login node, models and data only."""
    from tests.workflow_utils import planned_jobs

    jobs = planned_jobs(
        tmp_path,
        "--configfile",
        str(PAPER),
        "--profile",
        str(SLURM),
        "--until",
        "prepare_model",
        "fetch_data",
    )
    counts = expected_paper_counts()
    assert jobs == {"prepare_model": counts["prepare_model"], "fetch_data": counts["fetch_data"]}
