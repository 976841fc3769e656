"""Tests for finescope.summary: the grid, the scores and the top correlation, deterministically."""

from __future__ import annotations

import numpy as np
import pandas as pd

from finescope import analysis, summary

META = {
    "enc": {"family": "encoder", "domain": "general"},
    "bio": {"family": "encoder", "domain": "biomedical"},
}
GRID = {"tasks": ["nli"], "models": ["bio", "enc"], "fractions": [0, 10, 100], "seeds": [0, 1]}


def tables(models=("enc", "bio"), fractions=(10, 100), seeds=(0, 1)):
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
    tidy = analysis.tidy_measures(records, pd.DataFrame(probing), None, META)
    return tidy, analysis.correlate(tidy, seed=0, n_boot=50)


def test_summary_states_grid_scores_and_top_correlation(tmp_path):
    tidy, corr = tables()
    out = tmp_path / "summary.md"
    text = summary.write_summary(tidy, corr, GRID, out)
    assert out.read_text(encoding="utf-8") == text
    assert "1 task(s) (nli), 2 model(s)" in text
    assert "0 % (pre-trained), 10 % and 100 %" in text
    assert "seed(s) 0 and 1" in text
    assert "bio: encoder, biomedical domain" in text
    assert "8 fine-tuned grid point(s) have a downstream score (the grid defines 8)" in text
    assert "| model | 10 % | 100 % |" in text
    bio = tidy[
        (tidy["model"] == "bio") & (tidy["fraction"] == "100") & (tidy["measure"] == "score")
    ]["value"]
    assert f"{bio.mean():.3f} ± {bio.std():.3f} (2)" in text
    top = corr[(corr["scope"] == "across") & (corr["method"] == "spearman")]
    top = top.loc[top["coefficient"].abs().idxmax()]
    assert top["measure"] == "selectivity"
    assert f"Spearman ρ = {top['coefficient']:+.3f}" in text
    assert "linear probe selectivity" in text
    assert "Caution" in text  # n = 8 is small
    assert summary.render_summary(tidy, corr, GRID) == text  # deterministic


def test_summary_lists_missing_grid_points_and_single_seed():
    tidy, corr = tables(models=("enc",), fractions=(10,), seeds=(0,))
    text = summary.render_summary(tidy, corr, {**GRID, "models": ["enc", "bio"]})
    assert "Missing: bio 10 % seed 0" in text
    assert "single seed" in text
    assert "too few points" in text


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
