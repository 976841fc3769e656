"""The experiment grid and the settings each job receives, derived from the validated config.

Kept free of Snakemake so the same grid can be inspected from a notebook or a test.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from finescope.data import hub_data_dir, is_hub_dataset
from finescope.errors import FinescopeError, unknown_key_hint
from finescope.refs import GGUF_PREFIX, PYPI_PREFIX
from finescope.settings.analysis import AnalysisSettings
from finescope.settings.compare import CompareSettings
from finescope.settings.extract import ExtractSettings
from finescope.settings.finetune import FinetuneSettings
from finescope.settings.probe import ProbeSettings
from finescope.settings.probe_pool import ProbePoolSettings

# Probes that only make sense for one task: the study's SVM reads sentence pairs,
# its BiLSTM-CRF reads word sequences.
TASK_ONLY_PROBES = {"svm": "nli", "bilstm_crf": "ner"}
PRETRAINED = "0"
RANDOM = "random"
TABLES = ["data", "downstream", "probing", "change", "attention", "correlations", "measures"]
# The extract block's keys that every cache takes as they are.
_EXTRACT_KEYS = ("batch_size", "max_length", "dtype", "padding_side", "device", "bf16_autocast")


def _dotted(parts: Sequence) -> str:
    """A config key path as written in messages: ``fractions[1]``, ``models.bert.ref``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _compose(path: Path):
    """The YAML node tree of a config file; None when it is not YAML (JSON that PyYAML cannot
    read is left to Snakemake, which reads JSON first)."""
    try:
        return yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError):
        return None


def check_config_files(paths: Iterable[str | Path]) -> None:
    """Refuse a config file that is not YAML, holds no settings, or repeats a key.

    Each message names the file and the line: Snakemake's own message names neither.
    """
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise FinescopeError(
                f"config file {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML."
            ) from None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            try:
                json.loads(text)
            except ValueError:
                raise FinescopeError(_yaml_error(path, exc)) from None
            continue
        if root is None:
            raise FinescopeError(
                f"config file {path} line 1: the file is empty (or only comments); give at "
                "least tasks and models, as in config.yaml."
            )
        if not isinstance(root, yaml.MappingNode):
            raise FinescopeError(
                f"config file {path} line {root.start_mark.line + 1}: expected settings "
                "(key: value lines) at the top level, got "
                f"{'a list' if isinstance(root, yaml.SequenceNode) else repr(root.value)}."
            )
        _check_node(root, [], path)


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    detail = getattr(exc, "problem", None) or str(exc)
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        since = f" at line {start.line + 1}" if start and start is not mark else ""
        detail += f" ({context}{' started' if since else ''}{since})"
    hint = " Indent with spaces, not tabs." if "\\t" in detail else ""
    return f"config file {path}{where}: not valid YAML: {detail}.{hint}"


def check_unique_keys(paths: Iterable[str | Path]) -> None:
    """Refuse a config file that repeats a key inside one mapping.

    YAML loaders keep the last of two equal keys without a word, so two models given the same
    name would silently become one. Each file is composed again (nodes keep their line numbers)
    and every mapping is checked; files that are not YAML are left to
    :func:`check_config_files`.
    """
    for path in paths:
        path = Path(path)
        if path.is_file():
            _check_node(_compose(path), [], path)


