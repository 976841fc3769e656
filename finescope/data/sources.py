"""The data sources: synthetic items, local files and Hugging Face Hub datasets."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from finescope import job, synthetic
from finescope.data.config import (
    NER_COLUMNS,
    NER_FORMATS,
    NLI_COLUMNS_JSONL,
    NLI_COLUMNS_TABLE,
    NLI_FORMATS,
    SPLITS,
    SUFFIX_FORMATS,
    SYNTHETIC_DEFAULTS,
    _Cfg,
    _Record,
    _Split,
)
from finescope.data.readers import _check_header, _jsonl_rows, _read_text, _table_rows
from finescope.data.rows import _ner_fields, _nli_fields, _read_ner_columns, _record_or_skip
from finescope.errors import FinescopeError
from finescope.io import atomic_path, read_json, write_json


def _tag_names(cfg: _Cfg) -> list[str] | None:
    value = cfg.raw.get("tag_names")
    if value is None:
        return None
    if cfg.task != "ner":
        raise cfg.error("tag_names", "only applies to NER data; remove it")
    if isinstance(value, Mapping):  # name -> id, as in tner's label2id
        ids = sorted(value.values())
        if ids != list(range(len(value))):
            raise cfg.error("tag_names", "ids must be 0..n-1 without gaps")
        inverse = {v: k for k, v in value.items()}
        return [str(inverse[i]) for i in ids]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise cfg.error("tag_names", f"{value!r} must be a list of tags or a mapping tag: id")


def _files_format(cfg: _Cfg, paths: dict[str, Path]) -> str:
    fmt = cfg.raw.get("format")
    if fmt is None:
        suffix = next(iter(paths.values())).suffix.lower()
        fmt = SUFFIX_FORMATS.get(suffix)
        if fmt is None or (cfg.task == "nli" and fmt in ("conll", "iob2")):
            raise cfg.error("format", "missing and not clear from the file name; set it")
    allowed = NLI_FORMATS if cfg.task == "nli" else NER_FORMATS
    if fmt not in allowed:
        raise cfg.error("format", f"{fmt!r} is not a {cfg.task} format; use {', '.join(allowed)}")
    return fmt


def _read_files(cfg: _Cfg) -> dict[str, _Split]:
    paths = {}
    for split in SPLITS:
        value = cfg.raw.get(split)
        if value is None:
            continue
        if not isinstance(value, (str, Path)) or not str(value):
            raise cfg.error(split, f"{value!r} must be a file path")
        paths[split] = Path(value)
    if not paths:
        raise cfg.error("train", "missing; give at least one of train, dev, test as a file path")
    fmt = _files_format(cfg, paths)
    label_names = cfg.labels()
    tag_names = _tag_names(cfg)
    if cfg.task == "ner" and fmt != "jsonl" and "columns" in cfg.raw:
        raise cfg.error("columns", f"does not apply to {fmt} files (token first, tag last)")
    out = {}
    for split, path in paths.items():
        text = _read_text(path, cfg, split)
        records: list[_Record] = []
        if cfg.task == "ner" and fmt != "jsonl":
            records = _read_ner_columns(path, text, fmt, cfg.bad_rows)
        elif cfg.task == "ner":
            columns, explicit = cfg.columns(NER_COLUMNS)
            for where, row in _jsonl_rows(path, text, cfg.bad_rows):
                records.append(
                    _record_or_skip(_ner_fields, row, columns, explicit, where, cfg, tag_names)
                )
        else:
            columns, explicit = cfg.columns(
                NLI_COLUMNS_JSONL if fmt == "jsonl" else NLI_COLUMNS_TABLE
            )
            if fmt == "jsonl":
                rows = _jsonl_rows(path, text, cfg.bad_rows)
            else:
                rows = _table_rows(path, text, "," if fmt == "csv" else "\t", cfg.bad_rows)
            first = True
            for where, row in rows:
                if first and fmt != "jsonl":
                    _check_header(path, row, columns, ("premise", "hypothesis", "label"), cfg)
                first = False
                records.append(
                    _record_or_skip(
                        _nli_fields, row, columns, explicit, where, cfg, label_names, label_names
                    )
                )
        out[split] = _Split(records, {"source": str(path), "format": fmt}, str(path))
    return out


# The hub datasets that the local fetch_data job downloaded: resources/data/<task>/ (relative
# to the workflow's working directory), a save_to_disk folder plus FETCHED_FILE.
HUB_DATA_DIR = Path("resources") / "data"
FETCHED_FILE = "fetched.json"
# datasets' own loaders over local files (name: json + data_files); they need no download.
PACKAGED_LOADERS = {"json", "csv", "parquet", "text", "arrow"}
PARQUET_BRANCH = "refs/convert/parquet"


def hub_data_dir(task: str) -> Path:
    """The folder that fetch_data writes a task's hub dataset to and prepare_data reads."""
    return HUB_DATA_DIR / task


