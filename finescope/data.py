"""Read, validate and normalise the NLI and NER data into the canonical split files.

``prepare_task`` reads the sources named by one task's data config (synthetic, local files or a
Hugging Face dataset), checks every row, normalises NER tags to IOB2, derives missing splits
(seeded and stratified, recorded in ``labels.json``) and only then writes
``{train,dev,test}.jsonl`` and ``labels.json``, so a bad input leaves the output folder
untouched.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finescope import synthetic
from finescope.errors import FinescopeError, unknown_key_hint
from finescope.io import atomic_path, read_json, read_jsonl, write_json, write_jsonl
from finescope.probe_pool import overlap
from finescope.probe_pool import reserve as reserve_probe_pool
from finescope.settings import tasks
from finescope.subsample import item_labels, read_subset, stratified_order

if TYPE_CHECKING:
    import pandas as pd

SPLITS = ("train", "dev", "test")
# The reserved probe items (see finescope.probe_pool), written as probe.jsonl.
PROBE_SPLIT = "probe"
TASKS = tasks()
SOURCES = ("synthetic", "files", "hf")
NLI_FORMATS = ("jsonl", "csv", "tsv")
NER_FORMATS = ("tsv", "conll", "iob2", "jsonl")
SCHEMES = {"iob2": "iob2", "bio": "iob2", "iob1": "iob1", "iob": "iob1", "iobes": "iobes"}

COMMON_KEYS = {
    "source",
    "labels",
    "scheme",
    "strict",
    "dev_fraction",
    "test_fraction",
    "allow_unseen_labels",
    "on_bad_rows",
}
ALLOWED_KEYS = {
    # The schema fills in the defaults of the last two for every source.
    "synthetic": {"source", "train", "dev", "test", "allow_unseen_labels", "on_bad_rows"},
    "files": COMMON_KEYS | {"format", "train", "dev", "test", "columns", "tag_names"},
    "hf": COMMON_KEYS
    | {"name", "config", "revision", "data_files", "splits", "columns", "tag_names"},
}
SYNTHETIC_DEFAULTS = {"train": 200, "dev": 40, "test": 80}
DEFAULT_DEV_FRACTION = 0.1

# Default column names per task and reader.
NLI_COLUMNS_JSONL = {
    "premise": "sentence1",
    "hypothesis": "sentence2",
    "label": "gold_label",
    "id": "pairID",
}
NLI_COLUMNS_TABLE = {"premise": "premise", "hypothesis": "hypothesis", "label": "label", "id": "id"}
NER_COLUMNS = {"tokens": "tokens", "tags": "tags", "id": "id"}
SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".conll": "conll",
    ".iob2": "iob2",
    ".txt": "conll",
}
UNLABELED = {"", "-"}
TAG_RE = re.compile(r"^([A-Z])-(\S.*)$")
BAD_ROWS = ("error", "skip")
BAD_ROW_EXAMPLES = 3  # file:line examples kept per reason under on_bad_rows: skip


class _BadRow(FinescopeError):
    """A row the readers refuse; dropped and counted under ``on_bad_rows: skip``."""

    def __init__(self, reason: str, where: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.where = where


class _BadRows:
    """Raises a bad row's error (``on_bad_rows: error``) or counts it by reason (``skip``)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.reasons: dict[str, dict] = {}

    def reject(self, bad: _BadRow) -> None:
        if self.mode == "error":
            raise bad
        entry = self.reasons.setdefault(bad.reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < BAD_ROW_EXAMPLES and bad.where not in entry["examples"]:
            entry["examples"].append(bad.where)

    def total(self) -> int:
        return sum(entry["count"] for entry in self.reasons.values())

    def report(self) -> dict:
        return {reason: self.reasons[reason] for reason in sorted(self.reasons)}


@dataclass
class _Record:
    """One item read from a source, with where it came from for error messages."""

    fields: dict  # premise/hypothesis/label (NLI) or tokens/tags (NER, tags not yet IOB2)
    id: str | None
    where: str  # "file:line" or "name[split] row i"
    first_line: int | None = None  # token-per-line files: line of the first token

    def token_where(self, j: int) -> str:
        """Location of token ``j`` (NER)."""
        if self.first_line is not None:  # tokens of a sentence are on consecutive lines
            return f"{self.where.rsplit(':', 1)[0]}:{self.first_line + j}"
        return f"{self.where} token {j}"


@dataclass
class _Split:
    records: list[_Record]
    provenance: dict
    origin: str  # file path or hf split, for messages

    def __post_init__(self) -> None:
        # Rows dropped under on_bad_rows: skip come back from the record readers as None.
        self.records = [r for r in self.records if r is not None]


class _Cfg:
    """Validated view of ``tasks.<task>.data`` with error helpers naming the config key."""

    def __init__(self, task: str, data_cfg: Any):
        if task not in TASKS:
            raise FinescopeError(f"task {task!r} is not known; use one of {', '.join(TASKS)}.")
        self.task = task
        if not isinstance(data_cfg, Mapping):
            raise FinescopeError(
                f"tasks.{task}.data must be a mapping with at least 'source'; got {data_cfg!r}."
            )
        self.raw = dict(data_cfg)
        source = self.raw.get("source")
        if source is None:
            raise self.error("source", f"missing; set it to one of {', '.join(SOURCES)}")
        if source not in SOURCES:
            raise self.error("source", f"{source!r} is not one of {', '.join(SOURCES)}")
        self.source = source
        unknown = sorted(set(self.raw) - ALLOWED_KEYS[source], key=str)
        if unknown:
            raise self.error(
                str(unknown[0]),
                f"unknown key for source '{source}'; "
                + unknown_key_hint(unknown[0], ALLOWED_KEYS[source]),
            )
        mode = self.get("on_bad_rows", "error")
        if mode not in BAD_ROWS:
            raise self.error("on_bad_rows", f"{mode!r} is not one of {', '.join(BAD_ROWS)}")
        self.bad_rows = _BadRows(mode)

    def key(self, name: str) -> str:
        return f"tasks.{self.task}.data.{name}"

    def error(self, name: str, message: str) -> FinescopeError:
        return FinescopeError(f"{self.key(name)}: {message}.")

    def get(self, name: str, default: Any = None) -> Any:
        value = self.raw.get(name)
        return default if value is None else value

    def fraction(self, name: str, default: float | None) -> float | None:
        value = self.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise self.error(name, f"{value!r} must be a number between 0 and 1 (e.g. 0.1)")
        return float(value)

    def flag(self, name: str) -> bool:
        value = self.get(name, False)
        if not isinstance(value, bool):
            raise self.error(name, f"{value!r} must be true or false")
        return value

    def scheme(self) -> str:
        value = str(self.get("scheme", "iob2")).lower()
        if value not in SCHEMES:
            raise self.error("scheme", f"{value!r} is not one of iob2, bio, iob1, iobes")
        if self.task != "ner" and "scheme" in self.raw:
            raise self.error("scheme", "only applies to NER data; remove it")
        return SCHEMES[value]

    def labels(self) -> list[str] | None:
        value = self.raw.get("labels")
        if value is None:
            return None
        if self.task != "nli":
            raise self.error(
                "labels", "only applies to NLI data (NER entity types come from the data)"
            )
        if (
            not isinstance(value, list)
            or len(value) < 2
            or not all(isinstance(v, str) and v.strip() for v in value)
            or len(set(value)) != len(value)
        ):
            raise self.error("labels", f"{value!r} must be a list of at least two distinct names")
        return list(value)

    def columns(self, defaults: dict[str, str]) -> tuple[dict[str, str], set[str]]:
        """Column names merged over ``defaults`` and the set the user gave explicitly."""
        value = self.get("columns", {})
        if not isinstance(value, Mapping):
            raise self.error("columns", f"{value!r} must be a mapping such as {defaults}")
        for name, col in value.items():
            if name not in defaults:
                raise self.error(
                    f"columns.{name}",
                    f"unknown column role; allowed roles are {', '.join(defaults)}",
                )
            if not isinstance(col, str) or not col:
                raise self.error(f"columns.{name}", f"{col!r} must be a column name")
        return {**defaults, **value}, set(value)


# ---------------------------------------------------------------------------------------------
# Low-level reading
# ---------------------------------------------------------------------------------------------


def _read_text(path: Path, cfg: _Cfg, key: str) -> str:
    if not path.is_file():
        raise cfg.error(
            key,
            f"file {path} not found (relative paths are read from {Path.cwd()}); check the path",
        )
    data = path.read_bytes()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start
        line = data[:offset].count(b"\n") + 1
        raise FinescopeError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[offset]:02x} at byte offset {offset}); "
            "convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8`."
        ) from None


