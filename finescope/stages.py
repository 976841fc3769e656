"""One function per workflow job: read the job's files, call the stage's logic, write outputs.

``scripts/*.py`` call these with values taken from the Snakemake job; everything here works
just as well from a notebook.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from finescope import io, job_warnings
from finescope.errors import FinescopeError
from finescope.probe_pool import cap_items
from finescope.progress import format_seconds

log = logging.getLogger("finescope")


def _optional(name: str):
    """The module, or None where it is not installed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        return None


@contextlib.contextmanager
def logged(
    log_path: str | Path,
    threads: int | None = None,
    offline: bool = True,
    gpus: int | list[int] | None = None,
) -> Iterator[None]:
    """Send logging, warnings and progress bars of one job to its log file.

    A job that fails on a :class:`FinescopeError` (a problem with the config, the data or a
    model, with a message saying what to do) writes the traceback to the log and one line,
    ``finescope: <message> (log: <path>)``, to the console's stderr, then exits with status 1.
    Any other exception is logged and raised with its traceback.

    Compute jobs run offline (``HF_HUB_OFFLINE=1``): models and hub datasets reach them through
    the folders that the local ``prepare_model`` and ``fetch_data`` jobs wrote, the only jobs
    that may use the network (``offline=False``).

    ``gpus`` (``resources.gpus``) makes the job hold one GPU slot of that many for its life
    (:func:`finescope.gpu.gpu_slot`).
    """
    console = _console_job(log_path)
    if console:
        _HEADLINE.clear()
        print(f"finescope: {console} started (tail -f {log_path})", file=sys.stderr, flush=True)
        started = time.monotonic()
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        from threadpoolctl import threadpool_limits

        # Jobs of envs/analysis.yaml have no torch or transformers (finescope without `models`).
        torch = _optional("torch")
        if torch is not None:
            torch.set_num_threads(threads)
        # NumPy/SciPy BLAS and OpenMP pools (the probes' scikit-learn fits) keep to them too.
        threadpool_limits(threads)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    # finescope's warnings also go to <log>.warnings.jsonl, for the summary and the console.
    recorder = job_warnings.Recorder(log_path).start()
    transformers = _optional("transformers")
    if transformers is not None:
        transformers.logging.set_verbosity_error()
    # One GPU per job (resources.gpus), chosen before torch initialises CUDA, logged to the job.
    gpu = contextlib.ExitStack()
    if gpus:
        from finescope.gpu import gpu_slot

        gpu.enter_context(gpu_slot(gpus))
    failure: FinescopeError | None = None
    with open(log_path, "a", encoding="utf-8") as stream, contextlib.redirect_stderr(stream):
        try:
            yield
        except FinescopeError as exc:
            log.exception("job failed")
            failure = exc
        except Exception:
            log.exception("job failed")
            raise
        finally:
            recorder.stop()
            gpu.close()
            root.removeHandler(handler)
            handler.close()
            sys.stderr.flush()
    if failure is not None:
        # stderr is the console's again: one line, no traceback (that is in the log).
        print(f"finescope: {failure} (log: {log_path})", file=sys.stderr, flush=True)
        raise SystemExit(1)
    if console:
        took = format_seconds(time.monotonic() - started)
        headline = f": {_HEADLINE['text']}" if _HEADLINE.get("text") else ""
        print(f"finescope: {console} done in {took}{headline}", file=sys.stderr, flush=True)


# Long jobs announce themselves on the console: one line when they start, one when they end.
CONSOLE_STAGES = ("finetune", "extract", "probe", "compare")
_HEADLINE: dict[str, str] = {}


def _console_job(log_path: str | Path) -> str | None:
    """``logs/finetune/nli/bert/f50/s1.log`` -> ``"finetune nli/bert/f50/s1"``; None for the
    jobs that stay quiet (data, models, analysis)."""
    parts = Path(log_path).with_suffix("").parts
    for i, part in enumerate(parts[:-1]):
        if part == "logs" and parts[i + 1] in CONSOLE_STAGES:
            return f"{parts[i + 1]} {'/'.join(parts[i + 2 :])}"
    return None


