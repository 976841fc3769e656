"""Tests for finescope.analysis: tidy table, correlations, bootstrap, BH and partial correlation."""

from __future__ import annotations

import warnings
from itertools import permutations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from finescope import analysis
from finescope.errors import FinescopeError

META = {
    "enc": {"family": "encoder", "domain": "general"},
    "dec": {"family": "decoder", "domain": "biomedical"},
    "bio": {"family": "encoder", "domain": "biomedical"},
}


def record(task, model, fraction, seed, score, **extra):
    metrics = {"task": task, "primary": "macro_f1", "score": score, "macro_f1": score, **extra}
    return {"task": task, "model": model, "fraction": fraction, "seed": seed, "metrics": metrics}


def planted_grid(
    models=("enc", "dec", "bio"),
    fractions=(10, 30, 50, 100),
    seeds=(0, 1, 2),
    noise=0.002,
    seed=0,
    n_layers=3,
):
    """Scores drawn at random; layer measures planted from the score."""
    rng = np.random.default_rng(seed)
    records, probing, change = [], [], []
    for model in models:
        for fraction in fractions:
            for s in seeds:
                score = float(rng.uniform(0.3, 0.9))
                records.append(record("nli", model, fraction, s, score, accuracy=score + 0.01))
                for layer in range(n_layers):
                    base = dict(task="nli", model=model, fraction=fraction, seed=s, layer=layer)
                    probing += [
                        {
                            **base,
                            "probe": "linear",
                            "measure": "accuracy",
                            "value": score + rng.normal(0, noise),
                        },
                        {
                            **base,
                            "probe": "linear",
                            "measure": "codelength",
                            "value": -score + rng.normal(0, noise),
                        },
                        {
                            **base,
                            "probe": "mlp",
                            "measure": "accuracy",
                            "value": float(rng.uniform()),
                        },
                    ]
                    change.append(
                        {
                            **base,
                            "head": "all",
                            "measure": "cka",
                            "value": 1 - score + rng.normal(0, noise),
                        }
                    )
        for layer in range(n_layers):  # pre-trained and random baseline: no downstream score
            for fraction in (0, "random"):
                probing.append(
                    dict(
                        task="nli",
                        model=model,
                        fraction=fraction,
                        seed=0,
                        layer=layer,
                        probe="linear",
                        measure="accuracy",
                        value=5.0,
                    )
                )
    return records, pd.DataFrame(probing), pd.DataFrame(change)


@pytest.fixture(scope="module")
def planted():
    records, probing, change = planted_grid()
    tidy = analysis.tidy_measures(records, probing, change, META)
    return tidy, analysis.correlate(tidy, seed=7, n_boot=200)


def pick(
    corr,
    scope="across",
    probe="linear",
    measure="accuracy",
    layer="0",
    method="spearman",
    model="all",
):
    rows = corr[
        (corr["scope"] == scope)
        & (corr["measure"] == measure)
        & (corr["layer"] == layer)
        & (corr["method"] == method)
        & (corr["model"] == model)
    ]
    rows = rows[rows["probe"] == probe] if probe else rows[rows["probe"].isna()]
    assert len(rows) == 1, rows
    return rows.iloc[0]


# ------------------------------------------------------------------------------------------
# Downstream and tidy table
# ------------------------------------------------------------------------------------------


def test_collect_downstream_keeps_numbers_and_skips_untrained_points():
    records = [
        {"task": "nli", "model": "enc", "fraction": 0, "seed": 0, "metrics": None},
        record(
            "nli",
            "enc",
            10,
            1,
            0.5,
            accuracy=0.6,
            per_class={"a": 1.0},
            flag=True,
            confusion=[[1, 2]],
        ),
    ]
    down = analysis.collect_downstream(records, META)
    assert list(down.columns) == analysis.DOWNSTREAM_COLUMNS
    assert sorted(down["measure"]) == ["accuracy", "macro_f1", "score"]
    assert set(down["fraction"]) == {10}
    assert down["family"].unique().tolist() == ["encoder"]
    assert down["primary"].unique().tolist() == ["macro_f1"]
    assert down.loc[down["measure"] == "score", "value"].item() == 0.5

    table = analysis.downstream_table(down)
    assert list(table.columns[:8]) == [
        "task",
        "model",
        "family",
        "domain",
        "fraction",
        "seed",
        "primary",
        "score",
    ]
    assert len(table) == 1 and table["accuracy"].item() == 0.6