def _lines(text: str) -> Iterable[tuple[int, str]]:
    # Split on "\n" only: str.splitlines would also split on characters such as U+2028.
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.rstrip("\r")


def _jsonl_rows(path: Path, text: str, bad_rows: _BadRows) -> Iterable[tuple[str, dict]]:
    for number, line in _lines(text):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            bad_rows.reject(
                _BadRow(
                    "malformed JSON",
                    where,
                    f"{where}: malformed JSON ({err.msg} at column {err.colno}); "
                    "fix or remove the line.",
                )
            )
            continue
        if not isinstance(row, dict):
            bad_rows.reject(
                _BadRow(
                    "not a JSON object",
                    where,
                    f"{where}: expected a JSON object per line, got {row!r:.60}; "
                    "write one object per line.",
                )
            )
            continue
        yield where, row


def _table_rows(
    path: Path, text: str, delimiter: str, bad_rows: _BadRows
) -> Iterable[tuple[str, dict]]:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != len(header):
                bad_rows.reject(
                    _BadRow(
                        "wrong number of fields",
                        where,
                        f"{where}: {len(row)} fields but the header (line 1) has "
                        f"{len(header)}; check the delimiter and quoting of this line.",
                    )
                )
                continue
            yield where, dict(zip(header, row, strict=True))
    except csv.Error as err:
        raise FinescopeError(
            f"{path}:{reader.line_num}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} "
            f"({err}); fix the line."
        ) from None


