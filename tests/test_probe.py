"""Probing: planted signals are found at the right layer, labels stay with their rows, and the
controls (selectivity, online code) match hand computations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from finescope.errors import FinescopeError
from finescope.probe import (
    LinearProbe,
    SelectedLinearProbe,
    layerwise_logreg_baseline,
    make_probe,
    mdl_block_ends,
    merge_ner_tag,
    online_codelength,
    probe_layer,
    run_probes,
    sample_item_indices,
    selectivity_control_labels,
)

NLI_LABELS = np.array(["contradiction", "entailment", "neutral"])
FAST = {"probes": ["linear"], "selectivity": False, "mdl": False}


def write_cache(
    path: Path,
    task: str,
    views: dict[str, np.ndarray],
    ids: list[str],
    labels: list[str],
    word_item: list[int] | None = None,
    words: list[str] | None = None,
) -> Path:
    """A cache folder in the contract layout: meta.json + one (n_layers, N, width) fp16 array
    per view."""
    path.mkdir(parents=True)
    first = next(iter(views.values()))
    for view, array in views.items():
        np.save(path / f"{view}.npy", array.astype(np.float16))
    meta = {
        "task": task,
        "n_layers": int(first.shape[0]),
        "width": int(first.shape[2]),
        "dtype": "float16",
        "views": list(views),
        "ids": ids,
        "labels": labels,
        "forward_passes": 1,
        "model_dir": "synthetic",
        "attention": None,
    }
    if word_item is not None:
        meta["word_item"] = word_item
    if words is not None:
        meta["words"] = words
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def planted(y_codes: np.ndarray, width: int, rng: np.random.Generator, strength: float = 3.0):
    """Gaussian noise with the class written into the first dims (one dim per class)."""
    X = rng.normal(size=(len(y_codes), width))
    X[np.arange(len(y_codes)), y_codes] += strength
    return X


def nli_cache(
    path: Path,
    n: int,
    n_layers: int,
    signal_layer: int | None,
    seed: int,
    width: int = 8,
    shuffle_labels: bool = False,
    view: str = "premise",
) -> tuple[Path, np.ndarray]:
    """NLI cache whose ``view`` carries the label at ``signal_layer`` only; ids are
    deliberately not in sorted order."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 3, size=n)
    views = {v: rng.normal(size=(n_layers, n, width)) for v in ("premise", "hypothesis")}
    if signal_layer is not None:
        views[view][signal_layer] = planted(codes, width, rng, strength=5.0)
    labels = NLI_LABELS[codes]
    if shuffle_labels:
        labels = labels[rng.permutation(n)]
    ids = [f"{path.name}-{i:04d}" for i in rng.permutation(n)]
    write_cache(path, "nli", views, ids, labels.tolist())
    return path, codes


def layer_values(table: pd.DataFrame, probe: str, measure: str) -> np.ndarray:
    rows = table[(table.probe == probe) & (table.measure == measure)].sort_values("layer")
    return rows["value"].to_numpy()


POINT = {"task": "nli", "model": "tiny", "fraction": "50", "seed": 1}


def test_planted_signal_is_recovered_and_noise_stays_at_chance():
    rng = np.random.default_rng(0)
    y_tr, y_te = rng.integers(0, 3, 400), rng.integers(0, 3, 400)
    signal = probe_layer(planted(y_tr, 16, rng), y_tr, planted(y_te, 16, rng), y_te, "linear")
    noise = probe_layer(rng.normal(size=(400, 16)), y_tr, rng.normal(size=(400, 16)), y_te)
    assert signal["accuracy"] > 0.95 and signal["macro_f1"] > 0.95
    assert abs(noise["accuracy"] - 1 / 3) < 0.1


def test_each_layer_is_probed_on_its_own_states(tmp_path):
    # Signal only in layer 2 of 4: the study's bug (probing the last layer every time) would
    # give chance everywhere; a shifted index would put the peak elsewhere.
    train, _ = nli_cache(tmp_path / "train", 360, 4, signal_layer=2, seed=1)
    test, _ = nli_cache(tmp_path / "test", 240, 4, signal_layer=2, seed=2)
    table = run_probes("nli", train, test, POINT, FAST)
    acc = layer_values(table, "linear", "accuracy")
    assert acc[2] > 0.95
    for layer in (0, 1, 3):
        assert abs(acc[layer] - 1 / 3) < 0.12, (layer, acc)
    assert sorted(table.layer.unique()) == [0, 1, 2, 3]