def test_collect_downstream_reads_metrics_files(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"primary": "f1", "score": 0.7, "f1": 0.7, "precision": 0.8}')
    down = analysis.collect_downstream(
        [{"task": "ner", "model": "x", "fraction": "30", "seed": 2, "metrics": str(path)}]
    )
    assert set(down["measure"]) == {"score", "f1", "precision"}
    assert down["family"].unique().tolist() == ["unknown"]


def test_collect_downstream_rejects_missing_score():
    bad = {"task": "nli", "model": "enc", "fraction": 10, "seed": 0, "metrics": {"f1": 0.3}}
    with pytest.raises(FinescopeError, match="score"):
        analysis.collect_downstream([bad])
    with pytest.raises(FinescopeError, match="fraction"):
        analysis.collect_downstream([record("nli", "enc", 150, 0, 0.5)])


def test_tidy_measures_columns_depth_and_baseline(tmp_path, planted):
    tidy, _ = planted
    assert list(tidy.columns) == analysis.TIDY_COLUMNS
    assert set(tidy["source"]) == {"downstream", "probing", "change"}
    assert {"random", "0", "10", "100"} <= set(tidy["fraction"])
    layers = tidy.dropna(subset=["layer"])
    # 3 layers (0, 1, 2): relative depth = layer / 2
    assert np.allclose(layers["relative_depth"], layers["layer"].astype(float) / 2)
    down = tidy[tidy["source"] == "downstream"]
    assert down["layer"].isna().all() and down["relative_depth"].isna().all()
    assert tidy.loc[tidy["source"] == "change", "head"].eq("all").all()
    assert tidy.loc[tidy["source"] == "probing", "probe"].notna().all()
    assert tidy.loc[tidy["model"] == "dec", "domain"].eq("biomedical").all()
    tidy.to_parquet(tmp_path / "measures.parquet")
    back = pd.read_parquet(tmp_path / "measures.parquet")
    assert len(back) == len(tidy) and list(back.columns) == analysis.TIDY_COLUMNS


def test_tidy_measures_reads_csv_paths_and_checks_n_layers(tmp_path):
    records, probing, change = planted_grid(models=("enc",), fractions=(10,), seeds=(0,))
    probing.to_csv(tmp_path / "p.csv", index=False)
    change.assign(head="3").to_csv(tmp_path / "c.csv", index=False)
    tidy = analysis.tidy_measures(
        records, [tmp_path / "p.csv"], [tmp_path / "c.csv"], {"enc": {"n_layers": 5}}
    )
    assert tidy["relative_depth"].max() == pytest.approx(0.5)  # layer 2 of 5 -> 2 / 4
    assert set(tidy.loc[tidy["source"] == "change", "head"]) == {"3"}
    with pytest.raises(FinescopeError, match="n_layers"):
        analysis.tidy_measures(records, probing, None, {"enc": {"n_layers": 2}})
    with pytest.raises(FinescopeError, match="missing columns"):
        analysis.tidy_measures(records, probing.drop(columns="probe"), None, {})


def test_tidy_measures_empty_inputs():
    tidy = analysis.tidy_measures(None, None, None, {})
    assert tidy.empty and list(tidy.columns) == analysis.TIDY_COLUMNS
    corr = analysis.correlate(tidy, n_boot=10)
    assert corr.empty and list(corr.columns) == analysis.CORRELATION_COLUMNS


# ------------------------------------------------------------------------------------------
# Correlations
# ------------------------------------------------------------------------------------------