def _check_header(
    path: Path, header: Iterable[str], columns: dict[str, str], required, cfg: _Cfg
) -> None:
    header = list(header)
    for role in required:
        if columns[role] not in header:
            raise FinescopeError(
                f"{path}:1: no column {columns[role]!r} for the {role}; columns are "
                f"{', '.join(header)}. Set {cfg.key('columns.' + role)} to the right name."
            )


# ---------------------------------------------------------------------------------------------
# Row conversion
# ---------------------------------------------------------------------------------------------


def _row_id(row: Mapping, columns: dict[str, str], explicit: set[str], where: str) -> str | None:
    value = row.get(columns["id"])
    if value is None or (isinstance(value, str) and not value.strip()):
        if "id" in explicit:
            raise _BadRow(
                "missing id",
                where,
                f"{where}: missing id field {columns['id']!r}; add it or remove columns.id.",
            )
        return None
    return str(value).strip()


def _record_or_skip(build, row, columns, explicit, where, cfg: _Cfg, *names) -> _Record | None:
    """The record ``build`` (``_nli_fields`` or ``_ner_fields``) makes of a row; None when the
    row is bad and ``on_bad_rows`` is skip (the reject is counted)."""
    try:
        return build(row, columns, explicit, where, cfg, *names)
    except _BadRow as bad:
        cfg.bad_rows.reject(bad)
        return None


def _nli_fields(
    row: Mapping,
    columns: dict[str, str],
    explicit: set[str],
    where: str,
    cfg: _Cfg,
    label_names: list[str] | None,
    declared: list[str] | None,
) -> _Record:
    fields = {}
    for role in ("premise", "hypothesis", "label"):
        col = columns[role]
        if col not in row or row[col] is None:
            raise _BadRow(
                "missing field",
                where,
                f"{where}: missing field {col!r} (the {role}); add it, or set "
                f"{cfg.key('columns.' + role)} to the name used in the data.",
            )
        value = row[col]
        if role == "label" and isinstance(value, int) and not isinstance(value, bool):
            if value < 0 or label_names is None or value >= len(label_names):
                raise _BadRow(
                    "no gold label" if value < 0 else "unknown label",
                    where,
                    f"{where}: label {value} has no name (negative labels mark unlabeled "
                    f"rows); remove the row or declare names in {cfg.key('labels')}.",
                )
            value = label_names[value]
        if not isinstance(value, str):
            raise _BadRow(
                "wrong type", where, f"{where}: field {col!r} must be text, got {value!r:.60}."
            )
        value = value.strip()
        if role != "label" and not value:
            raise _BadRow(
                "empty text", where, f"{where}: empty {role} ({col!r}); fix or remove the row."
            )
        if role == "label" and value in UNLABELED:
            raise _BadRow(
                "no gold label",
                where,
                f"{where}: no gold label ({col!r} is {value!r}, e.g. annotators disagreed); "
                "remove the row or give it a label.",
            )
        if role == "label" and declared is not None and value not in declared:
            raise _BadRow(
                "unknown label",
                where,
                f"{where}: label {value!r} is not one of the labels declared in "
                f"{cfg.key('labels')} ({', '.join(declared)}); fix the row or add the label.",
            )
        fields[role] = value
    return _Record(fields, _row_id(row, columns, explicit, where), where)