def test_features_stay_aligned_with_labels(tmp_path):
    # Ids out of order, caps that subsample both splits: any row/label misalignment along the
    # way drops the planted layer to chance.
    # The signal sits in the hypothesis view, so the second half of the features is read too.
    train, _ = nli_cache(tmp_path / "train", 400, 2, 1, seed=3, view="hypothesis")
    test, _ = nli_cache(tmp_path / "test", 300, 2, 1, seed=4, view="hypothesis")
    capped = {**FAST, "max_train_items": 250, "max_test_items": 150}
    acc = layer_values(run_probes("nli", train, test, POINT, capped), "linear", "accuracy")
    assert acc[1] > 0.95
    # The same check is sensitive: labels permuted away from their rows -> chance.
    bad, _ = nli_cache(tmp_path / "bad", 400, 2, 1, seed=3, shuffle_labels=True, view="hypothesis")
    acc_bad = layer_values(run_probes("nli", bad, test, POINT, capped), "linear", "accuracy")
    assert abs(acc_bad[1] - 1 / 3) < 0.12


def test_item_caps_choose_the_same_items_whatever_the_cache_order():
    ids = [f"item{i}" for i in range(50)]
    order = np.random.default_rng(0).permutation(50)
    a = {ids[i] for i in sample_item_indices(ids, 20, seed=7)}
    shuffled = [ids[i] for i in order]
    b = {shuffled[i] for i in sample_item_indices(shuffled, 20, seed=7)}
    assert a == b and len(a) == 20
    assert list(sample_item_indices(ids, None, 7)) == list(range(50))


def test_ner_words_stay_with_their_sentences(tmp_path):
    # Sentences stored in an interleaved order; the word's type is planted in the word vector.
    rng = np.random.default_rng(5)

    def ner(path, n_sent):
        tags, word_item, words = [], [], []
        for s in rng.permutation(n_sent):
            for _ in range(rng.integers(3, 7)):
                tag = rng.choice(["O", "B-DNA", "I-DNA", "B-RNA"])
                tags.append(str(tag))
                word_item.append(int(s))
                words.append(f"w{rng.integers(0, 30)}")
        codes = np.array([{"O": 0, "DNA": 1, "RNA": 2}[merge_ner_tag(t)] for t in tags])
        X = rng.normal(size=(3, len(tags), 8))
        X[1] = planted(codes, 8, rng)
        ids = [f"{path.name}{i}" for i in range(n_sent)]
        return write_cache(path, "ner", {"word": X}, ids, tags, word_item, words)

    train, test = ner(tmp_path / "train", 80), ner(tmp_path / "test", 40)
    point = {**POINT, "task": "ner"}
    settings = {**FAST, "max_train_items": 60}
    acc = layer_values(run_probes("ner", train, test, point, settings), "linear", "accuracy")
    assert acc[1] > 0.95 and acc[0] < 0.7 and acc[2] < 0.7


def test_nli_selectivity_matches_hand_computation(tmp_path):
    # The features are exactly the one-hot label, so the task probe is perfect. The control
    # labels are random per item; a (nearly unregularised) linear probe on the control task can
    # only predict, for each true class, its most frequent control label in training. So the
    # control accuracy is the share of test items whose control label is that majority label.
    seed, n_tr, n_te = 3, 90, 60
    codes_tr, codes_te = np.arange(n_tr) % 3, np.arange(n_te) % 3
    ids_tr = [f"tr{i}" for i in range(n_tr)]
    ids_te = [f"te{i}" for i in range(n_te)]
    y_tr, y_te = NLI_LABELS[codes_tr], NLI_LABELS[codes_te]
    ctrl_tr = selectivity_control_labels(ids_tr, y_tr, seed)
    ctrl_te = selectivity_control_labels(ids_te, y_tr, seed)
    majority = {}
    for c in range(3):
        labels, counts = np.unique(ctrl_tr[codes_tr == c], return_counts=True)
        top = np.sort(counts)[::-1]
        assert len(top) == 1 or top[0] > top[1] + 1, "pick a seed without near ties"
        majority[c] = labels[np.argmax(counts)]
    control_acc = float(np.mean([ctrl_te[i] == majority[codes_te[i]] for i in range(n_te)]))

    def onehot(codes):
        X = np.zeros((1, len(codes), 3))
        X[0, np.arange(len(codes)), codes] = 1.0
        return {"premise": X, "hypothesis": np.zeros_like(X)}

    train = write_cache(tmp_path / "train", "nli", onehot(codes_tr), ids_tr, y_tr.tolist())
    test = write_cache(tmp_path / "test", "nli", onehot(codes_te), ids_te, y_te.tolist())
    settings = {**FAST, "selectivity": True, "seed": seed, "linear": {"C": 1e4}}
    table = run_probes("nli", train, test, POINT, settings)
    got = dict(zip(table.measure, table.value, strict=True))
    assert got["accuracy"] == 1.0
    assert got["control_accuracy"] == pytest.approx(control_acc, abs=1e-12)
    assert got["selectivity"] == pytest.approx(1.0 - control_acc, abs=1e-12)


