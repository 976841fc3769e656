"""Tests for finescope.analysis: tidy table, features, fraction-controlled correlations, BH."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from finescope import analysis
from finescope.analysis import stats as analysis_stats
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
    """Scores drawn at random per grid point (so seeds differ); layer measures planted from it."""
    rng = np.random.default_rng(seed)
    records, probing, change = [], [], []
    for model in models:
        for fraction in fractions:
            for s in seeds:
                score = float(rng.uniform(0.3, 0.9))
                records.append(record("nli", model, fraction, s, score, accuracy=score + 0.01))
                for layer in range(n_layers):
                    base = dict(task="nli", model=model, fraction=fraction, seed=s, layer=layer)
                    accuracy = score + rng.normal(0, noise)
                    probing += [
                        {**base, "probe": "linear", "measure": "accuracy", "value": accuracy},
                        {
                            **base,
                            "probe": "linear",
                            "measure": "dev_accuracy",
                            "value": accuracy + 0.1 * layer,
                        },
                        {**base, "probe": "linear", "measure": "chosen_C", "value": 1.0},
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
    scope="within_model",
    probe="linear",
    measure="accuracy",
    layer="0",
    method="spearman",
    model="enc",
    depth=None,
):
    rows = corr[
        (corr["scope"] == scope)
        & (corr["measure"] == measure)
        & (corr["method"] == method)
        & (corr["model"] == model)
    ]
    if layer is None:
        rows = rows[rows["layer"].isna() & np.isclose(rows["depth"], depth)]
    else:
        rows = rows[rows["layer"] == layer]
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
    assert down["score_metric"].unique().tolist() == ["macro_f1"]
    assert down.loc[down["measure"] == "score", "value"].item() == 0.5

    table = analysis.downstream_table(down)
    assert list(table.columns[:9]) == [
        "task",
        "model",
        "family",
        "domain",
        "fraction",
        "seed",
        "primary",
        "score_metric",
        "score",
    ]
    assert len(table) == 1 and table["accuracy"].item() == 0.6


def ner_record(seed, strict, conlleval):
    metrics = {
        "task": "ner",
        "primary": "f1",
        "score": strict,
        "f1": strict,
        "f1_conlleval": conlleval,
        "invalid_starts": 3,
    }
    return {"task": "ner", "model": "enc", "fraction": 50, "seed": seed, "metrics": metrics}


def test_entity_f1_chooses_the_correlated_ner_score():
    records = [ner_record(0, 0.5, 0.7), ner_record(1, 0.4, 0.6), record("nli", "enc", 50, 0, 0.3)]
    strict = analysis.downstream_table(analysis.collect_downstream(records))
    conll = analysis.downstream_table(analysis.collect_downstream(records, entity_f1="conlleval"))
    ner_s, ner_c = strict[strict["task"] == "ner"], conll[conll["task"] == "ner"]
    assert ner_s["score"].tolist() == [0.5, 0.4] and ner_c["score"].tolist() == [0.7, 0.6]
    assert set(ner_s["score_metric"]) == {"f1"} and set(ner_c["score_metric"]) == {"f1_conlleval"}
    # Both F1s stay columns either way; NLI is untouched.
    assert ner_c["f1"].tolist() == [0.5, 0.4] and ner_c["f1_conlleval"].tolist() == [0.7, 0.6]
    assert conll.loc[conll["task"] == "nli", "score"].item() == 0.3
    assert conll.loc[conll["task"] == "nli", "score_metric"].item() == "macro_f1"
    # Re-selecting on an already collected frame gives the same table.
    again = analysis.downstream_table(analysis.collect_downstream(records), entity_f1="conlleval")
    pd.testing.assert_frame_equal(again, conll)
    assert analysis.downstream_table(records, entity_f1="conlleval")["score"].tolist() == [
        0.7,
        0.6,
        0.3,
    ]
    tidy = analysis.tidy_measures(records, None, None, META, entity_f1="conlleval")
    assert analysis.primary_metric(tidy, "ner") == "f1_conlleval"
    old = ner_record(2, 0.5, 0.7)
    del old["metrics"]["f1_conlleval"]
    with pytest.raises(FinescopeError, match="f1_conlleval"):
        analysis.collect_downstream([old], entity_f1="conlleval")
    with pytest.raises(FinescopeError, match="analysis.entity_f1"):
        analysis.collect_downstream(records, entity_f1="lenient")


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
# Features: aggregates over layers
# ------------------------------------------------------------------------------------------


def test_dev_and_chosen_c_rows_are_never_features(planted):
    tidy, corr = planted
    f = analysis.feature_table(tidy)
    assert not f["measure"].str.startswith("dev_").any()
    assert "chosen_C" not in set(f["measure"]) and "chosen_C" not in set(corr["measure"])
    assert not corr["measure"].str.startswith("dev_").any()
    assert set(f["layer"]) == {"0", "1", "2", *analysis.AGGREGATES}


def test_best_layer_is_chosen_on_dev_and_reported_on_test():
    # Test accuracy peaks at layer 0, dev accuracy at layer 2; code length: dev lowest at 1.
    records, rows = [], []
    for seed in (0, 1):
        records.append(record("nli", "enc", 50, seed, 0.5 + seed / 10))
        for layer, (test, dev, code, dev_code) in enumerate(
            [(0.9, 0.1, 5.0, 9.0), (0.5, 0.2, 4.0, 1.0), (0.3, 0.8, 3.0, 2.0)]
        ):
            base = dict(task="nli", model="enc", fraction=50, seed=seed, layer=layer)
            rows += [
                {**base, "probe": "linear", "measure": "accuracy", "value": test + seed},
                {**base, "probe": "linear", "measure": "dev_accuracy", "value": dev},
                {**base, "probe": "mdl", "measure": "codelength", "value": code},
                {**base, "probe": "mdl", "measure": "dev_codelength", "value": dev_code},
                {**base, "probe": "linear", "measure": "selectivity", "value": test},
            ]
    f = analysis.feature_table(analysis.tidy_measures(records, pd.DataFrame(rows), None, META))
    f = f.set_index(["seed", "probe", "measure", "layer"])["x"]
    assert f[(0, "linear", "accuracy", "best_layer")] == 0.3  # test value at dev-best layer 2
    assert f[(1, "linear", "accuracy", "best_layer")] == pytest.approx(1.3)
    assert f[(0, "linear", "accuracy", "best_layer_depth")] == 1.0
    assert f[(0, "mdl", "codelength", "best_layer")] == 4.0  # lowest dev code length: layer 1
    assert f[(0, "mdl", "codelength", "best_layer_depth")] == 0.5
    # No dev rows for selectivity: no best layer at all (never chosen on test).
    assert (0, "linear", "selectivity", "best_layer") not in f.index
    assert f[(0, "linear", "selectivity", "mean")] == pytest.approx((0.9 + 0.5 + 0.3) / 3)
    assert f[(0, "linear", "selectivity", "last")] == 0.3


def test_most_changed_follows_each_measure_direction():
    values = {
        "cka": [0.9, 0.4, 0.7],  # min -> layer 1
        "cka_debiased": [0.2, 0.5, 0.1],  # min -> layer 2
        "attention_cosine": [0.3, 0.9, 0.8],  # min -> layer 0
        "attention_js": [0.1, 0.05, 0.3],  # max -> layer 2
        "attention_entropy_change": [0.2, -0.6, 0.5],  # max |.| -> layer 1, signed
        "new_measure": [1.0, 2.0, 3.0],  # unknown direction -> no most_changed
    }
    records = [record("nli", "enc", 50, 0, 0.5)]
    rows = [
        dict(
            task="nli",
            model="enc",
            fraction=50,
            seed=0,
            layer=layer,
            head="all",
            measure=measure,
            value=v,
        )
        for measure, vs in values.items()
        for layer, v in enumerate(vs)
    ]
    f = analysis.feature_table(analysis.tidy_measures(records, None, pd.DataFrame(rows), META))
    f = f.set_index(["measure", "layer"])["x"]
    expected = {
        "cka": (0.4, 0.5),
        "cka_debiased": (0.1, 1.0),
        "attention_cosine": (0.3, 0.0),
        "attention_js": (0.3, 1.0),
        "attention_entropy_change": (-0.6, 0.5),
    }
    for measure, (value, depth) in expected.items():
        assert f[(measure, "most_changed")] == pytest.approx(value), measure
        assert f[(measure, "most_changed_depth")] == pytest.approx(depth), measure
    assert ("new_measure", "most_changed") not in f.index
    assert f[("new_measure", "last")] == 3.0
    assert ("cka", "best_layer") not in f.index


def test_change_per_head_rows_are_averaged_when_no_all_row():
    records, probing, _ = planted_grid(models=("enc",), fractions=(10, 50), seeds=(0, 1))
    rows = []
    for r in records:
        point = dict(task="nli", model="enc", fraction=r["fraction"], seed=r["seed"], layer=1)
        rows += [
            {**point, "head": "0", "measure": "attention_js", "value": 0.2},
            {**point, "head": "1", "measure": "attention_js", "value": 0.4},
            {**point, "head": "all", "measure": "attention_cosine", "value": 0.9},
            {**point, "head": "0", "measure": "attention_cosine", "value": 0.1},
        ]
    tidy = analysis.tidy_measures(records, probing, pd.DataFrame(rows), META)
    f = analysis.feature_table(tidy)
    js = f[(f["measure"] == "attention_js") & (f["layer"] == "1")]
    assert np.allclose(js["x"], 0.3) and len(js) == 4
    cos = f[(f["measure"] == "attention_cosine") & (f["layer"] == "1")]
    assert np.allclose(cos["x"], 0.9)  # the whole-layer row wins over per-head rows


# ------------------------------------------------------------------------------------------
# Scopes
# ------------------------------------------------------------------------------------------


def test_correlate_recovers_planted_within_cell_relation(planted):
    _, corr = planted
    assert list(corr.columns) == analysis.CORRELATION_COLUMNS
    assert set(corr["scope"]) == set(analysis.DEFAULT_SCOPES)
    assert set(corr["method"]) == set(analysis.METHODS)
    for model in ("enc", "dec", "bio"):
        row = pick(corr, model=model)
        assert row["coefficient"] > 0.9 and row["p_value"] < 0.01
        assert (row["n"], row["n_clusters"], row["df"]) == (12, 4, 7)
        assert row["controls"] == "fraction level (centred)"
        assert row["family"] == "nli/within_model" and not row["underpowered"]
        assert row["depth"] == 0.0
        assert row["ci_low"] <= row["coefficient"] <= row["ci_high"]
        assert row["ci_method"].startswith("cluster bootstrap, percentile, seeds resampled")
        assert "exact (1296 arrangements)" in row["p_method"]
        assert pick(corr, model=model, layer="best_layer")["coefficient"] > 0.9
    assert pick(corr, measure="codelength")["coefficient"] < -0.9
    assert pick(corr, probe=None, measure="cka", layer="most_changed")["coefficient"] < -0.9
    assert abs(pick(corr, probe="mlp")["coefficient"]) < 0.8
    pooled = pick(corr, scope="pooled", model="all", layer="mean")
    assert pooled["coefficient"] > 0.9 and pooled["p_value"] < 0.01
    assert (pooled["n"], pooled["n_clusters"], pooled["df"]) == (36, 12, 23)
    assert pooled["controls"] == "model × fraction cell (centred)"
    assert "Monte Carlo (2000 draws)" in pooled["p_method"]
    assert pooled["p_value"] == pytest.approx(1 / 2001)
    for method in analysis.METHODS:
        assert pick(corr, method=method)["coefficient"] > 0.9


def test_correlate_excludes_baseline_and_pretrained(planted):
    tidy, corr = planted
    features = analysis.feature_table(tidy)
    assert (features["fraction"] > 0).all()
    assert not (features["x"] == 5.0).any()
    assert corr["n"].max() == 36


def test_within_model_spearman_is_spearman_of_the_within_fraction_deviations():
    rng = np.random.default_rng(5)
    fraction = np.repeat([10.0, 30.0, 50.0, 100.0], 3)
    x = fraction / 50 + rng.normal(size=12)
    y = fraction / 50 + 0.5 * x + rng.normal(size=12)
    r, p, exact = analysis.permutation_test(x, y, fraction, "spearman")
    cells = analysis.Cells(fraction)
    assert exact and r == pytest.approx(stats.spearmanr(cells.centre(x), cells.centre(y))[0])
    # Any shift per fraction level (the fraction effect) changes nothing.
    shift = np.sqrt(fraction) * 7
    again = analysis.permutation_test(x + shift, y - shift, fraction, "spearman")
    assert again == pytest.approx((r, p, True))
    pearson, _, _ = analysis.permutation_test(x, y, fraction, "pearson")
    assert pearson == pytest.approx(np.corrcoef(cells.centre(x), cells.centre(y))[0, 1])
    assert analysis.permutation_test(x + shift, y, fraction, "pearson")[0] == pytest.approx(pearson)


def test_exact_permutation_p_enumerates_within_cell_arrangements():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=6), rng.normal(size=6)
    cells = np.array([0, 0, 0, 1, 1, 1])
    r, p, exact = analysis.permutation_test(x, y, cells, "pearson")
    assert exact
    centred = analysis.Cells(cells).centre
    null = []
    for first in itertools.permutations(range(3)):
        for second in itertools.permutations(range(3, 6)):
            xp = x[list(first) + list(second)]
            null.append(np.corrcoef(centred(xp), centred(y))[0, 1])
    assert p == pytest.approx(np.mean(np.abs(null) >= abs(r) - 1e-9))
    # Monte Carlo beyond EXACT_LIMIT: (1 + hits) / (1 + draws), reproducible per generator.
    big = np.repeat(np.arange(8), 3)
    xb, yb = rng.normal(size=24), rng.normal(size=24)
    a = analysis.permutation_test(xb, yb, big, n_perm=500, rng=np.random.default_rng(1))
    b = analysis.permutation_test(xb, yb, big, n_perm=500, rng=np.random.default_rng(1))
    assert a == b and not a[2] and a[1] * 501 == pytest.approx(round(a[1] * 501))


def test_pooled_rows_use_depth_bins_never_raw_layer_indices():
    # Model "small" has 3 layers (depths 0, .5, 1), "big" 5 (0, .25, .5, .75, 1).
    records, rows = [], []
    rng = np.random.default_rng(0)
    for model, n_layers in (("small", 3), ("big", 5)):
        for fraction in (10, 30, 50, 100):
            for seed in (0, 1, 2):
                score = float(rng.uniform())
                records.append(record("nli", model, fraction, seed, score))
                for layer in range(n_layers):
                    rows.append(
                        dict(
                            task="nli",
                            model=model,
                            fraction=fraction,
                            seed=seed,
                            layer=layer,
                            probe="linear",
                            measure="accuracy",
                            value=layer + score,
                        )
                    )
    tidy = analysis.tidy_measures(records, pd.DataFrame(rows), None, META)
    features = analysis.feature_table(tidy)
    binned = analysis.pooled_features(features, depth_bins=4)
    per_bin = binned[binned["layer"].isna()]
    assert sorted(per_bin["depth"].unique()) == [0.125, 0.375, 0.625, 0.875]
    big = per_bin[per_bin["model"] == "big"].assign(layer_part=lambda d: d["x"] - d["score"])
    # Bin [0.75, 1] of "big" averages its layers 3 and 4.
    assert np.allclose(big.loc[big["depth"] == 0.875, "layer_part"], 3.5)
    small = per_bin[per_bin["model"] == "small"]
    assert 0.375 not in set(small["depth"])  # no layer of "small" in [0.25, 0.5)

    corr = analysis.correlate(tidy, n_boot=20, depth_bins=4)
    pooled = corr[corr["scope"] == "pooled"]
    per_layer = pooled[~pooled["layer"].isin(analysis.AGGREGATES)]
    assert per_layer["layer"].isna().all() and len(per_layer) == 4 * 2
    assert set(per_layer["depth"]) == {0.125, 0.375, 0.625, 0.875}
    assert pick(corr, "pooled", model="all", layer=None, depth=0.375)["n"] == 12  # big only
    assert pick(corr, "pooled", model="all", layer=None, depth=0.875)["n"] == 24
    aggregates = pooled[pooled["layer"].isin(analysis.AGGREGATES)]
    assert aggregates["depth"].isna().all() and set(aggregates["layer"]) == {"mean", "last"}
    within = corr[(corr["scope"] == "within_model") & (corr["model"] == "big")]
    layer_rows = within[~within["layer"].isin(analysis.AGGREGATES)]
    assert set(layer_rows["layer"]) == {"0", "1", "2", "3", "4"}
    assert np.allclose(layer_rows["depth"], layer_rows["layer"].astype(float) / 4)


def test_underpowered_rows_get_no_interval_and_no_q_and_bh_is_per_family():
    # "enc": 3 fractions x 2 seeds = 6 points (< min_n); "dec": 4 x 3 = 12 points.
    rng = np.random.default_rng(3)
    records, rows = [], []
    for model, fractions, seeds in (
        ("enc", (10, 50, 100), (0, 1)),
        ("dec", (10, 30, 50, 100), (0, 1, 2)),
    ):
        for fraction in fractions:
            for seed in seeds:
                score = float(rng.uniform())
                records.append(record("nli", model, fraction, seed, score))
                for layer in range(3):
                    for probe in ("linear", "mlp"):
                        rows.append(
                            dict(
                                task="nli",
                                model=model,
                                fraction=fraction,
                                seed=seed,
                                layer=layer,
                                probe=probe,
                                measure="accuracy",
                                value=score + rng.normal(0, 0.3),
                            )
                        )
    tidy = analysis.tidy_measures(records, pd.DataFrame(rows), None, META)
    corr = analysis.correlate(tidy, seed=0, n_boot=100, min_n=8, scopes=analysis.SCOPES)
    small = corr["n"] < 8
    assert small.any() and corr.loc[small, "underpowered"].all()
    weak = corr[corr["underpowered"]]
    assert weak[["ci_low", "ci_high", "q_value"]].isna().all().all()
    assert weak["note"].str.contains("underpowered: n = 6 < min_n = 8").all()
    assert weak["ci_method"].eq("none (underpowered)").all()
    assert weak["p_value"].notna().all()  # still shown, as a descriptive number
    enc = corr[(corr["scope"] == "within_model") & (corr["model"] == "enc")]
    assert enc["underpowered"].all()
    strong = corr[~corr["underpowered"] & (corr["scope"] != "raw")]
    assert strong["ci_low"].notna().all() and strong["q_value"].notna().all()
    for family in ("nli/within_model", "nli/pooled"):
        rows_f = corr[(corr["family"] == family) & ~corr["underpowered"]]
        expected = stats.false_discovery_control(rows_f["p_value"].to_numpy(), method="bh")
        assert np.allclose(rows_f["q_value"], expected)
    # The raw scope is descriptive: no family, no q, "controls: none".
    raw = corr[corr["scope"] == "raw"]
    assert len(raw) and raw["q_value"].isna().all() and raw["family"].eq("").all()
    assert raw["controls"].eq("none").all() and (raw["df"] == raw["n"] - 2).all()
    pooled = corr[corr["scope"] == "pooled"]
    assert set(pooled["n_clusters"]) == {7}  # 3 + 4 model x fraction cells


def test_one_seed_per_cell_gives_no_interval():
    records, probing, change = planted_grid(models=("enc", "dec"), seeds=(0,))
    tidy = analysis.tidy_measures(records, probing, change, META)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corr = analysis.correlate(tidy, seed=0, n_boot=50)
    assert not corr.empty and corr["underpowered"].all()
    assert corr[["coefficient", "ci_low", "ci_high", "q_value"]].isna().all().all()
    assert (corr["n"] == 0).all()
    assert corr["note"].str.startswith(analysis.NOTE_NO_REPLICATES).all()


def test_cluster_bootstrap_resamples_seeds_within_cells():
    rng = np.random.default_rng(8)
    codes = np.repeat([0, 1, 2, 3], 3)
    cells = analysis.Cells(codes)
    weights = analysis_stats._stratified_weights(cells, 400, rng)
    # Every resample keeps three seeds in every cell and never moves a point across cells.
    per_cell = weights.reshape(400, 4, 3).sum(axis=2)
    assert np.all(per_cell == 3)
    assert (weights > 0).sum(axis=1).min() >= 4
    x = np.round(rng.normal(size=12), 1)
    y = np.round(x + rng.normal(size=12), 1)
    for method in analysis.METHODS:
        got = analysis_stats._bootstrap_sorted(x, y, cells, method, 0, rng, weights[:25])
        for b in range(25):
            idx = np.repeat(np.arange(12), weights[b].astype(int))
            sample = analysis.Cells(codes[idx])
            a, c = sample.centre(x[idx]), sample.centre(y[idx])
            if np.allclose(a, 0) or np.allclose(c, 0):
                assert np.isnan(got[b])
            elif method == "spearman":
                assert got[b] == pytest.approx(stats.spearmanr(a, c)[0])
            else:
                assert got[b] == pytest.approx(np.corrcoef(a, c)[0, 1])
    draws = analysis.cluster_bootstrap(x, y, codes, "pearson", 50, np.random.default_rng(5))
    again = analysis.cluster_bootstrap(x, y, codes, "pearson", 50, np.random.default_rng(5))
    assert draws.shape == (50,) and np.array_equal(draws, again, equal_nan=True)


def test_bootstrap_is_reproducible_per_seed():
    records, probing, change = planted_grid(noise=0.2, models=("enc", "dec"))
    tidy = analysis.tidy_measures(records, probing, change, META)
    a = analysis.correlate(tidy, seed=1, n_boot=100, scopes=("pooled",))
    b = analysis.correlate(tidy, seed=1, n_boot=100, scopes=("pooled",))
    c = analysis.correlate(tidy, seed=2, n_boot=100, scopes=("pooled",))
    pd.testing.assert_frame_equal(a, b)
    assert np.allclose(a["coefficient"], c["coefficient"], equal_nan=True)
    ok = a["ci_low"].notna()
    assert ok.any()
    assert not np.allclose(a.loc[ok, "ci_low"], c.loc[ok, "ci_low"])


def test_bh_adjust_matches_hand_computation():
    # sorted finite p: 0.005, 0.01, 0.03, 0.04 (m = 4)
    # p * m / rank: 0.02, 0.02, 0.04, 0.04; running minimum from the top leaves them as is.
    q = analysis.bh_adjust([0.01, 0.04, 0.03, 0.005, np.nan])
    assert np.allclose(q, [0.02, 0.04, 0.04, 0.02, np.nan], equal_nan=True)
    # p * m / rank: 0.03, 0.0285, 0.02 -> running minimum from the top: 0.02 everywhere.
    assert np.allclose(analysis.bh_adjust([0.01, 0.02, 0.019]), [0.02, 0.02, 0.02])
    assert analysis.bh_adjust([]).shape == (0,)
    assert np.isnan(analysis.bh_adjust([np.nan])).all()


def test_constant_measure_is_noted():
    records, probing, _ = planted_grid(models=("enc",), fractions=(10, 50, 100), seeds=(0, 1, 2))
    probing = probing.assign(value=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corr = analysis.correlate(analysis.tidy_measures(records, probing, None, META), n_boot=20)
    row = pick(corr)
    assert np.isnan(row["coefficient"]) and row["note"].startswith(analysis.NOTE_CONSTANT)
    assert row["n"] == 9


def test_measure_constant_within_cells_is_noted():
    # x depends on the fraction only: nothing is left once fraction levels are centred.
    records, probing, _ = planted_grid(models=("enc",), fractions=(10, 50, 100), seeds=(0, 1, 2))
    probing = probing.assign(value=probing["fraction"].map({10: 1.0, 50: 2.0, 100: 3.0}))
    probing = probing.dropna(subset=["value"])
    corr = analysis.correlate(analysis.tidy_measures(records, probing, None, META), n_boot=20)
    row = pick(corr)
    assert np.isnan(row["coefficient"]) and row["note"].startswith(analysis.NOTE_CONSTANT_CELLS)


def test_settings_are_checked():
    tidy = analysis.tidy_measures(*planted_grid(models=("enc",), seeds=(0,))[:3], META)
    with pytest.raises(FinescopeError, match="scope"):
        analysis.correlate(tidy, scopes=("across",))
    with pytest.raises(FinescopeError, match="method"):
        analysis.correlate(tidy, methods=("kendall",))
    with pytest.raises(FinescopeError, match="min_n"):
        analysis.correlate(tidy, min_n=2)
    with pytest.raises(FinescopeError, match="depth_bins"):
        analysis.correlate(tidy, depth_bins=0)


def test_layer_and_fraction_ordering_helpers():
    assert analysis.sorted_fractions([100, "10", "random", 0, 10.0]) == ["random", "0", "10", "100"]
    layers = ["best_layer", "10", "2", "mean", "most_changed", "last", "0", "best_layer_depth"]
    assert sorted(layers, key=analysis.layer_sort_key) == [
        "0",
        "2",
        "10",
        "best_layer",
        "best_layer_depth",
        "most_changed",
        "mean",
        "last",
    ]
    assert analysis.layer_sort_key(np.nan) == (0, -1.0)
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
    corr.to_csv(tmp_path / "correlations.csv", index=False)
    read = analysis.normalize_correlations(pd.read_csv(tmp_path / "correlations.csv"))
    pd.testing.assert_frame_equal(read, corr, check_dtype=False)


def test_scope_points_are_the_centred_values_the_test_correlates(planted):
    tidy, corr = planted
    features = analysis.feature_table(tidy)
    for scope, model, layer in (("within_model", "dec", "1"), ("pooled", "all", "mean")):
        row = pick(corr, scope=scope, model=model, layer=layer)
        points = analysis.scope_points(features, row)
        assert len(points) == row["n"]
        r = np.corrcoef(points["x_centred"], points["y_centred"])[0, 1]
        assert r == pytest.approx(row["coefficient"])