def _ner_fields(
    row: Mapping,
    columns: dict[str, str],
    explicit: set[str],
    where: str,
    cfg: _Cfg,
    tag_names: list[str] | None,
) -> _Record:
    for role in ("tokens", "tags"):
        if columns[role] not in row:
            raise _BadRow(
                "missing field",
                where,
                f"{where}: missing field {columns[role]!r} (the {role}); add it, or set "
                f"{cfg.key('columns.' + role)} to the name used in the data.",
            )
    tokens, tags = row[columns["tokens"]], row[columns["tags"]]
    if not isinstance(tokens, list) or not isinstance(tags, list):
        raise _BadRow("wrong type", where, f"{where}: tokens and tags must be lists.")
    if len(tokens) != len(tags):
        raise _BadRow(
            "tokens/tags length mismatch",
            where,
            f"{where}: {len(tokens)} tokens but {len(tags)} tags; each token needs one tag.",
        )
    if not tokens:
        raise _BadRow("no tokens", where, f"{where}: a sentence without tokens; remove it.")
    names = []
    for j, tag in enumerate(tags):
        if isinstance(tag, int) and not isinstance(tag, bool):
            if tag_names is None or not 0 <= tag < len(tag_names):
                raise _BadRow(
                    "unknown label",
                    where,
                    f"{where}: integer tag {tag} has no name; give the tag names in "
                    f"{cfg.key('tag_names')} (a list in id order or a mapping name: id).",
                )
            tag = tag_names[tag]
        if not isinstance(tag, str):
            raise _BadRow(
                "wrong type", where, f"{where}: tag {j} ({tag!r}) must be text or an integer id."
            )
        names.append(tag.strip())
    clean = [str(t).strip() for t in tokens]
    if any(not t for t in clean):
        raise _BadRow(
            "empty token", where, f"{where}: an empty token; remove it or fix the tokenisation."
        )
    return _Record({"tokens": clean, "tags": names}, _row_id(row, columns, explicit, where), where)


def _read_ner_columns(path: Path, text: str, fmt: str, bad_rows: _BadRows) -> list[_Record]:
    """Token-per-line files: token first, tag last, blank line between sentences. Under
    ``on_bad_rows: skip`` a bad line drops its whole sentence."""
    records: list[_Record] = []
    tokens: list[str] = []
    tags: list[str] = []
    first = 0
    width: int | None = None
    spoilt = False  # the current sentence has a bad line

    def flush() -> None:
        nonlocal spoilt
        if tokens and not spoilt:
            records.append(
                _Record({"tokens": tokens[:], "tags": tags[:]}, None, f"{path}:{first}", first)
            )
        tokens.clear()
        tags.clear()
        spoilt = False

    for number, line in _lines(text):
        if not line.strip() or line.startswith("###MEDLINE:"):
            flush()  # a blank line ends a sentence; ###MEDLINE: starts a JNLPBA document
            continue
        cols = [c.strip() for c in line.split("\t")] if fmt == "tsv" else line.split()
        if cols[0] == "-DOCSTART-":
            flush()
            continue
        bad = None
        if len(cols) < 2 or not cols[0] or not cols[-1]:
            bad = _BadRow(
                "missing token or tag",
                f"{path}:{number}",
                f"{path}:{number}: expected a token and a tag "
                f"({'tab' if fmt == 'tsv' else 'whitespace'}-separated), got {line!r:.80}; "
                "fix the line.",
            )
        elif width is None:
            width = len(cols)
        elif len(cols) != width:
            bad = _BadRow(
                "wrong number of columns",
                f"{path}:{number}",
                f"{path}:{number}: {len(cols)} columns but earlier lines have {width} "
                "(token/tag count mismatch); fix the line.",
            )
        if bad is not None:
            bad_rows.reject(bad)
            spoilt = True
            continue
        if not tokens:
            first = number
        tokens.append(cols[0])
        tags.append(cols[-1])
    flush()
    return records


