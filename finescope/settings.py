"""The one home of the config's defaults: ``schemas/config.schema.yaml``.

Snakemake fills the defaults in when it validates the config; the stage functions take their
own defaults from here too, so a notebook caller and a workflow run of the same empty config
block compute the same thing. Keys that only a job sets (seed, threads, trust_remote_code, ...)
are added by the stage that needs them.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

from finescope.errors import FinescopeError

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


@functools.cache
def _schema() -> dict:
    if not SCHEMA.is_file():
        raise FinescopeError(
            f"{SCHEMA}: the config schema is missing; install finescope from its source tree "
            "(pip install -e .)"
        )
    return yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))


def tasks() -> tuple[str, ...]:
    """The tasks finescope knows (the schema's ``tasks`` block), e.g. ``("nli", "ner")``."""
    return tuple(_schema()["properties"]["tasks"]["properties"])


# Marks a schema node without a default (None is a real default, e.g. tracking.uri).
_NONE = object()


def _defaults(node: dict) -> Any:
    children = {
        key: _defaults(child)
        for key, child in node.get("properties", {}).items()
        if "default" in child or "properties" in child
    }
    children = {key: value for key, value in children.items() if value is not _NONE}
    if children:
        return children
    return node.get("default", _NONE)


def defaults(block: str) -> dict:
    """The defaults of one top-level config block (``finetune``, ``probe``, ...), nested blocks
    as nested dicts, e.g. ``defaults("probe")["linear"]["C"] == 1.0``."""
    node = _schema()["properties"].get(block)
    if node is None:
        raise KeyError(f"the config schema has no block {block!r}")
    value = _defaults(node)
    if not isinstance(value, dict):
        raise KeyError(f"the config schema's block {block!r} has no defaults")
    return copy.deepcopy(value)
