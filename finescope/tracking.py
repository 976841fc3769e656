"""Optional experiment tracking with MLflow (config block ``tracking``).

With ``tracking.backend: mlflow`` every fine-tuning job logs one MLflow run (its settings as
params, the learning curve as step metrics, the final test metrics, tags task / model /
fraction / seed) and the analysis logs one more run with the headline measures and the
figures. MLflow is imported only then; it is the optional extra ``pip install .[tracking]``.
"""

from __future__ import annotations

import csv
import fcntl
import logging
import math
import os
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from finescope.errors import FinescopeError
from finescope.settings.tracking import TrackingSettings

log = logging.getLogger(__name__)

# MLflow caps a param value at 6000 characters; longer values are cut with a marker.
MAX_PARAM_CHARS = 6000


def enabled(tracking: Mapping[str, Any] | None) -> bool:
    return TrackingSettings.build(tracking).enabled


def _mlflow(s: TrackingSettings):
    try:
        import mlflow
    except ImportError as exc:
        raise FinescopeError(
            "config key tracking.backend is 'mlflow' but the mlflow package is not installed; "
            "install the extra with: pip install '.[tracking]' (or set tracking.backend: none)"
        ) from exc
    if s.uri:
        if str(s.uri).startswith("file:"):
            # mlflow-skinny has no SQL store, so a local folder is the local option; MLflow 3
            # refuses it unless told that it is wanted.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(s.uri)
    store = _local_store(mlflow.get_tracking_uri())
    if store is None:
        mlflow.set_experiment(s.experiment)
        return mlflow
    # A local store creates a missing experiment without a lock: two jobs starting at once
    # would each make one of the same name, and a run would land in the one nobody reads.
    store.mkdir(parents=True, exist_ok=True)
    with open(store / ".finescope-experiment.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            mlflow.set_experiment(s.experiment)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return mlflow


def _local_store(uri: str) -> Path | None:
    """The folder of a local (file) tracking store; None for a server or a database."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "":
        return Path(uri)
    return None


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: ``{"lora": {"r": 8}}`` -> ``{"lora.r": 8}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _params(values: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in flatten(values).items():
        text = str(value)
        out[key] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
    return out


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a flat mapping (booleans and text left out)."""
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    }


def read_curve(path: str | Path) -> list[dict]:
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def log_finetune_run(
    tracking: Mapping[str, Any] | None,
    point: Mapping[str, Any],
    settings: Mapping[str, Any],
    metrics: Mapping[str, Any],
    curve_path: str | Path,
) -> str | None:
    """One MLflow run for one fine-tuning job; returns its run id (None when tracking is off).

    Params: the fine-tuning settings (dotted keys for nested blocks). Step metrics: ``loss``,
    ``learning_rate``, ``dev_score`` (at the steps that have one) and
    ``examples_per_second`` from ``curve.csv``. Final metrics: the numeric top-level test
    metrics (``test_<name>``) and ``dev_score``. Tags: task, model, fraction, seed, stage.
    """
    s = TrackingSettings.build(tracking)
    if not s.enabled:
        return None
    mlflow = _mlflow(s)
    tags = {key: str(point[key]) for key in ("task", "model", "fraction", "seed")}
    name = "{task}/{model}/f{fraction}/s{seed}".format(**tags)
    final = {f"test_{key}": value for key, value in _numbers(metrics).items()}
    best_dev = (metrics.get("dev") or {}).get("score")
    if isinstance(best_dev, (int, float)):
        final["best_dev_score"] = float(best_dev)
    with mlflow.start_run(run_name=name, tags={**tags, "stage": "finetune"}) as run:
        mlflow.log_params(_params(settings))
        for row in read_curve(curve_path):
            step = int(row["step"])
            values = {
                key: float(row[key])
                for key in ("loss", "learning_rate", "dev_score", "examples_per_second")
                if row.get(key) not in (None, "")
            }
            mlflow.log_metrics(values, step=step)
        mlflow.log_metrics(final)
        run_id = run.info.run_id
    log.info("tracking: logged MLflow run %s (%s) to %s", run_id, name, mlflow.get_tracking_uri())
    return run_id


def log_analysis_run(
    tracking: Mapping[str, Any] | None,
    downstream: Any,
    correlations: Any,
    grid: Mapping[str, Any] | None = None,
    figures: list[str | Path] = (),
) -> str | None:
    """One MLflow run for the analysis: mean downstream score per task × model × fraction,
    the number of powered tests and of tests with q < 0.05, the figures as artifacts."""
    s = TrackingSettings.build(tracking)
    if not s.enabled:
        return None
    mlflow = _mlflow(s)
    metrics: dict[str, float] = {}
    if downstream is not None and len(downstream):
        scores = downstream[downstream["measure"] == "score"] if "measure" in downstream else None
        if scores is not None and len(scores):
            means = scores.groupby(["task", "model", "fraction"])["value"].mean()
            for (task, model, fraction), value in means.items():
                metrics[f"score.{task}.{model}.f{fraction}"] = float(value)
    if correlations is not None and len(correlations):
        powered = correlations[~correlations["underpowered"].astype(bool)]
        metrics["tests"] = float(len(correlations))
        metrics["tests_powered"] = float(len(powered))
        q = powered["q_value"].astype(float)
        metrics["tests_q_below_0.05"] = float((q < 0.05).sum())
    with mlflow.start_run(run_name="analysis", tags={"stage": "analysis"}) as run:
        if grid:
            mlflow.log_params(_params({f"grid.{k}": v for k, v in grid.items()}))
        mlflow.log_metrics(metrics)
        for path in figures:
            mlflow.log_artifact(str(path), artifact_path="figures")
        run_id = run.info.run_id
    log.info("tracking: logged MLflow analysis run %s to %s", run_id, mlflow.get_tracking_uri())
    return run_id
