"""Low-level reading: text, JSON Lines and delimited tables, with file:line for every row."""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path

from finescope.data.config import _BadRow, _BadRows, _Cfg
from finescope.errors import FinescopeError


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