def headline(text: str) -> None:
    """The number a job's console end line reports (e.g. its test score)."""
    _HEADLINE["text"] = text


def prepare_model(ref: str, out_dir: str, facts_path: str, trust_remote_code: bool) -> None:
    from finescope.models import materialize_model

    facts = materialize_model(ref, out_dir, trust_remote_code=trust_remote_code)
    log.info("materialised %s into %s: %s", ref, out_dir, facts)
    io.write_json(facts_path, facts)


def fetch_data(task: str, data_cfg: dict, out_dir: str) -> None:
    """The local job that downloads a task's hub dataset (the only data job with network)."""
    from finescope.data import fetch_hub_dataset

    log.info("fetched %s", fetch_hub_dataset(task, data_cfg, out_dir))


def prepare_data(task: str, data_cfg: dict, seed: int, probe_pool: dict, labels_path: str) -> None:
    from finescope.data import prepare_task

    stats = prepare_task(task, data_cfg, Path(labels_path).parent, seed, probe_pool=probe_pool)
    log.info("prepared %s: %s", task, stats)


def subsample(task: str, train_path: str, fraction: int, seed: int, out_path: str) -> None:
    from finescope.subsample import subsample_ids, write_subset

    ids = subsample_ids(io.read_jsonl(train_path), task, seed, fraction=fraction)
    log.info("%s f%s s%s: %d items", task, fraction, seed, len(ids))
    write_subset(out_path, ids, task, fraction, seed)


def finetune(
    task: str,
    point: dict,
    model_dir: str,
    labels_path: str,
    subset_path: str,
    model_out: str,
    checkpoint_dir: str,
    settings: dict,
    tracking: dict | None = None,
) -> None:
    from finescope.finetune import run_finetune
    from finescope.subsample import read_subset

    subset = read_subset(subset_path)
    ids = subset["ids"] if isinstance(subset, dict) else subset
    metrics = run_finetune(
        task,
        model_dir,
        Path(labels_path).parent,
        ids,
        Path(model_out).parent,
        checkpoint_dir,
        settings,
    )
    log.info("metrics: %s", {k: v for k, v in metrics.items() if k != "test_predictions"})
    dev = (metrics.get("dev") or {}).get("score")
    dev_text = f", dev {dev:.3f}" if isinstance(dev, float) else ""
    headline(f"test {metrics['primary']} {metrics['score']:.3f}{dev_text}")
    from finescope import tracking as track

    if track.enabled(tracking):
        curve = Path(model_out).parent / "curve.csv"
        from finescope.finetune import resolve_settings

        track.log_finetune_run(tracking, point, resolve_settings(settings), metrics, curve)


def probe_items(items: list[dict], max_items: int | None, seed: int) -> list[dict]:
    """The items probed for a split: a seeded sample by id, the same for every grid point
    (all of them when ``max_items`` is None)."""
    return [items[i] for i in cap_items([item["id"] for item in items], max_items, seed)]


def extract(task: str, model_dir: str, data_path: str, out_dir: str, settings: dict) -> None:
    from finescope.extract import run_extract

    settings = dict(settings)
    items = probe_items(
        io.read_jsonl(data_path), settings.pop("max_items"), settings.pop("item_seed")
    )
    info = run_extract(task, model_dir, items, Path(out_dir), settings)
    log.info("extracted %d items: %s", len(items), info)
    _warn_truncation(task, info)
    headline(f"{len(items)} items x {info.get('n_layers')} layers in {out_dir}")


def _warn_truncation(task: str, info: dict) -> None:
    """A warning (it reaches the summary) when extract.max_length cut the input."""
    cut = info.get("n_truncated_sequences") or 0
    if not cut:
        return
    if task == "ner":
        log.warning(
            "extract.max_length=%d cut %d of %d sentences: %d words lost, left out of the "
            "probes; raise extract.max_length to keep them",
            info["max_length"],
            cut,
            info["n_items"],
            info.get("n_words_lost") or 0,
        )
    else:
        log.warning(
            "extract.max_length=%d cut %d of %d sequences: the text beyond it is not seen; "
            "raise extract.max_length to keep it",
            info["max_length"],
            cut,
            # The separate view encodes premise and hypothesis as two sequences.
            info["n_items"] * (2 if info.get("nli_view") == "separate" else 1),
        )


