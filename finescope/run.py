"""A finished run, loaded for a notebook: ``finescope.load_run("path/to/project")``.

Everything a run leaves in ``results/`` (and ``resources/models/``) in one object: the tidy
tables, the resolved config the run used, and where its models and data came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from finescope.errors import FinescopeError
from finescope.io import atomic_path, read_json

CONFIG_FILE = "config.resolved.yaml"
# Files whose absence means the folder is not a finished finescope run.
REQUIRED = ("tables/measures.parquet", "tables/correlations.csv", "tables/downstream.csv")


@dataclass
class Run:
    """The results of one finescope run.

    Attributes
    ----------
    root
        The project folder (the one holding ``results/``).
    measures
        ``results/tables/measures.parquet``: every number of the run, tidy (task, model,
        family, domain, fraction, seed, layer, relative_depth, head, source, probe, measure,
        value).
    correlations, downstream, data
        ``correlations.csv``, ``downstream.csv`` and ``data.csv`` of ``results/tables``.
    config
        The resolved config the run used (``results/config.resolved.yaml``: the config file
        with every default filled in); None for a run made before it was written.
    models
        ``{model: facts}`` from ``resources/models/<model>.json`` (reference, source folder,
        layers, heads, width and, where recorded, the resolved revision).
    data_files
        ``{task: {"provenance": ..., "files": {split: {"path", "sha256"}}}}``: the provenance
        that ``results/data/<task>/labels.json`` records and the sha256 of each canonical split
        file the run read.
    """

    root: Path
    measures: pd.DataFrame
    correlations: pd.DataFrame
    downstream: pd.DataFrame
    data: pd.DataFrame
    config: dict | None
    models: dict[str, dict] = field(default_factory=dict)
    data_files: dict[str, dict] = field(default_factory=dict)

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def figures(self) -> dict[str, Path]:
        """``{name: results/figures/<name>.png}`` of the figures the run drew."""
        folder = self.results / "figures"
        return {p.stem: p for p in sorted(folder.glob("*.png"))}

    def curves(self) -> pd.DataFrame:
        """The learning curves of every fine-tuning job (see
        :func:`finescope.figures.read_curves`)."""
        from finescope.figures import read_curves

        return read_curves(*self._finetune_files("curve.csv"))

    def predictions(self) -> pd.DataFrame:
        """Test predictions of every fine-tuning job, one row per item (NLI) or word (NER)
        (see :func:`finescope.figures.read_predictions`)."""
        from finescope.figures import read_predictions

        return read_predictions(*self._finetune_files("metrics.json"))

    def _finetune_files(self, name: str) -> tuple[list[Path], list[dict]]:
        """``results/finetune/<point>/<name>`` of every fine-tuned grid point of the downstream
        table that has one, and those points (the paths are built from the points)."""
        paths, points = [], []
        keys = ["task", "model", "fraction", "seed"]
        for point in self.downstream[keys].drop_duplicates().to_dict("records"):
            point = {**point, "fraction": str(point["fraction"]), "seed": int(point["seed"])}
            path = (
                self.results
                / "finetune"
                / point["task"]
                / point["model"]
                / f"f{point['fraction']}"
                / f"s{point['seed']}"
                / name
            )
            if path.is_file():
                paths.append(path)
                points.append(point)
        return paths, points

    def probe_scores(self, measure: str = "macro_f1") -> pd.DataFrame:
        """Probe ``measure`` on the test split per task, model, fraction, seed, probe, layer."""
        rows = self.measures[
            (self.measures["source"] == "probing") & (self.measures["measure"] == measure)
        ]
        keys = ["task", "model", "fraction", "seed", "probe", "layer"]
        return rows[[*keys, "value"]].sort_values(keys).reset_index(drop=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # pandas raises many types for a damaged file
        raise FinescopeError(f"{path} cannot be read ({exc}); re-run the analysis") from exc


def load_run(path: str | Path) -> Run:
    """Load a finished run from its project folder (or its ``results/`` folder).

    Raises
    ------
    FinescopeError
        When ``path`` is not a finished finescope run (names the file that is missing).
    """
    given = Path(path).expanduser()
    root = given.parent if given.name == "results" else given
    results = root / "results"
    if not results.is_dir():
        raise FinescopeError(f"{given} is not a finescope run: it has no results/ folder")
    missing = [name for name in REQUIRED if not (results / name).is_file()]
    if missing:
        raise FinescopeError(
            f"{given} is not a finished finescope run: results/{missing[0]} is missing "
            "(run the workflow to the end first)"
        )
    tables = results / "tables"
    data_csv = tables / "data.csv"
    config_path = results / CONFIG_FILE
    config = None
    if config_path.is_file():
        with config_path.open(encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    models = {p.stem: read_json(p) for p in sorted((root / "resources" / "models").glob("*.json"))}
    data_files = {}
    for labels in sorted(results.glob("data/*/labels.json")):
        folder = labels.parent
        files = {
            p.stem: {"path": str(p), "sha256": _sha256(p)} for p in sorted(folder.glob("*.jsonl"))
        }
        data_files[folder.name] = {
            "provenance": read_json(labels).get("provenance", {}),
            "files": files,
        }
    return Run(
        root=root,
        measures=_read_table(tables / "measures.parquet"),
        correlations=_read_table(tables / "correlations.csv"),
        downstream=_read_table(tables / "downstream.csv"),
        data=_read_table(data_csv) if data_csv.is_file() else pd.DataFrame(),
        config=config,
        models=models,
        data_files=data_files,
    )


def write_resolved_config(config: dict[str, Any], path: str | Path) -> None:
    """Write the config as the run resolved it (defaults filled in) as YAML."""
    with atomic_path(path) as tmp:
        tmp.write_text(
            "# The config this run used, with every default filled in (written by finescope).\n"
            + yaml.safe_dump(_plain(config), sort_keys=False),
            encoding="utf-8",
        )


def _plain(value: Any) -> Any:
    """Snakemake's config may hold its own mapping and path types; YAML wants plain ones."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