def _normalise_tags(record: _Record, scheme: str, strict: bool, cfg: _Cfg) -> int:
    """Rewrite ``record.fields["tags"]`` as IOB2 in place; return the number of repairs."""
    allowed = "BIES" if scheme == "iobes" else "BI"
    out: list[str] = []
    repairs = 0
    prev_type: str | None = None  # entity type of the previous tag, None after O
    for j, tag in enumerate(record.fields["tags"]):
        if tag == "O":
            out.append("O")
            prev_type = None
            continue
        match = TAG_RE.match(tag)
        if not match or match.group(1) not in allowed:
            raise _BadRow(
                "tag not in the scheme",
                record.token_where(j),
                f"{record.token_where(j)}: tag {tag!r} is not {scheme.upper()} (expected O or "
                f"{'/'.join(allowed)}-TYPE); fix the tag or set {cfg.key('scheme')}.",
            )
        prefix, etype = match.groups()
        if prefix in "BS":
            out.append(tag if prefix == "B" else f"B-{etype}")
        elif prev_type == etype:
            out.append(tag if prefix == "I" else f"I-{etype}")
        elif scheme == "iob1":
            out.append(f"B-{etype}")  # IOB1 starts entities with I-; B- only splits neighbours
        elif strict:
            after = "O" if prev_type is None else f"a {prev_type} tag"
            raise FinescopeError(
                f"{record.token_where(j)}: {tag!r} follows {after}, which {scheme.upper()} "
                f"does not allow; fix the tag (B-{etype}) or set {cfg.key('strict')}: false "
                "to repair it."
            )
        else:
            out.append(f"B-{etype}")
            repairs += 1
        prev_type = etype
    record.fields["tags"] = out
    return repairs


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Assembling the splits
# ---------------------------------------------------------------------------------------------


def _items(split: str, data: _Split, bad_rows: _BadRows) -> list[dict]:
    """Canonical items with ids; ids must be unique within the split (under ``on_bad_rows:
    skip`` a repeated id drops the later row)."""
    if not data.records:
        raise FinescopeError(
            f"{data.origin}: the {split} split has no items; give a file with data."
        )
    items = []
    first_seen: dict[str, str] = {}
    for index, record in enumerate(data.records):
        item_id = record.id if record.id is not None else f"{split}-{index}"
        if item_id in first_seen:
            bad_rows.reject(
                _BadRow(
                    "duplicate id",
                    record.where,
                    f"{record.where}: duplicate id {item_id!r} (first at "
                    f"{first_seen[item_id]}); ids must be unique within a split: fix the data "
                    "or drop the id column.",
                )
            )
            continue
        first_seen[item_id] = record.where
        items.append({"id": item_id, **record.fields})
    return items


def _count(fraction: float, n: int) -> int:
    return math.floor(Fraction(str(fraction)) * n + Fraction(1, 2))


def _split_off(
    items: list[dict],
    task: str,
    fraction: float,
    seed: int,
    salt: str,
    cfg: _Cfg,
    key: str,
    what: str,
) -> tuple[list[dict], list[dict]]:
    """Stratified seeded split: (a ``fraction`` share, the rest), both in file order."""
    k = _count(fraction, len(items))
    if not 0 < k < len(items):
        raise cfg.error(
            key,
            f"{fraction} of the {len(items)} {what} items leaves an empty split; "
            "use another fraction or give the split as data",
        )
    derive_seed = synthetic.split_seed(seed, task, f"derive-{salt}")
    chosen = set(stratified_order(items, task, derive_seed)[:k])
    taken = [item for i, item in enumerate(items) if i in chosen]
    rest = [item for i, item in enumerate(items) if i not in chosen]
    return taken, rest