def is_hub_dataset(data_cfg: Mapping) -> bool:
    """Whether a task's data is a dataset on the Hugging Face Hub, downloaded by fetch_data (not
    a local save_to_disk folder, nor a packaged loader over local ``data_files``)."""
    if not isinstance(data_cfg, Mapping) or data_cfg.get("source") != "hf":
        return False
    name = str(data_cfg.get("name") or "")
    if not name or name in PACKAGED_LOADERS or data_cfg.get("data_files"):
        return False
    return not (name.startswith((".", "/", "~")) or Path(name).expanduser().exists())


def _parquet_splits(root: Path, config: str | None, name: str) -> dict[str, list[str]]:
    """Split -> parquet files of a downloaded ``refs/convert/parquet`` branch, whose layout is
    ``<config>/<split>/NNNN.parquet`` (or ``<config>/<name>-<split>.parquet`` in older
    conversions)."""
    configs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if config is None:
        if len(configs) != 1:
            raise FinescopeError(
                f"{name} ({PARQUET_BRANCH}) has the configs {', '.join(configs) or 'none'}; "
                "name one in tasks.<task>.data.config"
            )
        config = configs[0]
    if config not in configs:
        raise FinescopeError(
            f"{name} ({PARQUET_BRANCH}) has no config {config!r}; configs: {', '.join(configs)}"
        )
    splits: dict[str, list[str]] = {}
    for path in sorted((root / config).rglob("*.parquet")):
        parts = path.relative_to(root / config).parts
        split = parts[0] if len(parts) > 1 else re.sub(r"-\d+-of-\d+$", "", path.stem)
        splits.setdefault(split.rsplit("-", 1)[-1], []).append(str(path))
    if not splits:
        raise FinescopeError(f"{name} ({PARQUET_BRANCH}): no parquet files under {config}/")
    return splits


def fetch_hub_dataset(task: str, data_cfg: Mapping, out_dir: str | Path) -> dict:
    """Download a task's hub dataset into ``out_dir`` (a ``save_to_disk`` folder), the one data
    step that uses the network; ``prepare_data`` then reads the folder offline.

    ``revision: refs/convert/parquet`` reads the Hub's Parquet conversion of the dataset (for
    datasets that only a loading script can build, which ``datasets`` 4 and later refuse);
    any other revision (default: the main branch) goes through ``datasets.load_dataset``.

    Returns
    -------
    dict
        What was fetched: name, config, revision, the commit (``sha``) and split sizes; also
        written to ``out_dir/fetched.json``.
    """
    import datasets
    from huggingface_hub import HfApi, snapshot_download

    cfg = _Cfg(task, data_cfg)
    name, config, revision = str(cfg.raw["name"]), cfg.raw.get("config"), cfg.raw.get("revision")
    out_dir = Path(out_dir)
    try:
        sha = HfApi().dataset_info(name, revision=revision).sha
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir, is_dir=True) as tmp:
            if revision == PARQUET_BRANCH:
                with tempfile.TemporaryDirectory(dir=out_dir.parent) as raw:
                    snapshot_download(
                        name,
                        repo_type="dataset",
                        revision=revision,
                        local_dir=raw,
                        allow_patterns=[f"{config}/**"] if config else None,
                    )
                    files = _parquet_splits(Path(raw), config, name)
                    ds = datasets.load_dataset("parquet", data_files=files)
                    ds.save_to_disk(str(tmp))
            else:
                ds = datasets.load_dataset(name, config, revision=revision)
                ds.save_to_disk(str(tmp))
            fetched = _fetched(name, config, revision, sha, ds)
            write_json(tmp / FETCHED_FILE, fetched)
    except FinescopeError:
        raise
    except Exception as err:  # hub and datasets errors come in many types
        hint = ""
        if "scripts are no longer supported" in str(err):
            hint = (
                f"; the dataset needs a loading script, which datasets {datasets.__version__} "
                f"cannot run: set {cfg.key('revision')}: {PARQUET_BRANCH} to read the Hub's "
                "Parquet conversion"
            )
        raise cfg.error(
            "name", f"could not download {name!r}: {type(err).__name__}: {err}{hint}"
        ) from None
    return fetched


def _fetched(name: str, config, revision, sha, ds) -> dict:
    return {
        "name": name,
        "config": config,
        "revision": revision,
        "sha": sha,
        "splits": {split: len(table) for split, table in ds.items()},
    }