def test_correlate_recovers_planted_sign_and_strength(planted):
    _, corr = planted
    assert list(corr.columns) == analysis.CORRELATION_COLUMNS
    pos = pick(corr, measure="accuracy")
    assert pos["coefficient"] > 0.9 and pos["n"] == 36 and pos["p_value"] < 1e-6
    assert pos["ci_low"] <= pos["coefficient"] <= pos["ci_high"]
    assert pick(corr, measure="codelength")["coefficient"] < -0.9
    assert pick(corr, probe=None, measure="cka", layer="mean")["coefficient"] < -0.9
    noise = pick(corr, probe="mlp", measure="accuracy")
    assert abs(noise["coefficient"]) < 0.5
    for method in ("pearson", "kendall"):
        assert pick(corr, measure="accuracy", method=method)["coefficient"] > 0.8
    # Within every model and with seeds averaged the planted relation holds too.
    for model in ("enc", "dec", "bio"):
        row = pick(corr, scope="within_model", model=model, layer="best")
        assert row["coefficient"] > 0.9 and row["n"] == 12
    assert pick(corr, scope="seeds_averaged")["n"] == 12
    assert set(corr["scope"]) == set(analysis.SCOPES)
    assert set(corr.loc[corr["scope"] == "partial", "method"]) == {"spearman", "pearson"}


def test_correlate_excludes_baseline_and_pretrained(planted):
    tidy, corr = planted
    features = analysis.feature_table(tidy)
    assert (features["fraction"] > 0).all()
    assert not (features["x"] == 5.0).any()
    assert corr["n"].max() == 36


def test_aggregates_best_last_mean_and_depth(planted):
    tidy, _ = planted
    f = analysis.feature_table(tidy)
    point = f[(f["model"] == "enc") & (f["fraction"] == 10) & (f["seed"] == 0)]
    code = point[(point["probe"] == "linear") & (point["measure"] == "codelength")]
    layers = code[code["layer"].isin(["0", "1", "2"])].set_index("layer")["x"]
    agg = code.set_index("layer")["x"]
    assert agg["best"] == layers.min()  # lower code length is better
    assert agg["mean"] == pytest.approx(layers.mean())
    assert agg["last"] == layers["2"]
    assert agg["best_depth"] == int(layers.idxmin()) / 2
    acc = point[(point["probe"] == "linear") & (point["measure"] == "accuracy")]
    acc = acc.set_index("layer")["x"]
    assert acc["best"] == acc[["0", "1", "2"]].max()


def test_change_per_head_rows_are_averaged_when_no_all_row():
    records, probing, _ = planted_grid(models=("enc",), fractions=(10, 50), seeds=(0, 1))
    rows = []
    for r in records:
        for head, value in (("0", 0.2), ("1", 0.4)):
            rows.append(
                dict(
                    task="nli",
                    model="enc",
                    fraction=r["fraction"],
                    seed=r["seed"],
                    layer=1,
                    head=head,
                    measure="attention_js",
                    value=value,
                )
            )
        rows.append(
            dict(
                task="nli",
                model="enc",
                fraction=r["fraction"],
                seed=r["seed"],
                layer=1,
                head="all",
                measure="attention_cosine",
                value=0.9,
            )
        )
        rows.append(
            dict(
                task="nli",
                model="enc",
                fraction=r["fraction"],
                seed=r["seed"],
                layer=1,
                head="0",
                measure="attention_cosine",
                value=0.1,
            )
        )
    tidy = analysis.tidy_measures(records, probing, pd.DataFrame(rows), META)
    f = analysis.feature_table(tidy)
    js = f[(f["measure"] == "attention_js") & (f["layer"] == "1")]
    assert np.allclose(js["x"], 0.3) and len(js) == 4
    cos = f[(f["measure"] == "attention_cosine") & (f["layer"] == "1")]
    assert np.allclose(cos["x"], 0.9)  # the whole-layer row wins over per-head rows


def test_q_values_are_bh_over_each_task(planted):
    _, corr = planted
    assert np.allclose(corr["q_value"], analysis.bh_adjust(corr["p_value"]), equal_nan=True)
    assert (corr["q_value"].dropna() >= corr.loc[corr["q_value"].notna(), "p_value"]).all()


