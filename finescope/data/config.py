"""A task's data settings, checked, and the record types the readers fill."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from finescope.errors import FinescopeError, unknown_key_hint
from finescope.settings import tasks

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
