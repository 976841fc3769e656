"""Bad config input is refused when the DAG is planned, before any job runs: each message names
the config key and the file and line that set it. A job that fails on bad data says so in one
line on the console; the traceback is in its log."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from finescope import job_warnings
from finescope import plan as plan_module
from finescope.errors import FinescopeError
from finescope.workflow import check_config_files
from tests.workflow_utils import ROOT, merge_config, snakemake, tiny_config

NER_ONLY = {"ner": {"data": {"source": "synthetic", "train": 40, "dev": 9, "test": 15}}}
NLI_ONLY = {"nli": {"data": {"source": "synthetic", "train": 40, "dev": 9, "test": 15}}}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A folder that passes for a model when planning (no job reads it)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def _write(workdir: Path, model_dir: Path, changes: dict) -> Path:
    """The tiny config with ``changes`` merged in (``tasks`` replaced), as bad.yaml."""
    base = yaml.safe_load(tiny_config(workdir, {"bert": (model_dir, "encoder")}).read_text())
    base["tasks"] = changes.pop("tasks", base["tasks"])
    config = workdir / "bad.yaml"
    config.write_text(yaml.safe_dump(merge_config(base, changes), sort_keys=False))
    return config


def _line(config: Path, text: str) -> int:
    """The number of the one line of ``config`` that holds ``text``."""
    lines = [i + 1 for i, line in enumerate(config.read_text().splitlines()) if text in line]
    assert len(lines) == 1, (text, lines)
    return lines[0]


def _refused(workdir: Path, config: Path) -> str:
    """``snakemake -n`` on ``config`` fails before planning a job; its output."""
    result = snakemake(workdir, "-n", "--configfile", str(config), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "Job stats:" not in output and "Traceback" not in output, output[-3000:]
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()
    return output


# name: (config changes, the line's text, the key, what the message says)
BAD = {
    "model learning rate not a number": (
        {"models": {"bert": {"finetune": {"learning_rate": "abc"}}}},
        "learning_rate: abc",
        "models.bert.finetune.learning_rate",
        "'abc' is not of type 'number'",
    ),
    "model batch size 0": (
        {"models": {"bert": {"finetune": {"batch_size": 0}}}},
        "batch_size: 0",
        "models.bert.finetune.batch_size",
        "0 is less than the minimum of 1",
    ),
    "model lora unknown key": (
        {"models": {"bert": {"finetune": {"lora": {"rank": 4}}}}},
        "rank: 4",
        "models.bert.finetune.lora.rank",
        "unknown key under models.bert.finetune.lora; allowed keys are alpha, dropout, enabled, r",
    ),
    "model extract nli_view": (
        {"models": {"bert": {"extract": {"nli_view": "separate"}}}},
        "nli_view: separate",
        "models.bert.extract.nli_view",
        "unknown key under models.bert.extract; allowed keys are batch_size, bf16_autocast, "
        "device, dtype, max_length, ner_pooling, padding_side",
    ),
    "model extract max_length": (
        {"models": {"bert": {"extract": {"max_length": 4}}}},
        "max_length: 4",
        "models.bert.extract.max_length",
        "4 is less than the minimum of 8",
    ),
    "svm gamma": (
        {"probe": {"svm": {"gamma": "abc"}}},
        "gamma: abc",
        "probe.svm.gamma",
        "'abc' is none of the allowed forms: 'abc' is not one of ['scale', 'auto']; "
        "'abc' is not of type 'number'",
    ),
    "mlp hidden": (
        {"probe": {"mlp": {"hidden": 0}}},
        "hidden: 0",
        "probe.mlp.hidden",
        "0 is less than the minimum of 1",
    ),
    "bilstm_crf unknown key": (
        {"probe": {"bilstm_crf": {"dropout": 0.5}}},
        "dropout: 0.5",
        "probe.bilstm_crf.dropout",
        "unknown key under probe.bilstm_crf; allowed keys are batch_size, epochs, hidden, lr",
    ),
    "mdl portions too few": (
        {"probe": {"mdl": {"portions": [100]}}},
        "portions:",
        "probe.mdl.portions",
        "[100] is too short",
    ),
    "mdl portions not increasing": (
        {"probe": {"mdl": {"portions": [10, 5, 100]}}},
        "portions:",
        "probe.mdl.portions",
        "[10, 5, 100] must increase strictly and end at 100",
    ),
    "mdl probe": (
        {"probe": {"mdl": {"probe": "svm"}}},
        "probe: svm",
        "probe.mdl.probe",
        "'svm' is not one of ['linear', 'mlp']",
    ),
    "svm without nli": (
        {"tasks": NER_ONLY, "probe": {"probes": ["svm"]}},
        "- svm",
        "probe.probes[0]",
        "probe 'svm' serves the nli task only, which this config does not study (tasks: ner). "
        "Probes serve: linear every task; mlp every task; svm nli only; bilstm_crf ner only.",
    ),
    "bilstm_crf without ner": (
        {"tasks": NLI_ONLY, "probe": {"probes": ["linear", "bilstm_crf"]}},
        "- bilstm_crf",
        "probe.probes[1]",
        "probe 'bilstm_crf' serves the ner task only",
    ),
    "model ref is a file": (
        {"models": {"bert": {"ref": "{workdir}/weights.bin"}}},
        "weights.bin",
        "models.bert.ref",
        "local path {workdir}/weights.bin is a file; give the model folder (the one with "
        "config.json)",
    ),
    "keep_model per model": (
        {"models": {"bert": {"finetune": {"keep_model": False}}}},
        "keep_model: false",
        "models.bert.finetune.keep_model",
        "what the workflow keeps on disk is one setting for every model; set it in the "
        "top-level finetune block.",
    ),
    "model ref without config.json": (
        {"models": {"bert": {"ref": "{workdir}/empty"}}},
        "/empty",
        "models.bert.ref",
        "local folder {workdir}/empty has no config.json, so it is not a model folder",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_setting_is_refused_at_plan_time_naming_key_file_and_line(case, model_dir, tmp_path):
    changes, text, key, message = BAD[case]
    (tmp_path / "weights.bin").write_bytes(b"\0")
    (tmp_path / "empty").mkdir()
    changes = yaml.safe_load(yaml.safe_dump(changes).replace("{workdir}", str(tmp_path)))
    config = _write(tmp_path, model_dir, changes)
    output = _refused(tmp_path, config)
    message = message.replace("{workdir}", str(tmp_path.resolve()))
    expected = f"{config}:{_line(config, text)}: config key {key}: {message}"
    assert expected in output, f"{expected!r} not in:\n{output[-3000:]}"


def test_per_model_overrides_get_no_defaults_and_merge_over_the_top_level(model_dir, tmp_path):
    from snakemake.utils import validate

    from finescope.workflow import Grid

    config = yaml.safe_load(tiny_config(tmp_path, {"bert": (model_dir, "encoder")}).read_text())
    config["models"]["bert"]["finetune"] = {"epochs": 2, "lora": {"r": 4}}
    config["models"]["bert"]["extract"] = {"dtype": "float16"}
    validate(config, str(ROOT / "schemas" / "config.schema.yaml"))
    assert config["models"]["bert"]["finetune"] == {"epochs": 2, "lora": {"r": 4}}
    assert config["models"]["bert"]["extract"] == {"dtype": "float16"}
    grid = Grid.from_config(config)
    settings = grid.finetune_settings("bert", seed=1)
    assert settings.epochs == 2 and settings.learning_rate == 0.001
    assert settings.lora.to_dict() == {"enabled": False, "r": 4, "alpha": 16, "dropout": 0.1}
    extract = grid.extract_settings("bert", "test", task="ner")
    assert extract.dtype == "float16" and extract.batch_size == 8


def test_the_last_config_file_that_sets_a_key_is_named(model_dir, tmp_path):
    base = tiny_config(tmp_path, {"bert": (model_dir, "encoder")})
    extra = tmp_path / "extra.yaml"
    extra.write_text("seeds: [1]\nfinetune:\n  epochs: 1\n  warmup_ratio: 2\n")
    result = snakemake(tmp_path, "-n", "--configfile", str(base), str(extra), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        f"{extra}:4: config key finetune.warmup_ratio: 2 is greater than the maximum of 1" in output
    ), output[-3000:]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "tasks:\n  ner: {data: {source: synthetic}\nmodels:\n  a: {ref: x}\n",
            "line 3, column 1: not valid YAML: expected ',' or '}', but got '<scalar>' "
            "(while parsing a flow mapping started at line 2)",
        ),
        (
            "tasks:\n\tner: {}\n",
            "line 2, column 1: not valid YAML: found character '\\t' that cannot start any "
            "token (while scanning for the next token). Indent with spaces, not tabs.",
        ),
        ("", "line 1: the file is empty (or only comments)"),
        ("# nothing yet\n", "line 1: the file is empty (or only comments)"),
        ("- a\n- b\n", "line 1: expected settings (key: value lines) at the top level"),
    ],
)
def test_a_config_file_that_is_not_settings_is_refused_with_its_line(text, message, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(FinescopeError) as caught:
        check_config_files([path])
    assert str(caught.value).startswith(f"config file {path} {message}") or str(
        caught.value
    ).startswith(f"config file {path}: {message}"), str(caught.value)


def test_a_broken_default_config_yaml_is_reported_by_the_workflow_with_its_line(tmp_path):
    (tmp_path / "config.yaml").write_text("tasks: {nli: [\n  bad\n")
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert (
        "config file config.yaml line 3, column 1: not valid YAML" in result.stdout + result.stderr
    )


def test_a_broken_configfile_is_reported_with_its_line_before_snakemake_reads_it(tmp_path):
    """Snakemake reads ``--configfile`` before the workflow runs ("Config file is not valid
    JSON or YAML", no file, no line): `make run CONFIG=F` and `make plan` check it first."""
    path = tmp_path / "broken.yaml"
    path.write_text("tasks: {nli: [\n  bad\n")
    result = subprocess.run(
        [sys.executable, "-m", "finescope.workflow", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"finescope: config file {path} line 3, column 1: not valid YAML: expected ',' or ']', "
        "but got '<stream end>' (while parsing a flow sequence started at line 1)."
    ], result.stderr
    with pytest.raises(FinescopeError, match=r"broken.yaml line 3, column 1: not valid YAML"):
        plan_module.load_config(path)
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(FinescopeError, match="empty.yaml line 1: the file is empty"):
        plan_module.load_config(tmp_path / "empty.yaml")
    makefile = (ROOT / "Makefile").read_text()
    assert "-m finescope.workflow $(CONFIG)\n\t$(BIN)/snakemake --cores $(CORES) --configfile" in (
        makefile
    )


def test_a_json_config_file_is_left_to_snakemake(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"tasks": {"ner": {"data": {"source": "synthetic"}}}}')
    check_config_files([path, tmp_path / "absent.yaml"])


# ---------------------------------------------------------------------------------------------
# A job's failure on the console
# ---------------------------------------------------------------------------------------------

JOB = """
from finescope import job
from finescope import job_warnings
from finescope import plan as plan_module
from finescope.errors import FinescopeError

with job.logged({log!r}):
    job.log.info("working")
    raise {error}
"""


def _job(tmp_path: Path, error: str) -> tuple[subprocess.CompletedProcess, Path]:
    log = tmp_path / "logs" / "job.log"
    code = textwrap.dedent(JOB).format(log=str(log), error=error)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env
    )
    return result, log


def test_a_finescope_error_is_one_line_on_stderr_and_its_traceback_in_the_log(tmp_path):
    result, log = _job(tmp_path, 'FinescopeError("data/x.tsv:3: expected a token and a tag")')
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"finescope: data/x.tsv:3: expected a token and a tag (log: {log})"
    assert "Traceback" not in result.stderr
    text = log.read_text()
    assert "working" in text and "Traceback" in text and "expected a token and a tag" in text


def test_an_unexpected_error_keeps_its_traceback(tmp_path):
    result, log = _job(tmp_path, 'KeyError("probes")')
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "KeyError: 'probes'" in result.stderr
    assert "Traceback" in log.read_text()


@pytest.mark.workflow
def test_a_failing_data_job_prints_its_message_and_log_as_the_last_line(model_dir, tmp_path):
    bad = tmp_path / "corpus" / "train.tsv"
    bad.parent.mkdir()
    bad.write_text("Aspirin\tB-Chemical\nreduces\n\n")
    for split in ("dev", "test"):
        (bad.parent / f"{split}.tsv").write_text("Aspirin\tB-Chemical\n\n")
    files = {"source": "files", "format": "tsv"}
    files |= {s: f"corpus/{s}.tsv" for s in ("train", "dev", "test")}
    config = tiny_config(tmp_path, {"bert": (model_dir, "encoder")}, tasks={"ner": {"data": files}})
    result = snakemake(
        tmp_path,
        "results/data/ner/labels.json",
        "--cores",
        "1",
        "--configfile",
        str(config),
        check=False,
    )
    assert result.returncode != 0
    message = (
        "finescope: corpus/train.tsv:2: expected a token and a tag (tab-separated), "
        "got 'reduces'; fix the line. (log: logs/prepare_data/ner.log)"
    )
    assert message in result.stderr, result.stderr[-3000:]
    # The job's line comes right before Snakemake's own report of the failed rule.
    tail = result.stderr[result.stderr.index(message) :]
    assert "Error in rule prepare_data" in tail
    assert "Traceback" not in result.stderr
    log = (tmp_path / "logs/prepare_data/ner.log").read_text()
    assert "Traceback" in log and "expected a token and a tag" in log


@pytest.mark.workflow
def test_a_run_counts_its_warnings_and_a_subset_without_every_label_stops_it(model_dir, tmp_path):
    """The data jobs of a run whose dev split is too small to hold every label (a warning),
    then the same run with a fraction too small for every label (an error)."""
    tasks = {"nli": {"data": {"source": "synthetic", "train": 40, "dev": 2, "test": 15}}}
    config = tiny_config(tmp_path, {"bert": (model_dir, "encoder")}, tasks=tasks)
    target = ("results/tables/data.csv", "--cores", "1", "--configfile", str(config))
    result = snakemake(tmp_path, *target)
    records = job_warnings.collect(tmp_path / "logs")
    assert records and all(r["job"] == "prepare_data/nli" for r in records)
    assert any("the dev split has no" in r["message"] for r in records)
    count = f"finescope: {len(records)} warning{'s' if len(records) > 1 else ''}"
    assert f"{count} (see logs/**/*.warnings.jsonl)" in result.stderr, result.stderr[-3000:]

    # 5 % of the 24 training items is 1 item: two of the three labels cannot be in it.
    config = tiny_config(tmp_path, {"bert": (model_dir, "encoder")}, tasks=tasks, fractions=[0, 5])
    result = snakemake(tmp_path, *target, check=False)
    assert result.returncode != 0
    assert (
        "finescope: subsample: the nli training subset at fraction 5%, seed 1 has 1 items and "
        "cannot hold every one of the 3 labels" in result.stderr
    ), result.stderr[-3000:]
    assert "(log: logs/subsample/nli/f5/s1.log)" in result.stderr
    tail = result.stderr[result.stderr.index("Error in rule subsample") :]
    assert f"{count} (see logs/**/*.warnings.jsonl)" in tail, tail
