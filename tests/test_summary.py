"""Tests for finescope.summary: the grid, the scores and the findings, deterministically."""

from __future__ import annotations

import numpy as np
import pandas as pd

from finescope import analysis, summary

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
