"""Tests for finescope.figures: every figure is a valid PNG and SVG, even without data."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from finescope import analysis, figures

META = {
    "enc": {"family": "encoder", "domain": "general"},
    "dec": {"family": "decoder", "domain": "biomedical"},
}


def tiny_tables(models=("enc", "dec"), fractions=(100,), seeds=(0, 1)):
    rng = np.random.default_rng(0)
    records, probing, change = [], [], []
    for model in models:
        for fraction in (0, "random", *fractions):
            for seed in seeds if fraction not in (0, "random") else (0,):
                score = 0.5 + (0 if fraction == "random" else fraction) / 400 + rng.normal(0, 0.02)
                if fraction not in (0, "random"):
                    records.append(
                        {
                            "task": "nli",
                            "model": model,
                            "fraction": fraction,
                            "seed": seed,
                            "metrics": {"primary": "accuracy", "score": score, "accuracy": score},
                        }
                    )
                for layer in range(3):
                    for probe in ("linear",):
                        for measure in ("accuracy", "selectivity", "compression"):
                            probing.append(
                                dict(
                                    task="nli",
                                    model=model,
                                    fraction=fraction,
                                    seed=seed,
                                    layer=layer,
                                    probe=probe,
                                    measure=measure,
                                    value=score * (layer + 1) / 3,
                                )
                            )
                    if fraction in (0, "random"):
                        continue
                    for head in ("all", "0", "1"):
                        for measure in ("attention_cosine", "attention_js", "cka"):
                            change.append(
                                dict(
                                    task="nli",
                                    model=model,
                                    fraction=fraction,
                                    seed=seed,
                                    layer=layer,
                                    head=head,
                                    measure=measure,
                                    value=float(rng.uniform()),
                                )
                            )
    tidy = analysis.tidy_measures(records, pd.DataFrame(probing), pd.DataFrame(change), META)
    return tidy, analysis.correlate(tidy, seed=0, n_boot=20)


def assert_valid(paths):
    assert [p.suffix for p in paths] == [".png", ".svg"]
    png, svg = paths
    assert png.stat().st_size > 0 and svg.stat().st_size > 0
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.size[0] > 100 and image.size[1] > 100
    assert ET.parse(svg).getroot().tag.endswith("svg")


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    # Within a model 6 points (underpowered, hatched); pooled 12 points in 4 cells.
    tidy, corr = tiny_tables(fractions=(50, 100), seeds=(0, 1, 2))
    assert corr["underpowered"].any() and not corr["underpowered"].all()
    out = tmp_path_factory.mktemp("figures")
    return out, figures.make_all_figures(tidy, corr, out)


def test_make_all_figures_writes_every_named_figure(drawn):
    out, written = drawn
    assert tuple(written) == figures.FIGURES
    for name, paths in written.items():
        assert paths == figures.figure_paths(out, name)
        assert_valid(paths)
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_figures_drawn_side_by_side_are_the_same_files(drawn, tmp_path):
    out, written = drawn
    tidy, corr = tiny_tables(fractions=(50, 100), seeds=(0, 1, 2))
    parallel = figures.make_all_figures(tidy, corr, tmp_path, n_jobs=2)
    assert tuple(parallel) == tuple(written)
    for name, paths in parallel.items():
        for path, serial in zip(paths, written[name], strict=True):
            assert path.read_bytes() == serial.read_bytes(), path.name


def test_empty_inputs_still_write_valid_images(tmp_path):
    empty = analysis.tidy_measures(None, None, None, {})
    written = figures.make_all_figures(empty, analysis.correlate(empty), tmp_path)
    assert tuple(written) == figures.FIGURES
    for paths in written.values():
        assert_valid(paths)


def test_tiny_grid_without_correlations(tmp_path):
    tidy, corr = tiny_tables(models=("enc",), fractions=(100,), seeds=(0,))
    assert corr["coefficient"].isna().all()
    assert_valid(figures.plot_correlation_heatmap(corr, tmp_path / "corr"))
    assert_valid(figures.plot_top_scatter(tidy, corr, tmp_path / "scatter"))
    assert_valid(figures.plot_downstream(tidy, tmp_path / "down"))


def test_per_head_only_and_all_only_change(tmp_path):
    tidy, _ = tiny_tables(models=("enc",), fractions=(100,), seeds=(0,))
    whole = tidy[(tidy["source"] != "change") | (tidy["head"] == "all")]
    assert_valid(figures.plot_attention_heatmaps(whole, tmp_path / "whole", "attention_js"))
    heads = tidy[(tidy["source"] != "change") | (tidy["head"] != "all")]
    assert_valid(figures.plot_cka(heads, tmp_path / "cka"))


def test_svg_output_is_deterministic(tmp_path):
    tidy, _ = tiny_tables(models=("enc",), fractions=(100,), seeds=(0,))
    a = figures.plot_downstream(tidy, tmp_path / "a")[1].read_bytes()
    b = figures.plot_downstream(tidy, tmp_path / "b")[1].read_bytes()
    assert a == b


def test_palettes_are_stable_and_distinct():
    palette = figures.model_palette(["b", "a", "c", "a"])
    assert list(palette) == ["a", "b", "c"] and len(set(palette.values())) == 3
    assert figures.model_palette(["c", "a", "b"]) == palette
    assert len(set(figures.model_palette([f"m{i}" for i in range(14)]).values())) == 14
    fractions = figures.fraction_palette([100, "random", 0, 10])
    assert list(fractions) == ["random", "0", "10", "100"]
    assert fractions["random"] == figures.RANDOM_COLOR


def test_correlation_heatmap_marks_underpowered_cells(drawn):
    out, written = drawn
    svg = written["correlations"][1].read_text(encoding="utf-8")
    assert "hatched = underpowered" in svg
    assert "within enc (fraction levels)" in svg and "pooled over models" in svg
    assert "d 0.12" in svg  # a relative-depth bin of the pooled panel


def test_scatter_says_when_every_test_is_underpowered(tmp_path):
    tidy, corr = tiny_tables(models=("enc",), fractions=(50, 100), seeds=(0, 1))
    assert corr["underpowered"].all()
    paths = figures.plot_top_scatter(tidy, corr, tmp_path / "scatter")
    assert_valid(paths)
    assert "every test is underpowered" in paths[1].read_text(encoding="utf-8")


def test_top_correlations_picks_smallest_q_among_powered_tests(drawn):
    tidy, corr = tiny_tables(fractions=(50, 100), seeds=(0, 1, 2))
    base = corr[corr["scope"] == "pooled"].iloc[0].to_dict()
    changes = [
        {"measure": "a", "coefficient": 0.5, "q_value": 0.01},
        {"measure": "b", "coefficient": -0.9, "q_value": 0.02},
        {"measure": "c", "coefficient": 0.7, "q_value": 0.01},
        {"measure": "d", "coefficient": np.nan, "q_value": np.nan},
        {"measure": "e", "coefficient": 1.0, "q_value": np.nan, "underpowered": True},
        {"measure": "f", "coefficient": 1.0, "q_value": 1e-9, "scope": "raw", "family": ""},
    ]
    fake = pd.DataFrame([{**base, **c} for c in changes])[analysis.CORRELATION_COLUMNS]
    assert figures.top_correlations(fake)["measure"].tolist() == ["c"]
    assert figures.top_correlations(fake, scope="within_model").empty
    top = figures.top_correlations(corr)
    assert len(top) == 1 and not top["underpowered"].any()


# --------------------------------------------------------------------------------------------
# Learning curves, confusion, probe heatmaps, attention example


def _job(root, task, model, fraction, seed):
    folder = root / task / model / f"f{fraction}" / f"s{seed}"
    folder.mkdir(parents=True)
    return folder


def test_learning_curves_from_curve_files(tmp_path):
    from finescope.finetune.train import _write_curve

    rng = np.random.default_rng(1)
    paths, points = [], []
    for fraction, steps in ((50, 6), (100, 12)):
        for seed in (0, 1):
            rows = [
                {
                    "step": step,
                    "epoch": step / (steps / 2),
                    "loss": 2.0 / step + rng.uniform(0, 0.1),
                    "learning_rate": 1e-4,
                    "dev_score": 0.3 + 0.05 * step if step % (steps // 2) == 0 else None,
                    "examples_per_second": 10.0,
                }
                for step in range(1, steps + 1)
            ]
            path = _job(tmp_path, "nli", "enc", fraction, seed) / "curve.csv"
            _write_curve(path, rows)
            paths.append(path)
            points.append({"task": "nli", "model": "enc", "fraction": str(fraction), "seed": seed})
    curves = figures.read_curves(paths, points)
    assert len(curves) == 2 * (6 + 12)
    assert set(curves["fraction"]) == {"50", "100"} and set(curves["seed"]) == {0, 1}
    assert curves["dev_score"].notna().sum() == 8  # two epochs per run
    out = figures.plot_learning_curves(curves, tmp_path / "curves")
    assert_valid(out)
    svg = out[1].read_text(encoding="utf-8")
    assert "nli · enc · training loss" in svg and "100 %" in svg


def test_confusion_from_stored_test_predictions(tmp_path):
    from finescope.finetune import predictions_record
    from finescope.io import write_json
    from finescope.metrics import ner_metrics, nli_metrics

    labels = ["contradiction", "entailment", "neutral"]
    nli = [{"id": f"p{i}", "label": labels[i % 3]} for i in range(9)]
    ner = [{"id": "s0", "tags": ["B-protein", "I-protein", "O"]}, {"id": "s1", "tags": ["O"]}]
    paths, points = [], []
    for fraction in (50, 100):
        predicted = [labels[(i + (i % 2)) % 3] for i in range(9)]
        metrics = nli_metrics([i["label"] for i in nli], predicted, labels)
        path = _job(tmp_path, "nli", "enc", fraction, 0) / "metrics.json"
        write_json(path, metrics | {"test_predictions": predictions_record("nli", nli, predicted)})
        paths.append(path)
        points.append({"task": "nli", "model": "enc", "fraction": str(fraction), "seed": 0})
    tags = [["B-protein", "B-protein", "O"], ["O"]]
    metrics = ner_metrics([i["tags"] for i in ner], tags)
    path = _job(tmp_path, "ner", "enc", 100, 0) / "metrics.json"
    write_json(path, metrics | {"test_predictions": predictions_record("ner", ner, tags)})
    paths.append(path)
    points.append({"task": "ner", "model": "enc", "fraction": "100", "seed": 0})

    table = figures.read_predictions(paths, points)
    assert len(table) == 2 * 9 + 4  # NLI items, NER words
    ner_rows = table[table["task"] == "ner"]
    assert ner_rows["predicted"].tolist() == ["B-protein", "B-protein", "O", "O"]
    # The NLI diagonal equals the confusion matrix that metrics.json has.
    largest = table[(table["task"] == "nli") & (table["fraction"] == "100")]
    counts = pd.crosstab(largest["gold"], largest["predicted"]).reindex(
        index=labels, columns=labels, fill_value=0
    )
    assert counts.to_numpy().tolist() == metrics_confusion(paths[1])
    out = figures.plot_confusion(table, tmp_path / "confusion")
    assert_valid(out)
    svg = out[1].read_text(encoding="utf-8")
    assert "nli · enc · 100 %" in svg and "ner · enc · 100 %" in svg and "I-protein" in svg
    assert "50 %" not in svg  # only the largest fraction is drawn


def metrics_confusion(path):
    from finescope.io import read_json

    return read_json(path)["confusion"]


def test_probe_heatmaps_score_selectivity_compression(tmp_path):
    tidy, _ = tiny_tables(fractions=(50, 100), seeds=(0, 1))
    out = figures.plot_probe_heatmaps(tidy, tmp_path / "heat")
    assert_valid(out)
    svg = out[1].read_text(encoding="utf-8")
    for text in ("probe score (accuracy)", "selectivity", "MDL compression", "nli · dec"):
        assert text in svg
    assert "random weights" in svg and "50 %" in svg


def test_attention_example_from_real_caches(tmp_path, tiny_bert_dir, nli_items):
    from finescope.extract import run_extract

    settings = {"attention_items": 2, "dtype": "float32", "nli_view": "pair"}
    run_extract("nli", tiny_bert_dir, nli_items, tmp_path / "pre", settings)
    # A re-initialised model stands in for the fine-tuned one: its attention differs.
    run_extract(
        "nli",
        tiny_bert_dir,
        nli_items,
        tmp_path / "ft",
        settings | {"random_init": True, "seed": 7},
    )
    example = figures.attention_example(tmp_path / "pre", tmp_path / "ft")
    t = len(example["tokens"])
    assert example["pre"].shape == example["ft"].shape == (t, t)
    assert np.allclose(example["pre"].sum(axis=1), 1.0, atol=1e-4)
    assert example["tokens"][0] == "[CLS]" and example["layer"] == 2  # tiny BERT: 2 blocks
    assert example["js"] > 0
    out = figures.plot_attention_example({("nli", "bert", "100"): example}, tmp_path / "attention")
    assert_valid(out)
    assert "[CLS]" in out[1].read_text(encoding="utf-8")
    none = figures.plot_attention_example({}, tmp_path / "none")
    assert_valid(none)
    assert "no attention maps stored" in none[1].read_text(encoding="utf-8")
