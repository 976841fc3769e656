"""Tests for finescope.summary: the grid, the scores and the findings, deterministically."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from finescope import analysis, job, job_warnings, summary
from finescope.cache import truncation_counts
from finescope.data import prepare_data_job
from finescope.extract import extract_job

META = {
    "enc": {"family": "encoder", "domain": "general"},
    "bio": {"family": "encoder", "domain": "biomedical"},
}
GRID = {
    "tasks": ["nli"],
    "models": ["bio", "enc"],
    "fractions": [0, 10, 50, 100],
    "seeds": [0, 1, 2],
}


def tables(models=("enc", "bio"), fractions=(10, 50, 100), seeds=(0, 1, 2)):
    rng = np.random.default_rng(1)
    records, probing = [], []
    for model in models:
        for fraction in fractions:
            for seed in seeds:
                score = 0.4 + fraction / 300 + (0.05 if model == "bio" else 0.0)
                score += rng.normal(0, 0.01)
                records.append(
                    {
                        "task": "nli",
                        "model": model,
                        "fraction": fraction,
                        "seed": seed,
                        "metrics": {"primary": "macro_f1", "score": score, "macro_f1": score},
                    }
                )
                for layer in range(2):
                    probing.append(
                        dict(
                            task="nli",
                            model=model,
                            fraction=fraction,
                            seed=seed,
                            layer=layer,
                            probe="linear",
                            measure="selectivity",
                            value=score + rng.normal(0, 0.001),
                        )
                    )
                    probing.append(
                        dict(
                            task="nli",
                            model=model,
                            fraction=fraction,
                            seed=seed,
                            layer=layer,
                            probe="mlp",
                            measure="accuracy",
                            value=fraction / 100 + rng.normal(0, 0.01),
                        )
                    )
    tidy = analysis.tidy_measures(records, pd.DataFrame(probing), None, META)
    return tidy, analysis.correlate(tidy, seed=0, n_boot=50)


def test_summary_states_grid_scores_and_findings(tmp_path):
    tidy, corr = tables()
    out = tmp_path / "summary.md"
    text = summary.write_summary(tidy, corr, GRID, out)
    assert out.read_text(encoding="utf-8") == text
    assert "1 task(s) (nli), 2 model(s)" in text
    assert "0 % (pre-trained), 10 %, 50 % and 100 %" in text
    assert "seed(s) 0, 1 and 2" in text
    assert "bio: encoder, biomedical domain" in text
    assert "18 fine-tuned grid point(s) have a downstream score (the grid defines 18)" in text
    assert "| model | 10 % | 50 % | 100 % |" in text
    bio = tidy[
        (tidy["model"] == "bio") & (tidy["fraction"] == "100") & (tidy["measure"] == "score")
    ]["value"]
    assert f"{bio.mean():.3f} ± {bio.std():.3f} (3)" in text
    found = summary.findings(corr)
    assert not found.empty and set(found["measure"]) == {"selectivity"}
    assert (np.diff(found["q_value"].to_numpy()) >= 0).all()
    top = found.iloc[0]
    assert f"1. {summary._describe(top)}" in text
    assert "linear probe selectivity" in text
    assert "pooled over models, across seeds within each model × fraction cell" in text
    assert f"(the first 5 of {len(found)})" in text
    longer = summary.render_summary(tidy, corr, GRID, top=len(found))
    assert "within bio, across seeds at the same fraction" in longer
    assert "within enc, across seeds at the same fraction" in longer
    assert "- within_model (controls: fraction level (centred)): " in text
    # The measure that only follows the fraction is never a finding.
    assert "mlp probe accuracy" not in text
    assert summary.render_summary(tidy, corr, GRID) == text  # deterministic


def _rows(base: pd.Series, changes: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{**base.to_dict(), **c} for c in changes])[analysis.CORRELATION_COLUMNS]


def test_findings_are_ordered_by_q_then_effect_and_skip_underpowered_and_raw():
    _, corr = tables()
    base = corr[(corr["scope"] == "within_model") & (corr["model"] == "bio")].iloc[0]
    fake = _rows(
        base,
        [
            {"measure": "m_q03", "coefficient": 0.9, "p_value": 0.01, "q_value": 0.03},
            {"measure": "m_q001_small", "coefficient": 0.5, "p_value": 0.001, "q_value": 0.001},
            {"measure": "m_q001_big", "coefficient": -0.8, "p_value": 0.001, "q_value": 0.001},
            {"measure": "m_q2", "coefficient": 0.99, "p_value": 0.2, "q_value": 0.2},
            {
                "measure": "leaky",
                "coefficient": 1.0,
                "p_value": 1e-6,
                "q_value": np.nan,
                "underpowered": True,
                "ci_low": np.nan,
                "ci_high": np.nan,
                "note": "underpowered: n = 6 < min_n = 8",
            },
            {
                "measure": "rawmeasure",
                "scope": "raw",
                "family": "",
                "coefficient": 0.99,
                "p_value": 1e-9,
                "q_value": 1e-9,
            },
        ],
    )
    assert summary.findings(fake)["measure"].tolist() == ["m_q001_big", "m_q001_small", "m_q03"]
    text = summary.render_summary(analysis.tidy_measures(None, None, None, {}), fake, None)
    assert text.index("m_q001_big") < text.index("m_q001_small") < text.index("m_q03")
    assert "leaky" not in text and "rawmeasure" not in text and "m_q2" not in text


def test_all_underpowered_is_said_plainly():
    tidy, corr = tables(models=("enc",), fractions=(10, 100), seeds=(0, 1))
    assert corr["underpowered"].all()
    text = summary.render_summary(tidy, corr, GRID)
    assert "No finding: every test is underpowered: n = 4 < min_n = 8" in text
    assert "Spearman ρ =" not in text


def test_no_powered_test_significant_is_said_plainly():
    _, corr = tables()
    corr = corr.assign(q_value=corr["q_value"].where(corr["q_value"].isna(), 0.5))
    text = summary.render_summary(analysis.tidy_measures(None, None, None, {}), corr, None)
    assert "No finding: none of the" in text and "smallest q = 0.500" in text


def test_summary_lists_missing_grid_points_and_single_seed():
    tidy, corr = tables(models=("enc",), fractions=(10,), seeds=(0,))
    text = summary.render_summary(tidy, corr, {**GRID, "models": ["enc", "bio"]})
    assert "Missing: bio 10 % seed 0" in text
    assert "single seed" in text
    assert "every test is underpowered: n = 0 < min_n = 8" in text


def test_summary_without_results_or_grid():
    empty = analysis.tidy_measures(None, None, None, {})
    text = summary.render_summary(empty, analysis.correlate(empty), None)
    assert text.startswith("# finescope summary")
    assert "No fine-tuned grid point has a downstream score." in text
    assert "No correlation was computed" in text


def test_summary_from_csv_tables_matches(tmp_path):
    tidy, corr = tables()
    tidy.to_csv(tmp_path / "measures.csv", index=False)
    corr.to_csv(tmp_path / "correlations.csv", index=False)
    text = summary.render_summary(
        pd.read_csv(tmp_path / "measures.csv"), pd.read_csv(tmp_path / "correlations.csv"), GRID
    )
    assert text == summary.render_summary(tidy, corr, GRID)


# ---------------------------------------------------------------------------------------------
# The warnings the jobs raised
# ---------------------------------------------------------------------------------------------

TRAIN = [
    (["IL-2", "gene", "in", "T", "cells"], ["B-DNA", "I-DNA", "O", "B-cell_type", "I-cell_type"]),
    (["NF-kappa", "B", "binds", "DNA"], ["B-protein", "I-protein", "O", "O"]),
]
# Longer than extract.max_length below: its last words are cut.
LONG = (
    ["The", "IL-2", "gene", "is", "expressed", "in", "human", "T", "cells", "and", "NF-kappa", "B"],
    ["O", "B-DNA", "I-DNA", "O", "O", "O", "O", "B-cell_type", "I-cell_type", "O", "B-protein"]
    + ["I-protein"],
)
RUN_GRID = {
    "tasks": ["ner", "nli"],
    "models": ["bert", "bio", "enc"],
    "fractions": [0, 10, 50, 100],
}
RUN_GRID["seeds"] = [1, 2]  # the pre-trained model's jobs run as seed 0


def _tsv(sentences) -> str:
    return "".join(
        "".join(f"{t}\t{g}\n" for t, g in zip(*s, strict=True)) + "\n" for s in sentences
    )


def _prepare(tmp_path: Path, dev) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    for split, sentences in {"train": TRAIN * 6, "dev": dev, "test": [LONG, *TRAIN]}.items():
        (corpus / f"{split}.tsv").write_text(_tsv(sentences))
    cfg = {"source": "files", "format": "tsv"}
    cfg |= {s: str(corpus / f"{s}.tsv") for s in ("train", "dev", "test")}
    labels = tmp_path / "results" / "data" / "ner" / "labels.json"
    with job.logged(tmp_path / "logs" / "prepare_data" / "ner.log"):
        prepare_data_job("ner", cfg, 13, None, str(labels))
    return labels.parent


def test_the_summary_lists_the_warnings_the_jobs_raised(tmp_path, tiny_bert_dir, capsys):
    logs = tmp_path / "logs"
    # The data job: a dev split without DNA and cell_type entities.
    data = _prepare(tmp_path, dev=[TRAIN[1]])
    # An extraction whose max_length cuts words of the long test sentence.
    cache = tmp_path / "cache"
    settings = {
        "batch_size": 4,
        "max_length": 8,
        "dtype": "float32",
        "max_items": None,
        "item_seed": 0,
        "attention_items": 0,
        "random_init": False,
        "trust_remote_code": False,
        "ner_pooling": "first",
    }
    with job.logged(logs / "extract" / "ner" / "bert" / "f0" / "s0.log"):
        extract_job(
            "ner",
            str(tiny_bert_dir),
            {"test": str(data / "test.jsonl")},
            {"test": str(cache)},
            {"test": settings},
        )
    meta = json.loads((cache / "meta.json").read_text())
    lost, cut = meta["n_words_lost"], meta["n_truncated_sequences"]
    assert lost > 0 and truncation_counts(cache) == {
        "words_truncated": lost,
        "sequences_truncated": cut,
    }
    # A job of a model the grid no longer has: its record is stale and left out.
    with job.logged(logs / "extract" / "ner" / "old" / "f0" / "s0" / "test.log"):
        job.log.warning("from an earlier grid")
    with job.logged(logs / "finetune" / "ner" / "bert" / "f50" / "s7.log"):
        job.log.warning("from an earlier grid's seed")
    logging.captureWarnings(False)

    records = job_warnings.collect(logs, RUN_GRID)
    assert [(r["job"], r["kind"]) for r in records] == [
        ("extract/ner/bert/f0/s0", "log"),
        ("prepare_data/ner", "warning"),
    ]
    assert records[0] | {"model": "bert", "fraction": "0", "seed": 0} == records[0]

    tidy, corr = tables()
    tidy.to_parquet(tmp_path / "measures.parquet")
    corr.to_csv(tmp_path / "correlations.csv", index=False)
    out = tmp_path / "results" / "summary.md"
    summary.summary_job(
        str(tmp_path / "measures.parquet"),
        str(tmp_path / "correlations.csv"),
        RUN_GRID,
        str(out),
        logs_dir=logs,
    )
    text = out.read_text(encoding="utf-8")
    section = text[text.index("## Warnings") :]
    assert "2 warning(s) from 2 job(s)" in section
    assert (
        "### prepare_data\n\n- 1× tasks.ner.data: the dev split has no DNA, cell_type. "
        "(UserWarning; from prepare_data/ner)" in section
    )
    assert (
        f"### extract\n\n- 1× extract.max_length=8 cut {cut} of 3 test sentences: {lost} words "
        "lost, left out of the probes; raise extract.max_length to keep them (WARNING; from "
        "extract/ner/bert/f0/s0)" in section
    )
    assert "earlier grid" not in text

    capsys.readouterr()  # the jobs' own start and end lines
    assert job_warnings.print_count(RUN_GRID, logs, out) == 2
    assert capsys.readouterr().err.strip() == f"finescope: 2 warnings (see {out})"
    # The data job run again on a complete dev split: its old warning is gone.
    _prepare(tmp_path, dev=TRAIN)
    logging.captureWarnings(False)
    assert [r["job"] for r in job_warnings.collect(logs, RUN_GRID)] == ["extract/ner/bert/f0/s0"]
    assert job_warnings.print_count(RUN_GRID, logs, summary=None) == 1
    assert f"finescope: 1 warning (see {logs}/**/*.warnings.jsonl)" in capsys.readouterr().err


def test_only_finescope_warnings_are_recorded_and_a_clean_job_leaves_no_record(tmp_path):
    log = tmp_path / "logs" / "subsample" / "nli" / "f10" / "s2.log"
    with job.logged(log):
        warnings.warn("a library's warning", UserWarning, stacklevel=1)  # raised here
        logging.getLogger("other").warning("another library's log")
        job.log.info("not a warning")
    logging.captureWarnings(False)
    assert not job_warnings.record_path(log).exists()
    assert job_warnings.job_context(log) == {
        "job": "subsample/nli/f10/s2",
        "stage": "subsample",
        "task": "nli",
        "fraction": "10",
        "seed": 2,
    }
    assert job_warnings.print_count(None, tmp_path / "logs") == 0


def test_an_ignored_checkpoint_and_skipped_rows_reach_the_record(tmp_path):
    from finescope.finetune import CheckpointStore

    logs = tmp_path / "logs"
    store = CheckpointStore(tmp_path / "ckpt", {"model": "bert"})
    (tmp_path / "ckpt" / "step-000000004").mkdir(parents=True)
    (tmp_path / "ckpt" / "step-000000004" / "state.pt").write_bytes(b"not a checkpoint")
    with job.logged(logs / "finetune" / "nli" / "bert" / "f50" / "s1.log"):
        assert store.load(None, None, None, None) is None

    corpus = tmp_path / "train.tsv"
    corpus.write_text(_tsv(TRAIN * 10) + "IL-2\tB-DNA\ngene\n\n")
    cfg = {"source": "files", "format": "tsv", "on_bad_rows": "skip", "test_fraction": 0.3}
    cfg["train"] = str(corpus)
    labels = tmp_path / "results" / "data" / "ner" / "labels.json"
    with job.logged(logs / "prepare_data" / "ner.log"):
        prepare_data_job("ner", cfg, 13, None, str(labels))
    logging.captureWarnings(False)

    records = {r["job"]: r for r in job_warnings.collect(logs) if "dev split" not in r["message"]}
    ignored = records["finetune/nli/bert/f50/s1"]
    assert ignored["source"] == "finescope.finetune" and ignored["category"] == "WARNING"
    assert (
        "step-000000004 is unreadable" in ignored["message"] and "ignoring it" in ignored["message"]
    )
    skipped = records["prepare_data/ner"]
    assert skipped["kind"] == "warning" and skipped["source"].startswith("data/splits.py:")
    assert skipped["message"].startswith("tasks.ner.data.on_bad_rows is skip: 1 bad row(s)")
    assert f"missing token or tag: 1 (e.g. {corpus}:" in skipped["message"]