def _derive(
    items: dict[str, list[dict]], provenance: dict[str, dict], cfg: _Cfg, seed: int
) -> None:
    """Fill missing splits in place (seeded, stratified) and record how in ``provenance``."""
    task = cfg.task
    dev_fraction = cfg.fraction("dev_fraction", DEFAULT_DEV_FRACTION)
    test_fraction = cfg.fraction("test_fraction", None)
    strata = "label" if task == "nli" else "entity types per sentence"

    def record(split: str, base: str, share: float, note: str) -> None:
        provenance[split] = {
            "source": provenance[base]["source"],
            "derived_from": base,
            "fraction": round(share, 12),
            "seed": seed,
            "stratified_by": strata,
            "note": note,
        }

    if "test" in items and test_fraction is not None and "train" in items:
        warnings.warn(
            f"{cfg.key('test_fraction')} is ignored: a test split was given.", stacklevel=3
        )
    if "train" not in items:
        if "dev" in items:
            base = "dev"
        elif test_fraction is not None:
            base = "test"
        else:
            raise cfg.error(
                "train",
                "no train split and only a test split; give a train or dev file, or set "
                f"{cfg.key('test_fraction')} to hold out part of the test file as test",
            )
        pool = items[base]
        if base == "test":
            test, pool = _split_off(
                pool, task, test_fraction, seed, "test", cfg, "test_fraction", "test"
            )
            items["test"] = test
            record("test", "test", test_fraction, "test_fraction of the test file kept as test")
            pool_share = 1 - test_fraction
        else:
            pool_share = 1.0
        dev, train = _split_off(pool, task, dev_fraction, seed, "dev", cfg, "dev_fraction", base)
        items["train"], items["dev"] = train, dev
        record(
            "train",
            base,
            pool_share * (1 - dev_fraction),
            f"no train file: train derived from {base}",
        )
        record(
            "dev",
            base,
            pool_share * dev_fraction,
            f"no train file: dev is the dev_fraction of {base} not used for train",
        )
        return
    share = 1.0
    if "test" not in items:
        if test_fraction is None:
            raise cfg.error(
                "test",
                "no test split; give a test file or set "
                f"{cfg.key('test_fraction')} (e.g. 0.2) to hold out part of train",
            )
        test, rest = _split_off(
            items["train"], task, test_fraction, seed, "test", cfg, "test_fraction", "train"
        )
        items["test"], items["train"] = test, rest
        record("test", "train", test_fraction, "no test file: test held out from train")
        share = 1 - test_fraction
    if "dev" not in items:
        dev, rest = _split_off(
            items["train"], task, dev_fraction, seed, "dev", cfg, "dev_fraction", "train"
        )
        items["dev"], items["train"] = dev, rest
        record("dev", "train", share * dev_fraction, "no dev file: dev held out from train")
        share *= 1 - dev_fraction
    if share != 1.0:
        record("train", "train", share, "train minus the held-out splits")


def _stats(task: str, items: list[dict], labels: list[str]) -> dict:
    if task == "nli":
        counts = Counter(item["label"] for item in items)
        return {"items": len(items), "labels": {label: counts[label] for label in labels}}
    counts = Counter(tag[2:] for item in items for tag in item["tags"] if tag.startswith("B-"))
    return {
        "items": len(items),
        "tokens": sum(len(item["tokens"]) for item in items),
        "labels": {etype: counts[etype] for etype in labels},
    }


def _check_unseen_labels(items: dict[str, list[dict]], cfg: _Cfg, labels: list[str]) -> None:
    """A label of dev or test that train (what fine-tuning reads) never has is an error, or
    with ``allow_unseen_labels: true`` a warning."""
    task = cfg.task
    in_train = set().union(*(item_labels(i, task) for i in items["train"]))
    found: dict[str, str] = {}  # label -> "split (e.g. item id)"
    for split in ("dev", "test"):
        for item in items[split]:
            for label in sorted(item_labels(item, task) - in_train):
                found.setdefault(label, f"{split}, e.g. item {item['id']!r}")
    if not found:
        return
    what = "label" if task == "nli" else "entity type"
    listed = "; ".join(f"{label} ({where})" for label, where in sorted(found.items()))
    text = (
        f"tasks.{task}.data: {len(found)} {what}(s) occur in dev/test but never in the train "
        f"split that fine-tuning reads: {listed}"
    )
    if cfg.flag("allow_unseen_labels"):
        warnings.warn(
            f"{text}; kept as {cfg.key('allow_unseen_labels')} is true (a fine-tuned model "
            "cannot predict them).",
            stacklevel=3,
        )
        return
    raise FinescopeError(
        f"{text}. A fine-tuned model cannot learn them: fix the data (or a smaller "
        f"probe_pool.size, which takes items out of train), or set "
        f"{cfg.key('allow_unseen_labels')}: true to keep them."
    )