def _check_node(node, where: list, path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in first_line and key != "<<":
                place = f"under {_dotted(where)}" if where else "at the top level"
                raise FinescopeError(
                    f"config file {path} line {line}: duplicate key {key!r} {place} (first at "
                    f"line {first_line[key]}); YAML would keep only the last one. Give each "
                    "entry its own name."
                )
            first_line[key] = line
            _check_node(value_node, [*where, key], path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_node(item, [*where, i], path)


def key_location(parts: Sequence, files: Sequence[str | Path]) -> tuple[Path, int] | None:
    """The config file and line that give the key ``parts`` (``["models", "bert", "ref"]``,
    list items by index); the last file that gives it wins, as when Snakemake merges them.
    None when no file gives it (a default, or a value from ``--config``)."""
    for path in reversed([Path(f) for f in files]):
        node = _compose(path) if path.is_file() else None
        line = None
        for part in parts:
            if isinstance(node, yaml.MappingNode):
                match = [(k, v) for k, v in node.value if getattr(k, "value", None) == str(part)]
                if not match:
                    break
                line = match[-1][0].start_mark.line + 1
                node = match[-1][1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    break
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        else:
            if node is not None:
                return path, line or node.start_mark.line + 1
    return None


def config_key_error(
    parts: Sequence, message: str, files: Sequence[str | Path] = ()
) -> FinescopeError:
    """``<file>:<line>: config key <key>: <message>`` as a :class:`FinescopeError`, naming the
    file and line that give the key; ``config key <key> in <files>: <message>`` when none of
    the files gives it (a default, or a value from ``--config``)."""
    key = _dotted(parts) or "(top level)"
    found = key_location(parts, files) if parts else None
    if found:
        return FinescopeError(f"{found[0]}:{found[1]}: config key {key}: {message}")
    where = f" in {', '.join(str(f) for f in files)}" if files else ""
    return FinescopeError(f"config key {key}{where}: {message}")


def schema_error(exc: BaseException, files: Sequence[str | Path] = ()) -> FinescopeError | None:
    """The JSON-schema error behind a failed config validation, as one message naming the config
    key and the file and line that give it; None when ``exc`` was not caused by one.

    Parameters
    ----------
    exc
        The exception raised by ``snakemake.utils.validate`` (its cause or context is the
        ``jsonschema.ValidationError``), or that error itself.
    files
        The config files read, named in the message.
    """
    error = exc
    while error is not None and not hasattr(error, "absolute_path"):
        error = error.__cause__ or error.__context__
    if error is None:
        return None
    error, alternatives = _specific(error)
    parts = list(error.absolute_path)
    key = _dotted(parts)
    instance = error.instance
    if alternatives:
        message = f"{instance!r} is none of the allowed forms: " + "; ".join(alternatives)
    elif error.validator == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted((k for k in instance if k not in allowed), key=str)
        if unknown:
            place = f"under {key}" if key else "at the top level"
            parts = [*parts, unknown[0]]
            message = f"unknown key {place}; " + unknown_key_hint(unknown[0], allowed)
        else:
            message = error.message
    elif error.validator in ("minProperties", "minItems") and not instance:
        n = error.validator_value
        message = f"is empty; give at least {'one entry' if n == 1 else f'{n} entries'}"
    else:
        message = error.message
        if error.validator == "type" and isinstance(instance, str):
            try:
                float(instance)
            except ValueError:
                pass
            else:
                message += " (YAML reads a number such as 5e-5 as text; write 5.0e-5 or 0.00005)"
    return config_key_error(parts, message, files)


# A value failing one of these at a branch's root does not have the branch's form at all.
_FORM_VALIDATORS = ("type", "enum", "const")


def _specific(error) -> tuple:
    """For a value that matches no branch of a ``oneOf``/``anyOf``: the error inside the one
    branch whose form (type or enum) the value has (``mdl: {portions: [1]}`` gives the error
    at ``mdl.portions``), or, when no branch or several could apply, the error and what each
    branch says."""
    while error.validator in ("oneOf", "anyOf") and error.context:
        branches: dict[int, list] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        typed = [
            subs
            for subs in branches.values()
            if not any(s.validator in _FORM_VALIDATORS and not s.relative_path for s in subs)
        ]
        if len(typed) != 1:
            return error, [min(subs, key=_depth).message for subs in branches.values()]
        error = max(typed[0], key=_depth)
    return error, []


def _depth(error) -> int:
    return len(error.absolute_path)


def check_config(config: dict, files: Sequence[str | Path] = ()) -> None:
    """Checks the JSON schema cannot express; each error names the config key and, given the
    config files, the file and line that set it."""
    for name, model in config["models"].items():
        ref = model["ref"]
        key = ["models", name, "ref"]
        path = Path(ref).expanduser()
        if ref.startswith((".", "/", "~")) and not path.exists():
            raise config_key_error(
                key,
                f"local path {path.resolve()} does not exist. Give an existing model folder, "
                "a hub id, or pypi:/gguf: package.",
                files,
            )
        if not ref.startswith((PYPI_PREFIX, GGUF_PREFIX)) and path.exists():
            if not path.is_dir():
                raise config_key_error(
                    key,
                    f"local path {path.resolve()} is a file; give the model folder (the one "
                    "with config.json), or gguf:<file> for a GGUF file.",
                    files,
                )
            if not (path / "config.json").is_file():
                raise config_key_error(
                    key,
                    f"local folder {path.resolve()} has no config.json, so it is not a model "
                    "folder; give the folder that from_pretrained reads (config.json and the "
                    "weights).",
                    files,
                )
        if ref.startswith(GGUF_PREFIX):
            target = Path(ref[len(GGUF_PREFIX) :]).expanduser()
            if target.suffix == ".gguf" and not target.is_file():
                raise config_key_error(key, f"GGUF file {target.resolve()} does not exist.", files)
        if not ref.startswith((PYPI_PREFIX, GGUF_PREFIX)) and ":" in ref:
            raise config_key_error(
                key,
                f"{ref!r} has an unknown prefix; use pypi:<package>, gguf:<package or file>, "
                "a local folder or a hub id",
                files,
            )
        if "/" in name or not name.replace("-", "").replace("_", "").isalnum():
            raise config_key_error(
                ["models", name], "model names may hold letters, digits, '-' and '_' only", files
            )
        if "keep_model" in model.get("finetune", {}):
            raise config_key_error(
                ["models", name, "finetune", "keep_model"],
                "what the workflow keeps on disk is one setting for every model; set it in the "
                "top-level finetune block.",
                files,
            )
    _check_probes(config, files)
    # Missing data files are reported by the data job, not here, so that a grid whose data sits
    # on another machine (MedNLI on a cluster) can still be planned with `snakemake -n`.


def _check_probes(config: dict, files: Sequence[str | Path]) -> None:
    tasks = list(config["tasks"])
    probes = config["probe"]["probes"]
    for i, probe in enumerate(probes):
        task = TASK_ONLY_PROBES.get(probe)
        if task is not None and task not in tasks:
            serves = "; ".join(
                f"{p} {TASK_ONLY_PROBES[p]} only" if p in TASK_ONLY_PROBES else f"{p} every task"
                for p in ("linear", "mlp", "svm", "bilstm_crf")
            )
            raise config_key_error(
                ["probe", "probes", i],
                f"probe {probe!r} serves the {task} task only, which this config does not "
                f"study (tasks: {', '.join(tasks)}). Probes serve: {serves}. Remove {probe} "
                f"or add the {task} task.",
                files,
            )
    mdl = config["probe"]["mdl"]
    portions = mdl.get("portions") if isinstance(mdl, dict) else None
    if portions is not None and (
        portions[-1] != 100 or any(b <= a for a, b in zip(portions, portions[1:], strict=False))
    ):
        raise config_key_error(
            ["probe", "mdl", "portions"],
            f"{portions} must increase strictly and end at 100 (percent of probe-train).",
            files,
        )


@dataclass(frozen=True)
class Grid:
    """Tasks × models × fractions × seeds, and the per-job settings."""

    config: dict

    @classmethod
    def from_config(cls, config: dict) -> Grid:
        return cls(copy.deepcopy(config))

    @property
    def tasks(self) -> list[str]:
        return list(self.config["tasks"])

    @property
    def models(self) -> list[str]:
        return list(self.config["models"])

    @property
    def trained_fractions(self) -> list[int]:
        return sorted(f for f in self.config["fractions"] if f > 0)

    @property
    def seeds(self) -> list[int]:
        return list(self.config["seeds"])

    def training_points(self) -> list[tuple[str, int]]:
        """(fraction, seed) pairs that need a fine-tuning job."""
        return [(str(f), s) for f in self.trained_fractions for s in self.seeds]

    def internal_points(self) -> list[tuple[str, int]]:
        """(fraction, seed) pairs whose hidden states are probed: the pre-trained model (once,
        seed 0), the random-weights baseline when enabled, and every trained point."""
        points = [(PRETRAINED, 0)]
        if self.config["probe"]["random_baseline"]:
            points.append((RANDOM, 0))
        return points + self.training_points()

    def model_meta(self) -> dict[str, dict]:
        return {
            name: {"family": m["family"], "domain": m["domain"]}
            for name, m in self.config["models"].items()
        }

    def ner_subword(self, model: str) -> str:
        """The sub-word of a word that the NER head labels: the first for encoders, the last
        for decoders (under causal attention only the last one has seen the whole word)."""
        m = self.config["models"][model]
        return m.get("ner_subword") or ("last" if m["family"] == "decoder" else "first")

    def finetune_settings(self, model: str, seed: int) -> FinetuneSettings:
        """Settings of one fine-tuning job: the finetune block with the model's overrides
        (its lora block merged key by key), the seed and the model's own keys."""
        given = copy.deepcopy(self.config["finetune"])
        given.pop("keep_model")  # what the workflow keeps on disk, not how to train
        override = copy.deepcopy(self.config["models"][model].get("finetune", {}))
        if "lora" in override:
            given["lora"] = {**given["lora"], **override.pop("lora")}
        given.update(override)
        return FinetuneSettings.build(
            {
                **given,
                "seed": seed,
                "trust_remote_code": self.config["models"][model]["trust_remote_code"],
                "ner_subword": self.ner_subword(model),
            }
        )

    def extract_settings(
        self, model: str, split: str, random_init: bool = False, task: str | None = None
    ) -> ExtractSettings:
        """Settings of one cache; ``split`` is ``probe`` (the reserved probe pool, every item)
        or ``test`` (capped at ``extract.max_test_items``)."""
        extract = self.config["extract"]
        given = {key: extract[key] for key in _EXTRACT_KEYS}
        given |= {
            "max_items": extract["max_test_items"] if split == "test" else None,
            "item_seed": extract["seed"],
            # Attention maps are only compared on the test split.
            "attention_items": extract["attention_items"] if split == "test" else 0,
            "random_init": random_init,
            "trust_remote_code": self.config["models"][model]["trust_remote_code"],
        }
        # Each task gets only its own setting (the other stays at its default, which the
        # job's params leave out), so changing one re-extracts only that task.
        if task in (None, "nli"):
            given["nli_view"] = extract["nli_view"]
        if task in (None, "ner"):
            given["ner_pooling"] = extract.get("ner_pooling") or self.ner_subword(model)
        if random_init:
            # The seed only draws the random baseline's weights: were it a setting of every
            # extraction, a new probe.seed would re-extract the whole grid.
            given["seed"] = self.config["probe"]["seed"]
        override = dict(self.config["models"][model].get("extract", {}))
        if task == "nli":
            override.pop("ner_pooling", None)
        return ExtractSettings.build({**given, **override})

    def probe_settings(self, task: str) -> ProbeSettings:
        """The probe block for one task: the probes that serve it (random_baseline is a
        setting of the grid, not of a probe job)."""
        given = copy.deepcopy(self.config["probe"])
        given["probes"] = [p for p in given["probes"] if TASK_ONLY_PROBES.get(p, task) == task]
        given.pop("random_baseline")
        return ProbeSettings.build(given)

    def compare_settings(self) -> CompareSettings:
        return CompareSettings.build(self.config["compare"])

    def probe_pool_settings(self) -> ProbePoolSettings:
        return ProbePoolSettings.build(self.config["probe_pool"])

    def analysis_settings(self) -> AnalysisSettings:
        return AnalysisSettings.build(self.config["analysis"])

    def data_inputs(self, wildcards) -> list[str]:
        """Local files a task reads, so that editing one re-runs that task's jobs only, and the
        downloaded folder of a hub dataset."""
        data = self.config["tasks"][wildcards.task]["data"]
        paths = []
        if data["source"] == "files":
            paths = [data[s] for s in ("train", "dev", "test") if data.get(s)]
        elif data["source"] == "hf" and Path(str(data.get("name", ""))).expanduser().exists():
            paths = [data["name"]]
        # Only existing files: a missing one is reported by the data job with its config key.
        inputs = [str(Path(p).expanduser()) for p in paths if Path(p).expanduser().exists()]
        if is_hub_dataset(data):
            # The folder that the local fetch_data job downloads the hub dataset to.
            inputs.append(str(hub_data_dir(wildcards.task)))
        return inputs

    def description(self) -> dict:
        """The grid in plain values, for the summary."""
        return {
            "tasks": self.tasks,
            "models": self.models,
            "fractions": sorted(self.config["fractions"]),
            "seeds": self.seeds,
        }


def main(argv: list[str] | None = None) -> int:
    """``python -m finescope.workflow FILE...``: the file checks, before ``--configfile``.

    Snakemake reads a ``--configfile`` before the Snakefile runs, so a YAML error or an empty
    file there gets its message without file or line; ``make run CONFIG=F`` runs this first.
    """
    import sys

    try:
        check_config_files(sys.argv[1:] if argv is None else argv)
    except FinescopeError as exc:
        print(f"finescope: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
