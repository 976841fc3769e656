"""Row conversion: NLI pairs and NER sentences from raw rows, tags checked and normalised."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from finescope.data.config import TAG_RE, UNLABELED, _BadRow, _BadRows, _Cfg, _Record
from finescope.data.readers import _lines
from finescope.errors import FinescopeError


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