def truncation_counts(*caches: str | Path) -> dict[str, int | None]:
    """Words (NER) and sequences cut by extract.max_length in hidden-state caches, summed."""
    metas = [io.read_json(Path(c) / "meta.json") for c in caches]
    words = [m.get("n_words_lost") for m in metas]
    return {
        "words_truncated": sum(words) if all(w is not None for w in words) else None,
        "sequences_truncated": sum(int(m.get("n_truncated_sequences") or 0) for m in metas),
    }


def probe(
    probe_cache: str,
    test_cache: str,
    pool_path: str,
    test_path: str,
    point: dict,
    settings: dict,
    out_csv: str,
    n_jobs: int = 1,
) -> None:
    from finescope.probe import run_probes

    # Layers in parallel, one per thread of the job; the scores do not depend on it.
    settings = {**settings, "n_jobs": n_jobs}
    pool = io.read_jsonl(pool_path)
    kwargs: dict = {"dev_ids": [str(i["id"]) for i in pool if i.get("probe_split") == "dev"]}
    if point["task"] == "nli":
        # The lexical control task keys each pair by a word of its hypothesis.
        kwargs["probe_hypotheses"] = {str(i["id"]): i["hypothesis"] for i in pool}
        kwargs["test_hypotheses"] = {
            str(i["id"]): i["hypothesis"] for i in io.read_jsonl(test_path)
        }
    table = run_probes(
        point["task"], Path(probe_cache), Path(test_cache), point, settings, **kwargs
    )
    # How much of the probed input max_length cut (words: NER only; empty for NLI).
    table = table.assign(**truncation_counts(probe_cache, test_cache))
    write_csv(table, out_csv)
    headline(_best_probe_line(table))


def _best_probe_line(table: pd.DataFrame) -> str:
    """``"best linear macro_f1 0.912 at layer 4"``: the probe score at the layer that is best
    on probe-dev (on test when there is no probe-dev), over the probes of the job."""
    for measure in ("macro_f1", "accuracy"):
        test = table[table["measure"] == measure]
        if test.empty:
            continue
        dev = table[table["measure"] == f"dev_{measure}"]
        pick = dev if len(dev) else test
        best = pick.loc[pick["value"].idxmax()]
        at = test[(test["probe"] == best["probe"]) & (test["layer"] == best["layer"])]
        value = float(at["value"].iloc[0]) if len(at) else float("nan")
        chosen = "probe-dev" if len(dev) else "test"
        return (
            f"{best['probe']} {measure} {value:.3f} at layer {int(best['layer'])} "
            f"(best on {chosen})"
        )
    return f"{len(table)} rows"


def compare(pretrained: str, finetuned: str, point: dict, settings: dict, out_csv: str) -> None:
    from finescope.compare import run_compare

    table = run_compare(Path(pretrained), Path(finetuned), point, settings)
    write_csv(table, out_csv)
    cka = table[(table["measure"] == "cka") & (table["head"] == "all")]
    if len(cka):
        last = cka.loc[cka["layer"].idxmax()]
        headline(f"CKA {float(last['value']):.3f} at the last layer ({int(last['layer'])})")


def write_csv(table: pd.DataFrame, path: str | Path) -> None:
    with io.atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def data_table(labels_paths: list[str], subset_paths: list[str], out_csv: str) -> None:
    from finescope.data import data_report
    from finescope.subsample import read_subset

    frames = []
    for labels in labels_paths:
        data_dir = Path(labels).parent
        task = data_dir.name
        # Each subset file names its task.
        subsets = [Path(p) for p in subset_paths if read_subset(p)["task"] == task]
        frames.append(data_report(task, data_dir, subsets))
    write_csv(pd.concat(frames, ignore_index=True), out_csv)