def test_ner_type_control_is_memorised_so_selectivity_is_zero(tmp_path):
    # Features = one-hot word type; types recur in train and test (in different casing), so a
    # probe memorises both the task and the per-type control: 1 - 1 = 0 by hand.
    types = ["il-2", "gene", "cells", "the", "nf-kappa", "binds", "dna", "of"]
    type_tag = ["B-protein", "O", "O", "O", "B-protein", "O", "B-DNA", "O"]
    rng = np.random.default_rng(0)

    def ner(path, n_words, upper):
        t = rng.integers(0, len(types), n_words)
        X = np.eye(len(types))[t][None]
        words = [types[k].upper() if upper else types[k] for k in t]
        ids = [f"{path.name}{i}" for i in range(n_words // 5)]
        word_item = [i // 5 for i in range(n_words)]
        tags = [type_tag[k] for k in t]
        return write_cache(path, "ner", {"word": X}, ids, tags, word_item, words)

    train, test = ner(tmp_path / "train", 300, False), ner(tmp_path / "test", 100, True)
    settings = {**FAST, "selectivity": True, "linear": {"C": 1e4}}
    table = run_probes("ner", train, test, {**POINT, "task": "ner"}, settings)
    got = dict(zip(table.measure, table.value, strict=True))
    assert got["accuracy"] == 1.0 and got["control_accuracy"] == 1.0
    assert got["selectivity"] == 0.0


def test_control_labels_are_fixed_per_key_and_follow_the_label_distribution():
    pool = ["O"] * 80 + ["DNA"] * 20
    keys = [f"w{i}" for i in range(4000)]
    a = selectivity_control_labels(keys, pool, seed=1)
    assert list(selectivity_control_labels(keys[::-1], pool, seed=1)) == list(a[::-1])
    assert selectivity_control_labels(["w5", "w5"], pool, 1).tolist() == [a[5]] * 2
    assert abs(np.mean(a == "O") - 0.8) < 0.03
    assert (selectivity_control_labels(keys, pool, seed=2) != a).any()


def test_mdl_block_ends():
    assert mdl_block_ends(1000) == [1, 2, 4, 8, 16, 32, 62, 125, 250, 500, 1000]
    assert mdl_block_ends(10) == [1, 2, 5, 10]  # up to 12.5 % all end at the first item
    with pytest.raises(FinescopeError):
        mdl_block_ends(10, [50, 90])


def test_online_codelength_add_one_rule_by_hand():
    # One class only: every block after the first is coded with (count + 1) / (n + K).
    y, X = np.zeros(10, dtype=int), np.zeros((10, 1))
    bits, uniform = online_codelength(X, y, 2, LinearProbe, seed=0, portions=[10, 20, 50, 100])
    hand = 1 + math.log2(3 / 2) + 3 * math.log2(4 / 3) + 5 * math.log2(7 / 6)
    assert bits == pytest.approx(hand, rel=1e-12) and uniform == 10.0
    # Two items of two classes: the second is coded from one seen class -> 1/3.
    bits, _ = online_codelength(np.zeros((2, 1)), [0, 1], 2, LinearProbe, 0, [50, 100])
    assert bits == pytest.approx(1 + math.log2(3), rel=1e-12)


class FixedProbe:
    """Assigns p(class 0 | x) = x[0]; records the size of every training set."""

    fits: list[int] = []

    def fit(self, X, y):
        FixedProbe.fits.append(len(y))
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X):
        return np.stack([X[:, 0], 1 - X[:, 0]], axis=1)


def test_online_codelength_with_a_fixed_predictor_by_hand():
    # 5 + 5 items: the first block (6 items) always holds both classes, and every later item
    # gets probability 0.8 for its own label, so the total is 6 * log2(2) + 4 * log2(1 / 0.8)
    # whatever the permutation.
    y = np.array([0, 1] * 5)
    X = np.where(y == 0, 0.8, 0.2)[:, None]
    FixedProbe.fits = []
    bits, uniform = online_codelength(X, y, 2, FixedProbe, seed=11, portions=[60, 80, 100])
    assert bits == pytest.approx(6 + 4 * math.log2(1 / 0.8), rel=1e-12)
    assert uniform == 10.0 and FixedProbe.fits == [6, 8]


def test_online_codelength_unseen_class_keeps_its_add_one_mass():
    # Three distinct labels, K = 3: the last item's class is never in the 2 earlier ones, so
    # it costs log2(n + K) = log2(5) bits.
    bits, uniform = online_codelength(
        np.eye(3), ["a", "b", "c"], 3, LinearProbe, seed=4, portions=[67, 100]
    )
    assert bits == pytest.approx(2 * math.log2(3) + math.log2(5), rel=1e-12)
    assert uniform == pytest.approx(3 * math.log2(3))


def test_mdl_compresses_a_planted_signal_more_than_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    # Many noise dims: a fixed-C probe is over-confident here; the held-out choice of C keeps
    # pure noise at about the uniform code.
    signal = np.hstack([planted(y, 8, rng), rng.normal(size=(600, 56))])
    noise = rng.normal(size=(600, 64))
    with threadpool_limits(1):  # tiny matrices: threads only contend
        bits_s, uni = online_codelength(signal, y, 3, SelectedLinearProbe, seed=0)
        bits_n, _ = online_codelength(noise, y, 3, SelectedLinearProbe, seed=0)
    assert uni / bits_s > 2.0 and abs(uni / bits_n - 1) < 0.05


def test_bilstm_crf_and_svm_beat_chance_on_planted_signal():
    rng = np.random.default_rng(0)
    # NER-like sequences: 3 word classes written in the vectors.
    lengths = rng.integers(3, 9, 120)
    groups = np.repeat(np.arange(120), lengths)
    y = rng.integers(0, 3, len(groups))
    X = planted(y, 8, rng, strength=2.0)
    cut = int(np.searchsorted(groups, 90))
    settings = {"bilstm_crf": {"hidden": 16, "epochs": 6, "batch_size": 16}}
    scores = probe_layer(
        X[:cut], y[:cut], X[cut:], y[cut:], "bilstm_crf", settings,
        groups_train=groups[:cut], groups_test=groups[cut:],
    )  # fmt: skip
    assert scores["accuracy"] > 0.8
    y2 = rng.integers(0, 3, 300)
    svm = probe_layer(planted(y2[:200], 16, rng), y2[:200], planted(y2[200:], 16, rng), y2[200:],
                      "svm")  # fmt: skip
    assert svm["accuracy"] > 0.8


def test_probes_are_reproducible():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(20), 4)
    y = rng.integers(0, 2, 80)
    X = planted(y, 4, rng, 1.0)
    for name in ("linear", "mlp", "bilstm_crf"):
        settings = {"mlp": {"max_iter": 50}, "bilstm_crf": {"epochs": 2, "hidden": 8}}
        a = make_probe(name, settings).fit(X, y, groups=groups).predict(X, groups=groups)
        b = make_probe(name, settings).fit(X, y, groups=groups).predict(X, groups=groups)
        assert (a == b).all(), name


def ner_pair(tmp_path, n_layers=2):
    rng = np.random.default_rng(9)

    def ner(path, n_sent):
        word_item = np.repeat(np.arange(n_sent), 5).tolist()
        tags = rng.choice(["O", "O", "B-DNA", "I-DNA", "B-cell_type"], len(word_item)).tolist()
        words = [f"w{k}" for k in rng.integers(0, 20, len(word_item))]
        X = rng.normal(size=(n_layers, len(word_item), 6))
        ids = [f"{path.name}{i}" for i in range(n_sent)]
        return write_cache(path, "ner", {"word": X}, ids, tags, word_item, words)

    return ner(tmp_path / "train", 30), ner(tmp_path / "test", 12)


def test_run_probes_gives_one_row_per_layer_probe_and_measure(tmp_path):
    full = {"selectivity": True, "mdl": True, "mlp": {"max_iter": 30}}
    train, test = (
        nli_cache(tmp_path / "train", 90, 3, 1, 0)[0],
        nli_cache(tmp_path / "te", 45, 3, 1, 1)[0],
    )
    nli = run_probes("nli", train, test, POINT, {**full, "probes": ["linear", "mlp", "svm"]})
    assert list(nli.columns) == [
        "task", "model", "fraction", "seed", "layer", "probe", "measure", "value"
    ]  # fmt: skip
    assert len(nli) == 3 * (3 * 4 + 2)
    assert set(nli.measure) == {
        "accuracy", "macro_f1", "control_accuracy", "selectivity", "codelength", "compression"
    }  # fmt: skip
    assert (nli[["task", "model", "fraction", "seed"]].drop_duplicates().values.tolist()
            == [["nli", "tiny", "50", 1]])  # fmt: skip
    assert set(nli[nli.measure == "codelength"].probe) == {"linear"}
    assert nli.value.notna().all()

    train, test = ner_pair(tmp_path / "ner")
    point = {**POINT, "task": "ner", "fraction": "random", "seed": 0}
    settings = {**full, "probes": ["linear", "bilstm_crf"], "bilstm_crf": {"epochs": 1}}
    ner = run_probes("ner", train, test, point, settings)
    assert len(ner) == 2 * (2 * 4 + 2)
    assert set(ner.probe) == {"linear", "bilstm_crf"}


def test_run_probes_is_the_same_for_any_n_jobs(tmp_path):
    train, test = ner_pair(tmp_path, n_layers=3)
    # Selectivity and the warm-started online code included; workers start in seconds.
    settings = {"probes": ["linear"], "selectivity": True, "mdl": True}
    point = {**POINT, "task": "ner"}
    one = run_probes("ner", train, test, point, settings)
    two = run_probes("ner", train, test, point, {**settings, "n_jobs": 2})
    pd.testing.assert_frame_equal(one, two)


def test_clear_errors(tmp_path):
    train, test = ner_pair(tmp_path)
    meta = json.loads((train / "meta.json").read_text())
    del meta["words"]
    (train / "meta.json").write_text(json.dumps(meta))
    point = {**POINT, "task": "ner"}
    with pytest.raises(FinescopeError, match="words"):
        run_probes("ner", train, test, point, {"selectivity": True, "mdl": False})
    words = [f"w{i % 7}" for i in range(len(meta["labels"]))]
    table = run_probes(
        "ner", train, test, point, {"selectivity": True, "mdl": False}, train_words=words
    )
    assert "selectivity" in set(table.measure)
    with pytest.raises(FinescopeError, match="NER only"):
        run_probes("nli", train, test, POINT, {"probes": ["bilstm_crf"]})
    with pytest.raises(FinescopeError, match="probe"):
        run_probes("ner", train, test, point, {"max_train_item": 5})
    with pytest.raises(FinescopeError, match="meta.json"):
        run_probes("ner", tmp_path / "nowhere", test, point, {})


def test_merge_ner_tag():
    assert [merge_ner_tag(t) for t in ["B-DNA", "I-DNA", "O", "E-RNA", "S-cell_line"]] == [
        "DNA", "DNA", "O", "RNA", "cell_line"
    ]  # fmt: skip


def test_layerwise_baseline_finds_the_planted_layer():
    rng = np.random.default_rng(2)
    y_tr, y_te = rng.integers(0, 3, 300), rng.integers(0, 3, 200)
    X_tr = rng.normal(size=(3, 300, 8))
    X_te = rng.normal(size=(3, 200, 8))
    X_tr[2], X_te[2] = planted(y_tr, 8, rng), planted(y_te, 8, rng)
    table = layerwise_logreg_baseline(X_tr, y_tr, X_te, y_te)
    acc = table[table.measure == "accuracy"].value.to_numpy()
    assert acc[2] > 0.95 and acc[0] < 0.5


def test_selected_probe_scores_only_held_out_items_of_known_classes():
    n = 20
    val = np.random.default_rng(0).permutation(n)[:2]  # the probe's held-out share
    y = np.array(["a", "b"] * 10, dtype=object)
    # One held-out item has a class the rest lacks: one item is left to score, too few for a
    # standard error, so the strongest regularisation is kept.
    y[val[0]] = "rare"
    X = np.random.default_rng(1).normal(size=(n, 4))
    probe = SelectedLinearProbe().fit(X, y)
    assert probe.C_ == min(probe.grid)
    assert probe.predict_log_proba(X).shape == (n, 3)