def test_bh_adjust_matches_hand_computation():
    # sorted finite p: 0.005, 0.01, 0.03, 0.04 (m = 4)
    # p * m / rank: 0.02, 0.02, 0.04, 0.04; running minimum from the top leaves them as is.
    q = analysis.bh_adjust([0.01, 0.04, 0.03, 0.005, np.nan])
    assert np.allclose(q, [0.02, 0.04, 0.04, 0.02, np.nan], equal_nan=True)
    # p * m / rank: 0.03, 0.0285, 0.02 -> running minimum from the top: 0.02 everywhere.
    assert np.allclose(analysis.bh_adjust([0.01, 0.02, 0.019]), [0.02, 0.02, 0.02])
    assert analysis.bh_adjust([]).shape == (0,)
    assert np.isnan(analysis.bh_adjust([np.nan])).all()


def test_bootstrap_is_reproducible_per_seed():
    records, probing, change = planted_grid(noise=0.2, models=("enc", "dec"))
    tidy = analysis.tidy_measures(records, probing, change, META)
    a = analysis.correlate(tidy, seed=1, n_boot=100, scopes=("across",))
    b = analysis.correlate(tidy, seed=1, n_boot=100, scopes=("across",))
    c = analysis.correlate(tidy, seed=2, n_boot=100, scopes=("across",))
    pd.testing.assert_frame_equal(a, b)
    assert np.allclose(a["coefficient"], c["coefficient"], equal_nan=True)
    ok = a["ci_low"].notna()
    assert ok.any()
    assert not np.allclose(a.loc[ok, "ci_low"], c.loc[ok, "ci_low"])


def test_vectorised_bootstrap_matches_scipy_on_each_resample():
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=12), 1)  # rounding creates ties
    y = np.round(x + rng.normal(size=12), 1)
    z = np.repeat([10.0, 30.0, 50.0, 100.0], 3)
    idx = rng.integers(0, 12, size=(5, 12))
    weights = np.stack([np.bincount(i, minlength=12) for i in idx]).astype(float)
    got = {m: analysis._coefficients_for(weights, x, y, m, None) for m in analysis.METHODS}
    got_partial = analysis._coefficients_for(weights, x, y, "spearman", z)
    for b, i in enumerate(idx):
        assert got["spearman"][b] == pytest.approx(stats.spearmanr(x[i], y[i]).statistic)
        assert got["pearson"][b] == pytest.approx(stats.pearsonr(x[i], y[i]).statistic)
        assert got["kendall"][b] == pytest.approx(stats.kendalltau(x[i], y[i]).statistic)
        assert got_partial[b] == pytest.approx(analysis.partial_spearman(x[i], y[i], z[i])[0])


def test_bootstrap_coefficients_seeded():
    x = np.arange(10.0)
    y = x + np.random.default_rng(0).normal(size=10)
    a = analysis.bootstrap_coefficients(x, y, "spearman", 50, np.random.default_rng(5))
    b = analysis.bootstrap_coefficients(x, y, "spearman", 50, np.random.default_rng(5))
    assert a.shape == (50,) and np.array_equal(a, b, equal_nan=True)


def test_partial_spearman_matches_formula_and_handles_degenerate_input():
    rng = np.random.default_rng(0)
    z = rng.normal(size=30)
    x = z + rng.normal(size=30)
    y = z + x + rng.normal(size=30)
    rho, p = analysis.partial_spearman(x, y, z)
    r = np.corrcoef(np.vstack([stats.rankdata(v) for v in (x, y, z)]))
    expected = (r[0, 1] - r[0, 2] * r[1, 2]) / np.sqrt((1 - r[0, 2] ** 2) * (1 - r[1, 2] ** 2))
    assert rho == pytest.approx(expected)
    assert 0 <= p < 0.05
    assert np.isnan(analysis.partial_spearman(x[:3], y[:3], z[:3])[0])  # too few points
    assert np.isnan(analysis.partial_spearman(2 * z, y, z)[0])  # x fully explained by z