def prepare_task(
    task: str, data_cfg: dict, out_dir: Path, seed: int, probe_pool: Mapping | None = None
) -> dict:
    """Read, validate and normalise one task's data; write the canonical split files.

    Parameters
    ----------
    task
        "nli" or "ner".
    data_cfg
        The mapping at ``tasks.<task>.data`` (forms: source synthetic / files / hf).
    out_dir
        Folder that receives ``train.jsonl``, ``dev.jsonl``, ``test.jsonl`` and
        ``labels.json``. Nothing is written unless every check passes.
    seed
        Seed for synthetic data, for deriving missing splits and for the probe pool.
    probe_pool
        Settings of :func:`finescope.probe_pool.reserve` (``source``, ``size``, ``dev_share``):
        the pool is set aside before any fine-tuning subset is drawn and written to
        ``probe.jsonl`` (train.jsonl then lacks it). None: no pool, no ``probe.jsonl``.

    Returns
    -------
    dict
        ``{split: {"items": n, "labels": {label: count}}}``; NER counts entities per type and
        adds ``"tokens"``; with a pool, also ``"probe"``.
    """
    cfg = _Cfg(task, data_cfg)
    cfg.flag("allow_unseen_labels")  # validate early
    provenance: dict[str, dict] = {}
    if cfg.source == "synthetic":
        items, provenance = _synthetic_items(cfg, seed)
    else:
        strict = cfg.flag("strict")
        scheme = cfg.scheme()
        cfg.fraction("dev_fraction", DEFAULT_DEV_FRACTION)  # validate early
        raw = _read_files(cfg) if cfg.source == "files" else _read_hf(cfg)
        items = {}
        for split, data in raw.items():
            if task == "ner":
                repairs, kept = 0, []
                for record in data.records:
                    try:
                        repairs += _normalise_tags(record, scheme, strict, cfg)
                        kept.append(record)
                    except _BadRow as bad:
                        cfg.bad_rows.reject(bad)
                data.records = kept
                if repairs:
                    warnings.warn(
                        f"{data.origin}: repaired {repairs} tag(s) 'I-X' that followed 'O' or "
                        f"another type to 'B-X'; set {cfg.key('strict')}: true to make this "
                        "an error.",
                        stacklevel=2,
                    )
            items[split] = _items(split, data, cfg.bad_rows)
            provenance[split] = data.provenance
        skipped = cfg.bad_rows.total()
        if skipped:
            reasons = "; ".join(
                f"{reason}: {entry['count']} (e.g. {', '.join(entry['examples'])})"
                for reason, entry in cfg.bad_rows.report().items()
            )
            warnings.warn(
                f"{cfg.key('on_bad_rows')} is skip: {skipped} bad row(s) left out of the data: "
                f"{reasons}.",
                stacklevel=2,
            )
        _derive(items, provenance, cfg, seed)

    # What produced this folder, so that a reader (the plan) can tell it belongs to a config.
    provenance["settings"] = {"data": data_cfg, "seed": seed, "probe_pool": probe_pool}
    pool = None
    if probe_pool is not None:
        pool, items["train"], provenance["probe_pool"] = reserve_probe_pool(
            items, task, probe_pool, seed
        )

    if task == "nli":
        declared = cfg.labels() if cfg.source != "synthetic" else None
        labels = declared or sorted({item["label"] for split in SPLITS for item in items[split]})
        if len(labels) < 2:
            raise FinescopeError(
                f"{cfg.key('source')}: the data has only the label(s) {labels}; NLI needs "
                "at least two labels. Check the label column."
            )
        meta = {"task": task, "labels": labels, "provenance": provenance}
        stat_labels = labels
    else:
        types = sorted(
            {
                tag[2:]
                for split in SPLITS
                for item in items[split]
                for tag in item["tags"]
                if tag != "O"
            }
        )
        if not types:
            raise FinescopeError(
                f"{cfg.key('source')}: the NER data has no entities (all tags are O); "
                "check the tag column."
            )
        labels = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
        meta = {"task": task, "labels": labels, "entity_types": types, "provenance": provenance}
        stat_labels = types
    for split in SPLITS:
        if not items[split]:
            raise FinescopeError(f"{cfg.key(split)}: the {split} split is empty.")
    _check_unseen_labels(items, cfg, stat_labels)
    for split in SPLITS:
        missing = sorted(
            set(stat_labels) - set().union(*(item_labels(i, task) for i in items[split]))
        )
        if missing and split != "test":
            warnings.warn(
                f"tasks.{task}.data: the {split} split has no {', '.join(missing)}.", stacklevel=2
            )

    out_dir = Path(out_dir)
    for split in SPLITS:
        write_jsonl(out_dir / f"{split}.jsonl", items[split])
    stats = {split: _stats(task, items[split], stat_labels) for split in SPLITS}
    if pool is not None:
        write_jsonl(out_dir / f"{PROBE_SPLIT}.jsonl", pool)
        stats[PROBE_SPLIT] = _stats(task, pool, stat_labels)
    if cfg.bad_rows.reasons:
        meta["skipped_rows"] = cfg.bad_rows.report()
    write_json(out_dir / "labels.json", meta)
    return stats


# ---------------------------------------------------------------------------------------------
# Data report
# ---------------------------------------------------------------------------------------------


