"""The one home of the config's defaults, ``schemas/config.schema.yaml``, and the base of the
typed settings each stage takes.

Snakemake fills the defaults in when it validates the config; each stage's frozen settings
class (:class:`Settings`) takes the defaults of its config keys from the schema too, so a
notebook caller and a workflow run of the same empty config block compute the same thing.
Fields that only a job sets (seed, threads, trust_remote_code, ...) are declared by the stage
that needs them.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from finescope.errors import FinescopeError, unknown_key_hint

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


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


def schema_default(key: str) -> Any:
    """The schema's default of one config key, ``"finetune.learning_rate"``; lists come back as
    tuples (a frozen settings object holds no mutable value)."""
    block, *path = key.split(".")
    value: Any = defaults(block)
    for part in path:
        value = value[part]
    return _frozen(value)


def _frozen(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _plain(value: Any) -> Any:
    """Nested settings, tuples and lists as plain dicts and lists (what YAML and JSON hold)."""
    if isinstance(value, Settings):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# Field metadata: the job's params leave the field out while it is at its default. For
# settings that pick hardware, or that were added after jobs had finished: Snakemake re-runs a
# job whose params change, and these must not re-run finished jobs.
QUIET = {"quiet": True}


SettingsT = TypeVar("SettingsT", bound="Settings")


@dataclass(frozen=True)
class Settings:
    """Base of the frozen, typed settings of one stage (``FinetuneSettings``, ...).

    A subclass is a frozen dataclass: a field that is a config key takes its default from the
    schema (:func:`schema_default`), a field that only a job sets has its own; its
    ``__post_init__`` checks the values (and may normalise them), naming the config key.
    ``Cls()`` is what the workflow passes for an empty config block.
    """

    # The config key of the block, for messages ("finetune", "probe.linear").
    KEY: ClassVar[str] = ""

    @classmethod
    def build(cls: type[SettingsT], given: Mapping | Settings | None = None) -> SettingsT:
        """``given`` (a mapping of some of the fields; a nested block as a mapping of its own
        fields) over the defaults, checked. An instance of ``cls`` is returned as it is."""
        if isinstance(given, cls):
            return given
        if given is None:
            given = {}
        if not isinstance(given, Mapping):
            raise FinescopeError(f"config key {cls.KEY}: expected a mapping, got {given!r}")
        known = cls._known(given)
        return cls(**{name: cls._field_value(known[name], value) for name, value in given.items()})

    @classmethod
    def _known(cls, keys) -> dict[str, dataclasses.Field]:
        """The fields by name; an error naming the config key for a key that is none."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted((k for k in keys if k not in known), key=str)
        if unknown:
            raise FinescopeError(
                f"config key {cls.KEY}.{unknown[0]}: unknown setting; "
                + unknown_key_hint(unknown[0], known)
            )
        return known

    @staticmethod
    def _field_value(f: dataclasses.Field, value: Any) -> Any:
        """A nested block built into its settings class, lists as tuples."""
        nested = f.default_factory
        if isinstance(nested, type) and issubclass(nested, Settings):
            return nested.build(value)
        return _frozen(value)

    def _set(self, name: str, value: Any) -> None:
        """Normalise a field from ``__post_init__`` (the instance is frozen afterwards)."""
        object.__setattr__(self, name, value)

    def replace(self: SettingsT, **changes: Any) -> SettingsT:
        """A copy with ``changes``, checked again."""
        known = self._known(changes)
        return dataclasses.replace(
            self, **{k: self._field_value(known[k], v) for k, v in changes.items()}
        )

    def to_dict(self) -> dict:
        """Every field as plain values (nested blocks as dicts, tuples as lists)."""
        return _plain(self)

    def to_params(self) -> dict:
        """The job's params for Snakemake: :meth:`to_dict` without the :data:`QUIET` fields
        that are at their default. Snakemake tracks params of builtin types only (another
        object would silently never re-run the job), so rules pass this and scripts
        :meth:`build` the object from it again."""
        out = self.to_dict()
        for f in dataclasses.fields(self):
            if f.metadata.get("quiet") and getattr(self, f.name) == _field_default(f):
                del out[f.name]
        return out


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default