def test_partial_scope_removes_a_pure_fraction_effect():
    rng = np.random.default_rng(11)
    records, probing = [], []
    for fraction in (10, 30, 50, 70, 100):
        for seed in range(8):
            records.append(
                record("nli", "enc", fraction, seed, fraction / 100 + rng.normal(0, 0.05))
            )
            probing.append(
                dict(
                    task="nli",
                    model="enc",
                    fraction=fraction,
                    seed=seed,
                    layer=0,
                    probe="linear",
                    measure="accuracy",
                    value=fraction / 100 + rng.normal(0, 0.05),
                )
            )
    tidy = analysis.tidy_measures(records, pd.DataFrame(probing), None, META)
    corr = analysis.correlate(tidy, seed=0, n_boot=100, scopes=("across", "partial"))
    assert pick(corr)["coefficient"] > 0.7
    partial = pick(corr, scope="partial")
    assert abs(partial["coefficient"]) < 0.35 and partial["n"] == 40
    assert partial["ci_low"] < 0 < partial["ci_high"]
    assert abs(pick(corr, scope="partial", method="pearson")["coefficient"]) < 0.35


def test_tiny_grid_gives_notes_not_errors_or_warnings():
    records, probing, change = planted_grid(models=("enc",), fractions=(10, 100), seeds=(0,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tidy = analysis.tidy_measures(records, probing, change, META)
        corr = analysis.correlate(tidy, seed=0, n_boot=50)
    assert not corr.empty
    assert corr["coefficient"].isna().all()
    assert set(corr["note"]) == {analysis.NOTE_FEW}
    assert (corr["n"] == 2).all()
    assert corr["q_value"].isna().all()


def test_constant_measure_is_noted():
    records, probing, _ = planted_grid(models=("enc",), fractions=(10, 50, 100), seeds=(0, 1))
    probing = probing.assign(value=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corr = analysis.correlate(analysis.tidy_measures(records, probing, None, META), n_boot=20)
    row = pick(corr)
    assert np.isnan(row["coefficient"]) and row["note"] == analysis.NOTE_CONSTANT
    assert row["n"] == 6


def test_layer_and_fraction_ordering_helpers():
    assert analysis.sorted_fractions([100, "10", "random", 0, 10.0]) == ["random", "0", "10", "100"]
    layers = ["best", "10", "2", "mean", "best_depth", "last", "0"]
    assert sorted(layers, key=analysis.layer_sort_key) == [
        "0",
        "2",
        "10",
        "best",
        "mean",
        "last",
        "best_depth",
    ]
    assert (
        analysis.primary_metric(
            analysis.tidy_measures([record("nli", "enc", 10, 0, 0.4)], None, None, META), "nli"
        )
        == "macro_f1"
    )


def test_tables_read_back_from_csv_give_the_same_correlations(tmp_path, planted):
    tidy, corr = planted
    tidy.to_csv(tmp_path / "measures.csv", index=False)
    back = pd.read_csv(tmp_path / "measures.csv")
    pd.testing.assert_frame_equal(analysis.normalize_tidy(back), tidy, check_dtype=False)
    again = analysis.correlate(back, seed=7, n_boot=200)
    pd.testing.assert_frame_equal(again, corr)


def test_small_samples_get_exact_permutation_p_values():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    rho, p = analysis._point("spearman", x, x**2)
    assert rho == pytest.approx(1.0) and p == pytest.approx(2 / 24)  # not the t-test's 0
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=6), rng.normal(size=6)
    rho, p = analysis._point("spearman", x, y)
    null = [stats.spearmanr(x[list(order)], y).statistic for order in permutations(range(6))]
    assert p == pytest.approx(np.mean(np.abs(null) >= abs(rho) - 1e-9))
    z = np.array([10.0, 10.0, 50.0, 50.0, 100.0, 100.0])
    rho, p = analysis.partial_spearman(x, y, z)
    assert 0 < p <= 1 and np.isfinite(rho)