def _load_hf(cfg: _Cfg):
    import datasets

    name = cfg.raw.get("name")
    if not isinstance(name, (str, Path)) or not str(name):
        raise cfg.error("name", "missing; give a hub dataset id or a save_to_disk folder")
    config = cfg.raw.get("config")
    path = Path(name)
    if is_hub_dataset(cfg.raw):
        # Read offline from the folder the local fetch_data job wrote.
        path = hub_data_dir(cfg.task)
        if not (path / FETCHED_FILE).is_file():
            raise cfg.error(
                "name",
                f"hub dataset {str(name)!r} is not downloaded yet: {path.resolve()} is missing. "
                f"On a machine with network run `snakemake --cores 1 {path}` (with this run's "
                "--configfile and --profile), which fetches it once for every later job",
            )
        return datasets.load_from_disk(str(path))
    try:
        if path.is_dir() and (
            (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
        ):
            ds = datasets.load_from_disk(str(path))
        else:
            # data_files: datasets' own json / csv / parquet loaders over local files.
            ds = datasets.load_dataset(str(name), config, data_files=cfg.raw.get("data_files"))
    except Exception as err:  # the datasets library raises many unrelated types
        raise cfg.error(
            "name",
            f"could not load dataset {str(name)!r} (config {config!r}): "
            f"{type(err).__name__}: {err}. Check the name, or download it first and give the "
            "save_to_disk folder (the workflow runs offline)",
        ) from None
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({"train": ds})
    return ds


def _classlabel_names(feature) -> list[str] | None:
    import datasets

    inner = getattr(feature, "feature", feature)  # Sequence/List of ClassLabel, or ClassLabel
    if isinstance(inner, datasets.ClassLabel):
        return list(inner.names)
    return None


def _read_hf(cfg: _Cfg) -> dict[str, _Split]:
    ds = _load_hf(cfg)
    name = str(cfg.raw["name"])
    available = list(ds.keys())
    mapping = cfg.raw.get("splits")
    if mapping is None:
        mapping = {}
        for split, candidates in (
            ("train", ("train",)),
            ("dev", ("validation", "dev", "valid", "devel")),
            ("test", ("test",)),
        ):
            found = next((c for c in candidates if c in available), None)
            if found:
                mapping[split] = found
    elif not isinstance(mapping, Mapping):
        raise cfg.error("splits", f"{mapping!r} must map train/dev/test to dataset split names")
    for split, hf_split in mapping.items():
        if split not in SPLITS:
            raise cfg.error(f"splits.{split}", "unknown split; use train, dev, test")
        if hf_split not in available:
            raise cfg.error(
                f"splits.{split}",
                f"{hf_split!r} is not a split of {name}; available: {', '.join(available)}",
            )
    if not mapping:
        raise cfg.error("splits", f"no train/dev/test split found in {name} ({available})")
    declared = cfg.labels()
    tag_names = _tag_names(cfg)
    out = {}
    for split, hf_split in mapping.items():
        table = ds[hf_split]
        origin = f"{name}[{hf_split}]"
        cols = list(table.column_names)
        records = []
        if cfg.task == "nli":
            columns, explicit = cfg.columns(NLI_COLUMNS_TABLE)
            for role in ("premise", "hypothesis", "label"):
                if columns[role] not in cols:
                    raise cfg.error(
                        f"columns.{role}",
                        f"{origin} has no column {columns[role]!r}; columns are {', '.join(cols)}",
                    )
            names = _classlabel_names(table.features[columns["label"]]) or declared
            for i, row in enumerate(table):
                records.append(
                    _record_or_skip(
                        _nli_fields,
                        row,
                        columns,
                        explicit,
                        f"{origin} row {i}",
                        cfg,
                        names,
                        declared,
                    )
                )
        else:
            columns, explicit = cfg.columns(NER_COLUMNS)
            if "tags" not in explicit and columns["tags"] not in cols and "ner_tags" in cols:
                columns["tags"] = "ner_tags"
            for role in ("tokens", "tags"):
                if columns[role] not in cols:
                    raise cfg.error(
                        f"columns.{role}",
                        f"{origin} has no column {columns[role]!r}; columns are {', '.join(cols)}",
                    )
            names = tag_names or _classlabel_names(table.features[columns["tags"]])
            for i, row in enumerate(table):
                records.append(
                    _record_or_skip(
                        _ner_fields, row, columns, explicit, f"{origin} row {i}", cfg, names
                    )
                )
        provenance = {"source": f"hf:{name}", "split": hf_split}
        if cfg.raw.get("config") is not None:
            provenance["config"] = cfg.raw["config"]
        if is_hub_dataset(cfg.raw):
            fetched = read_json(hub_data_dir(cfg.task) / FETCHED_FILE)
            provenance.update({k: fetched[k] for k in ("revision", "sha") if fetched.get(k)})
        out[split] = _Split(records, provenance, origin)
    return out


def _synthetic_items(cfg: _Cfg, seed: int) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    sizes = {}
    for split in SPLITS:
        value = cfg.get(split, SYNTHETIC_DEFAULTS[split])
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise cfg.error(split, f"{value!r} must be a positive number of synthetic items")
        sizes[split] = value
    items = synthetic.generate_splits(cfg.task, sizes, seed)
    provenance = {
        split: {
            "source": "synthetic",
            "items": sizes[split],
            "seed": synthetic.split_seed(seed, cfg.task, split),
        }
        for split in SPLITS
    }
    return items, provenance


def fetch_data_job(task: str, data_cfg: dict, out_dir: str) -> None:
    """The local job that downloads a task's hub dataset (the only data job with network)."""

    job.log.info("fetched %s", fetch_hub_dataset(task, data_cfg, out_dir))