def data_report(task: str, data_dir: Path, subset_files: Iterable[Path] = ()) -> pd.DataFrame:
    """Counts per split and per training subset, for ``results/tables/data.csv``.

    Parameters
    ----------
    task
        "nli" or "ner".
    data_dir
        Folder written by :func:`prepare_task`.
    subset_files
        Subset JSON files (see ``finescope.subsample.write_subset``) over the train split.

    Returns
    -------
    pandas.DataFrame
        Columns task, split, fraction, seed, label, count, probe_overlap. ``split`` is "train",
        "dev", "test", "probe train" / "probe dev" (the reserved probe pool, when there is one)
        or "train f{fraction} s{seed}"; fraction and seed are empty for whole splits.
        Label "(items)" counts items and, for NER, "(tokens)" counts tokens; the other rows
        count items per label (NLI) or entities per type (NER). ``probe_overlap`` (subset rows
        only, with a pool) is the number of the subset's items that are also probe items,
        counted from the files: 0 unless the data is stale. Under ``on_bad_rows: skip``, rows
        with split "skipped" count the source rows left out, one per reason (the label).
    """
    import pandas as pd

    data_dir = Path(data_dir)
    meta_path = data_dir / "labels.json"
    if not meta_path.is_file():
        raise FinescopeError(f"{meta_path} not found; run the data stage for {task} first.")
    meta = read_json(meta_path)
    labels = meta["labels"] if task == "nli" else meta["entity_types"]
    rows: list[dict] = []
    splits = {split: read_jsonl(data_dir / f"{split}.jsonl") for split in SPLITS}

    pool_path = data_dir / f"{PROBE_SPLIT}.jsonl"
    pool = read_jsonl(pool_path) if pool_path.is_file() else None
    pool_ids = [str(item["id"]) for item in pool] if pool is not None else []
    if pool is not None and meta.get("provenance", {}).get("probe_pool", {}).get("source") == (
        "train"
    ):
        leaked = overlap(pool_ids, [str(item["id"]) for item in splits["train"]])
        if leaked:
            raise FinescopeError(
                f"{pool_path}: {leaked} probe items are also in {data_dir / 'train.jsonl'}; "
                "the data folder is stale, run the data stage again"
            )

    def add(split_name: str, fraction, seed, items: list[dict], probe_overlap=None) -> None:
        stats = _stats(task, items, labels)
        counts = [("(items)", stats["items"])]
        if task == "ner":
            counts.append(("(tokens)", stats["tokens"]))
        counts += list(stats["labels"].items())
        for label, count in counts:
            rows.append(
                {
                    "task": task,
                    "split": split_name,
                    "fraction": fraction,
                    "seed": seed,
                    "label": label,
                    "count": count,
                    "probe_overlap": probe_overlap,
                }
            )

    for split in SPLITS:
        add(split, None, None, splits[split])
    if pool is not None:
        for part in ("train", "dev"):
            add(f"probe {part}", None, None, [i for i in pool if i.get("probe_split") == part])
    for reason, entry in meta.get("skipped_rows", {}).items():
        rows.append(
            {
                "task": task,
                "split": "skipped",
                "fraction": None,
                "seed": None,
                "label": reason,
                "count": entry["count"],
                "probe_overlap": None,
            }
        )
    by_id = {item["id"]: item for item in splits["train"]}
    for path in subset_files:
        subset = read_subset(path)
        if subset["task"] != task:
            raise FinescopeError(f"{path}: a {subset['task']} subset, expected {task}.")
        unknown = [i for i in subset["ids"] if i not in by_id]
        if unknown:
            raise FinescopeError(
                f"{path}: {len(unknown)} ids (e.g. {unknown[0]!r}) are not in "
                f"{data_dir / 'train.jsonl'}; the subset is stale, run the subsample step again."
            )
        fraction = subset["fraction"]
        label = f"f{fraction}" if fraction is not None else f"n{subset['n']}"
        add(
            f"train {label} s{subset['seed']}",
            fraction,
            subset["seed"],
            [by_id[i] for i in subset["ids"]],
            overlap(pool_ids, subset["ids"]) if pool is not None else None,
        )
    columns = ["task", "split", "fraction", "seed", "label", "count", "probe_overlap"]
    frame = pd.DataFrame(rows, columns=columns)
    # Nullable integers so whole-split rows have empty fraction/seed cells in the CSV.
    if all(float(f).is_integer() for f in frame["fraction"].dropna()):
        frame["fraction"] = frame["fraction"].astype("Int64")
    frame["seed"] = frame["seed"].astype("Int64")
    frame["count"] = frame["count"].astype("int64")
    frame["probe_overlap"] = frame["probe_overlap"].astype("Int64")
    return frame
