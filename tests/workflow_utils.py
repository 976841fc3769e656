"""Running Snakemake from tests: a tiny config, dry-run job counts, full runs."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def snakemake(
    workdir: Path,
    *args: str,
    check: bool = True,
    timeout: int = 3600,
    env: dict[str, str] | None = None,
    unset: tuple[str, ...] = (),
):
    """Run the project's Snakefile with ``workdir`` as working directory; ``env`` adds to the
    environment that Snakemake and its jobs see, ``unset`` names variables removed from it.
    The timeout catches a hang, not a slow run on a loaded machine."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    env = {k: v for k, v in env.items() if k not in unset}
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return result


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Jobs per rule that ``snakemake -n`` would run (empty when nothing is to be done)."""
    result = snakemake(workdir, "-n", *args)
    text = result.stdout + result.stderr
    counts: dict[str, int] = {}
    if "Job stats:" not in text:
        return counts
    table = text.split("Job stats:", 1)[1]
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
        if not match:
            if counts:
                break
            continue
        if match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def _value(text: str):
    try:
        return int(text)
    except ValueError:
        return text


def dry_run_jobs(workdir: Path, *args: str) -> list[dict]:
    """Every job of ``snakemake -n``: its rule, wildcards, reason, threads and resources, read
    from the dry run's job printout."""
    result = snakemake(workdir, "-n", *args)
    jobs: list[dict] = []
    for line in (result.stdout + result.stderr).splitlines():
        start = re.match(r"^(local)?rule (\w+):$", line)
        if start:
            jobs.append(
                {
                    "rule": start.group(2),
                    "threads": 1,
                    "resources": {},
                    "wildcards": {},
                    "reason": "",
                }
            )
        elif not jobs:
            continue
        elif line.startswith("    threads: "):
            jobs[-1]["threads"] = int(line.split(":", 1)[1])
        elif line.startswith("    resources: "):
            pairs = line.split(":", 1)[1].split(", ")
            jobs[-1]["resources"] = {
                key.strip(): _value(value) for key, value in (p.split("=", 1) for p in pairs)
            }
        elif line.startswith("    wildcards: "):
            pairs = line.split(":", 1)[1].split(", ")
            jobs[-1]["wildcards"] = dict(p.strip().split("=", 1) for p in pairs)
        elif line.startswith("    reason: "):
            jobs[-1]["reason"] = line.split(":", 1)[1].strip()
    return jobs


# The test config (the Snakemake workflow catalog's place for it).
TEST_CONFIG = ROOT / ".test" / "config" / "config.yaml"


def tiny_config(workdir: Path, models: dict[str, Path], **overrides) -> Path:
    """Write the test config with ``models`` (name -> (folder, family)) in place of its own, so
    the whole DAG runs on tiny random models in about a minute."""
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["models"] = {
        name: {"ref": str(path), "family": family, "domain": "general"}
        for name, (path, family) in models.items()
    }
    for key, value in overrides.items():
        config[key] = value
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def merge_config(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in, nested mappings key by key (a copy)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out