def tables(
    metrics_paths: list[str],
    points: list[dict],
    probe_paths: list[str],
    change_paths: list[str],
    facts_paths: list[str],
    model_meta: dict,
    entity_f1: str,
    outputs: dict,
) -> None:
    """Collect every job's numbers into the tidy tables of the run; ``points[i]`` is the grid
    point of ``metrics_paths[i]``."""
    from finescope.analysis import collect_downstream, downstream_table, read_tables, tidy_measures

    meta = {name: dict(m) for name, m in model_meta.items()}
    for facts_path in facts_paths:
        meta[Path(facts_path).stem]["n_layers"] = io.read_json(facts_path)["n_layers"]
    records = [
        {**point, "metrics": io.read_json(p)}
        for p, point in zip(metrics_paths, points, strict=True)
    ]
    downstream = collect_downstream(records, meta, entity_f1=entity_f1)
    probing = read_tables(probe_paths)
    change = read_tables(change_paths)
    tidy = tidy_measures(downstream, probing, change, meta)
    write_csv(downstream_table(downstream), outputs["downstream"])
    write_csv(probing, outputs["probing"])
    write_csv(change, outputs["change"])
    is_attention = change["measure"].astype(str).str.startswith("attention") if len(change) else []
    write_csv(change[is_attention] if len(change) else change, outputs["attention"])
    write_csv(tidy, outputs["measures"])
    with io.atomic_path(outputs["parquet"]) as tmp:
        tidy.to_parquet(tmp, index=False)


def correlations(measures_path: str, settings: dict, out_csv: str) -> None:
    from finescope.analysis import correlate

    tidy = pd.read_parquet(measures_path)
    table = correlate(
        tidy,
        seed=settings["seed"],
        n_boot=settings["n_boot"],
        min_n=settings["min_n"],
        depth_bins=settings["depth_bins"],
    )
    write_csv(table, out_csv)


def figures(
    measures_path: str,
    correlations_path: str,
    out_dir: str | Path,
    curve_paths: list[str] = (),
    metrics_paths: list[str] = (),
    points: list[dict] = (),
    attention_pairs: list[tuple[str, str]] = (),
    attention_points: list[dict] = (),
    tracking: dict | None = None,
    grid: dict | None = None,
) -> None:
    """Every figure. ``points[i]`` is the grid point of ``curve_paths[i]`` and
    ``metrics_paths[i]``; ``attention_pairs`` are (pre-trained, fine-tuned) test caches of the
    attention example, at ``attention_points``. With tracking on, the analysis run is logged
    here too."""
    from finescope import figures as fg

    examples = {}
    for (pre, ft), point in zip(attention_pairs, attention_points, strict=True):
        key = (point["task"], point["model"], point["fraction"])
        examples[key] = fg.attention_example(pre, ft)
    tidy = pd.read_parquet(measures_path)
    correlations = pd.read_csv(correlations_path)
    written = fg.make_all_figures(
        tidy,
        correlations,
        out_dir,
        curves=fg.read_curves(curve_paths, points),
        predictions=fg.read_predictions(metrics_paths, points),
        attention=examples,
    )
    log.info("figures: %s", {name: [str(p) for p in paths] for name, paths in written.items()})
    from finescope import tracking as track

    if track.enabled(tracking):
        downstream = tidy[tidy["source"] == "downstream"]
        pngs = [paths[0] for paths in written.values()]
        track.log_analysis_run(tracking, downstream, correlations, grid, pngs)


def summary(
    measures_path: str,
    correlations_path: str,
    grid: dict,
    out_path: str,
    logs_dir: str | Path = "logs",
) -> None:
    from finescope.summary import write_summary

    # Globbed at run time, not rule inputs: the records are side files of the jobs' logs. Jobs
    # upstream of the tables have finished by now; figures and data_table may still be running.
    records = job_warnings.collect(logs_dir, grid)
    write_summary(
        pd.read_parquet(measures_path),
        pd.read_csv(correlations_path),
        grid,
        out_path,
        warnings=records,
    )
