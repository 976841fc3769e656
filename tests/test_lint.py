"""The code style gates: ruff, snakefmt and Snakemake's own linter stay clean."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.workflow_utils import ROOT


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "ruff", "check", "."],
        [sys.executable, "-m", "ruff", "format", "--check", "."],
        [sys.executable, "-m", "snakefmt", "--check", "."],
        [sys.executable, "-m", "snakemake", "--lint"],
        [sys.executable, "-m", "snakemake", "--lint", "--configfile", ".test/config/config.yaml"],
    ],
    ids=["ruff-check", "ruff-format", "snakefmt", "snakemake-lint", "snakemake-lint-test-config"],
)
def test_linters_are_clean(command):
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
