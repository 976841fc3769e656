"""Probing: planted signals are found at the right layer, labels stay with their rows, probe-dev
items are scored but never fitted, and the controls (selectivity, online code) match hand
computations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score
from threadpoolctl import threadpool_limits

from benchmarks.references import layerwise_logreg_baseline
from finescope.errors import FinescopeError
from finescope.probe import (
    STOP_WORDS,
    LinearProbe,
    SelectedLinearProbe,
    control_scores,
    hypothesis_type,
    layer_features,
    make_probe,
    mdl_block_ends,
    merge_ner_tag,
    online_codelength,
    open_cache,
    probe_layer,
    resolve_features,
    run_probes,
    sample_item_indices,
    score_predictions,
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
    **extra_meta,
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
    meta.update(extra_meta)
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


def test_nli_lexical_selectivity_matches_hand_computation(tmp_path):
    # The features are exactly the one-hot label, so the task probe is perfect. The control
    # labels are random per hypothesis type, which the features do not encode; a (nearly
    # unregularised) linear probe on the control task can only predict, for each true class,
    # its most frequent control label in training. So the control accuracy is the share of
    # test items whose control label is that majority label.
    seed, n_tr, n_te = 2, 90, 60
    codes_tr, codes_te = np.arange(n_tr) % 3, np.arange(n_te) % 3
    ids_tr = [f"tr{i}" for i in range(n_tr)]
    ids_te = [f"te{i}" for i in range(n_te)]
    # 17 types in train; test has 3 more (never seen): coverage 51 / 60 by construction.
    # Keys keep letters only, so the type number is spelled in letters ("wordbc" = 12).
    hyp_tr = [f"The word{_letters(i % 17)} is here ." for i in range(n_tr)]
    hyp_te = [f"A word{_letters(i % 20)} sat ." for i in range(n_te)]
    keys_tr = [hypothesis_type(h) for h in hyp_tr]
    keys_te = [hypothesis_type(h) for h in hyp_te]
    assert len(set(keys_tr)) == 17 and len(set(keys_te)) == 20
    y_tr, y_te = NLI_LABELS[codes_tr], NLI_LABELS[codes_te]
    ctrl_tr = selectivity_control_labels(keys_tr, y_tr, seed)
    ctrl_te = selectivity_control_labels(keys_te, y_tr, seed)
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
    table = run_probes(
        "nli",
        train,
        test,
        POINT,
        settings,
        probe_hypotheses=dict(zip(ids_tr, hyp_tr, strict=True)),
        test_hypotheses=hyp_te,  # a sequence in cache order works too
    )
    got = dict(zip(table.measure, table.value, strict=True))
    assert got["accuracy"] == 1.0
    assert got["control_accuracy"] == pytest.approx(control_acc, abs=1e-12)
    assert got["selectivity"] == pytest.approx(1.0 - control_acc, abs=1e-12)
    assert got["control_coverage"] == pytest.approx(51 / 60, abs=1e-12)
    none = run_probes("nli", train, test, POINT, {**settings, "nli_control": "none"})
    assert set(none.measure) == {"accuracy", "macro_f1"}


def _letters(k: int) -> str:
    return "".join("abcdefghij"[int(d)] for d in str(k))


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
    assert got["macro_f1"] == got["control_macro_f1"] == 1.0
    assert got["entity_accuracy"] == got["control_entity_accuracy"] == 1.0
    assert got["selectivity_macro_f1"] == got["selectivity_entity"] == 0.0


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
    hyps = {"probe_hypotheses": hypotheses(train), "test_hypotheses": hypotheses(test)}
    settings = {**full, "probes": ["linear", "mlp", "svm"]}
    nli = run_probes("nli", train, test, POINT, settings, **hyps)
    assert list(nli.columns) == [
        "task", "model", "fraction", "seed", "layer", "probe", "features", "measure", "value"
    ]  # fmt: skip
    assert len(nli) == 3 * (3 * 5 + 2)
    assert set(nli.measure) == {
        "accuracy", "macro_f1", "control_accuracy", "selectivity", "control_coverage",
        "codelength", "compression",
    }  # fmt: skip
    assert set(nli.features) == {"premise+hypothesis"}
    assert (nli[["task", "model", "fraction", "seed"]].drop_duplicates().values.tolist()
            == [["nli", "tiny", "50", 1]])  # fmt: skip
    assert set(nli[nli.measure == "codelength"].probe) == {"linear"}
    assert nli.value.notna().all()

    train, test = ner_pair(tmp_path / "ner")
    point = {**POINT, "task": "ner", "fraction": "random", "seed": 0}
    settings = {**full, "probes": ["linear", "bilstm_crf"], "bilstm_crf": {"epochs": 1}}
    ner = run_probes("ner", train, test, point, settings)
    assert len(ner) == 2 * (2 * 9 + 2)
    assert set(ner.probe) == {"linear", "bilstm_crf"}
    assert set(ner.measure) == {
        "accuracy", "macro_f1", "entity_accuracy", "control_accuracy", "selectivity",
        "control_macro_f1", "selectivity_macro_f1", "control_entity_accuracy",
        "selectivity_entity", "codelength", "compression",
    }  # fmt: skip
    assert set(ner.features) == {"word:mean"}
    # Probe-dev items: every measure again with the dev_ prefix (the online code excepted).
    dev = open_cache(train).ids[:8]
    with_dev = run_probes("ner", train, test, point, settings, dev_ids=dev)
    test_measures = set(ner.measure) - {"codelength", "compression"}
    assert set(with_dev.measure) == set(ner.measure) | {f"dev_{m}" for m in test_measures}
    assert len(with_dev) == 2 * (2 * 18 + 2)


def test_run_probes_is_the_same_for_any_n_jobs(tmp_path):
    train, test = ner_pair(tmp_path, n_layers=3)
    # Selectivity, probe-dev rows, a C search and the warm-started online code included;
    # workers start in seconds.
    settings = {
        "probes": ["linear"], "selectivity": True, "mdl": True, "linear": {"C": [0.01, 1.0]}
    }  # fmt: skip
    point = {**POINT, "task": "ner"}
    dev = open_cache(train).ids[::3]
    one = run_probes("ner", train, test, point, settings, dev_ids=dev)
    two = run_probes("ner", train, test, point, {**settings, "n_jobs": 2}, dev_ids=dev)
    pd.testing.assert_frame_equal(one, two)
    assert {"chosen_C", "dev_selectivity_entity"} <= set(one.measure)


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
        "ner", train, test, point, {"selectivity": True, "mdl": False}, probe_words=words
    )
    assert "selectivity" in set(table.measure)
    with pytest.raises(FinescopeError, match="NER only"):
        run_probes("nli", train, test, POINT, {"probes": ["bilstm_crf"]})
    with pytest.raises(FinescopeError, match="probe"):
        run_probes("ner", train, test, point, {"max_train_item": 5})
    with pytest.raises(FinescopeError, match="meta.json"):
        run_probes("ner", tmp_path / "nowhere", test, point, {})


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"nli_features": "both"}, r"probe\.nli_features"),
        ({"nli_control": "item"}, r"probe\.nli_control"),
        ({"nli_interactions": "yes"}, r"probe\.nli_interactions"),
        ({"linear": {"C": []}}, r"probe\.linear\.C"),
        ({"svm": {"C": [1.0, -1.0]}}, r"probe\.svm\.C"),
        ({"linear": {"C": True}}, r"probe\.linear\.C"),
        ({"max_test_items": 0}, r"probe\.max_test_items"),
    ],
)
def test_bad_settings_name_their_key(tmp_path, settings, match):
    train, _ = nli_cache(tmp_path / "train", 30, 1, None, seed=0)
    with pytest.raises(FinescopeError, match=match):
        run_probes("nli", train, train, POINT, {**FAST, **settings})


def test_nli_control_errors(tmp_path):
    train, _ = nli_cache(tmp_path / "train", 30, 1, None, seed=0)
    test, _ = nli_cache(tmp_path / "test", 20, 1, None, seed=1)
    lexical = {**FAST, "selectivity": True}
    with pytest.raises(FinescopeError, match="probe_hypotheses"):
        run_probes("nli", train, test, POINT, lexical)
    partial = dict(list(hypotheses(train).items())[:10])
    with pytest.raises(FinescopeError, match="lacks the hypothesis of 20"):
        run_probes("nli", train, test, POINT, lexical, probe_hypotheses=partial)
    with pytest.raises(FinescopeError, match="3 hypotheses for 20"):
        run_probes("nli", train, test, POINT, lexical, probe_hypotheses=hypotheses(train),
                   test_hypotheses=["a", "b", "c"])  # fmt: skip
    # Hypotheses stored in the cache meta are used when none are passed.
    meta = json.loads((test / "meta.json").read_text())
    meta["hypotheses"] = list(hypotheses(test).values())
    (test / "meta.json").write_text(json.dumps(meta))
    table = run_probes("nli", train, test, POINT, lexical, probe_hypotheses=hypotheses(train))
    assert measures(table, 0)["control_coverage"] == 1.0
    # A C list goes through run_probes' dev search; a probe made on its own needs one C.
    with pytest.raises(FinescopeError, match=r"probe\.linear\.C"):
        make_probe("linear", {"linear": {"C": [0.1, 1.0]}})
    assert make_probe("linear", {"linear": {"C": [0.1, 1.0]}}, C=0.1).C == 0.1


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


def test_selected_probe_with_one_candidate_fits_once_and_codes_as_before():
    class Counting(SelectedLinearProbe):
        fits = 0

        def _lr(self, C, warm_start=False):
            Counting.fits += 1
            return super()._lr(C, warm_start)

    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 6))
    y = (X[:, 0] + 0.3 * rng.normal(size=120) > 0).astype(int)
    probe = Counting(grid=[0.1]).fit(X, y)
    assert probe.C_ == 0.1 and Counting.fits == 1  # the final fit only, no held-out fit
    # Same code length as the single-candidate probe fitted the long way (held-out fit first).
    bits_one, _ = online_codelength(X, y, 2, lambda: SelectedLinearProbe(grid=[0.1]), seed=0)
    bits_two, _ = online_codelength(X, y, 2, lambda: SelectedLinearProbe(grid=[0.1, 0.1]), seed=0)
    assert bits_one == pytest.approx(bits_two, rel=1e-9)


# --------------------------------------------------------------------------------------------
# Probe-dev rows, C search, NLI features, lexical control, NER entity measures
# --------------------------------------------------------------------------------------------


def hypotheses(cache: Path, n_types: int = 10) -> dict[str, str]:
    """A hypothesis per cached item whose type ("thing" + letters) recurs across caches."""
    ids = open_cache(cache).ids
    return {i: f"The thing{_letters(int(i[-4:]) % n_types)} runs ." for i in ids}


def nli_arrays(n: int, n_layers: int, signal_layer: int, seed: int, width: int = 8):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 3, size=n)
    views = {v: rng.normal(size=(n_layers, n, width)) for v in ("premise", "hypothesis")}
    views["premise"][signal_layer] = planted(codes, width, rng, strength=1.5)
    return views, codes


def hand_features(cache: Path, layer: int, rows, views=("premise", "hypothesis")) -> np.ndarray:
    c = open_cache(cache)
    return np.concatenate([c.layer(v, layer)[rows] for v in views], axis=1)


def measures(table: pd.DataFrame, layer: int, probe: str = "linear") -> dict[str, float]:
    rows = table[(table.layer == layer) & (table.probe == probe)]
    return dict(zip(rows.measure, rows.value, strict=True))


def test_dev_rows_are_scored_with_the_probe_fitted_on_probe_train(tmp_path):
    views, codes = nli_arrays(160, 2, 1, seed=0)
    ids = [f"pool-{i:04d}" for i in np.random.default_rng(1).permutation(160)]
    pool = write_cache(tmp_path / "pool", "nli", views, ids, NLI_LABELS[codes].tolist())
    test, _ = nli_cache(tmp_path / "test", 90, 2, 1, seed=2)
    dev_rows = np.sort(np.random.default_rng(3).permutation(160)[:50])
    train_rows = np.setdiff1d(np.arange(160), dev_rows)
    dev_ids = [ids[i] for i in dev_rows]
    table = run_probes("nli", pool, test, POINT, FAST, dev_ids=dev_ids)
    y_test = np.asarray(open_cache(test).labels)
    for layer in (0, 1):
        got = measures(table, layer)
        with threadpool_limits(1):
            probe = LinearProbe().fit(hand_features(pool, layer, train_rows), codes[train_rows])
            pred_dev = NLI_LABELS[probe.predict(hand_features(pool, layer, dev_rows))]
            pred_test = NLI_LABELS[probe.predict(hand_features(test, layer, slice(None)))]
        y_dev = NLI_LABELS[codes[dev_rows]]
        assert got["dev_accuracy"] == pytest.approx(np.mean(pred_dev == y_dev), abs=1e-12)
        assert got["dev_macro_f1"] == pytest.approx(
            f1_score(y_dev, pred_dev, average="macro"), abs=1e-12
        )
        assert got["accuracy"] == pytest.approx(np.mean(pred_test == y_test), abs=1e-12)
    assert set(table.measure) == {"accuracy", "macro_f1", "dev_accuracy", "dev_macro_f1"}
    assert measures(table, 1)["dev_accuracy"] > 0.6 > measures(table, 0)["dev_accuracy"]
    # The optional cap samples probe-train only; probe-dev keeps all its items.
    capped = run_probes("nli", pool, test, POINT, {**FAST, "max_train_items": 40}, dev_ids=dev_ids)
    kept = train_rows[sample_item_indices([ids[i] for i in train_rows], 40, seed=0)]
    with threadpool_limits(1):
        probe = LinearProbe().fit(hand_features(pool, 1, kept), codes[kept])
        pred_dev = probe.predict(hand_features(pool, 1, dev_rows))
    assert measures(capped, 1)["dev_accuracy"] == pytest.approx(
        np.mean(pred_dev == codes[dev_rows]), abs=1e-12
    )
    with pytest.raises(FinescopeError, match="dev_ids"):
        run_probes("nli", pool, test, POINT, FAST, dev_ids=["not-an-item"])


def test_dev_labels_never_reach_the_fit(tmp_path):
    # Dev items get adversarial labels (the planted class shifted by one). If they were fitted
    # on, test scores and the online code would move; they must equal those of a pool from
    # which the dev items were dropped altogether.
    views, codes = nli_arrays(150, 2, 1, seed=4)
    ids = [f"pool-{i:04d}" for i in range(150)]
    dev = np.arange(150) % 3 == 0
    adversarial = np.where(dev, (codes + 1) % 3, codes)
    pool = write_cache(tmp_path / "pool", "nli", views, ids, NLI_LABELS[adversarial].tolist())
    kept = {v: a[:, ~dev] for v, a in views.items()}
    dropped = write_cache(
        tmp_path / "dropped", "nli", kept, [i for i, d in zip(ids, dev, strict=True) if not d],
        NLI_LABELS[codes[~dev]].tolist(),
    )  # fmt: skip
    test, _ = nli_cache(tmp_path / "test", 90, 2, 1, seed=5)
    settings = {**FAST, "mdl": True}
    dev_ids = [i for i, d in zip(ids, dev, strict=True) if d]
    with_dev = run_probes("nli", pool, test, POINT, settings, dev_ids=dev_ids)
    without = run_probes("nli", dropped, test, POINT, settings)
    same = with_dev[~with_dev.measure.str.startswith("dev_")].reset_index(drop=True)
    pd.testing.assert_frame_equal(same, without)
    # The adversarial labels are really there: the dev score collapses at the signal layer.
    assert measures(with_dev, 1)["dev_accuracy"] < 0.3 < measures(with_dev, 1)["accuracy"]
    # And the comparison has power: fitting on them moves the online code.
    leaked = run_probes("nli", pool, test, POINT, settings)
    assert measures(leaked, 1)["codelength"] != measures(without, 1)["codelength"]


def test_C_list_is_chosen_per_layer_on_dev_macro_f1(tmp_path):
    # Weak signal among many noise dims: the regularisation strength matters.
    rng = np.random.default_rng(6)
    n, n_layers, width = 150, 2, 24
    codes = rng.integers(0, 3, n)
    views = {v: rng.normal(size=(n_layers, n, width)) for v in ("premise", "hypothesis")}
    views["premise"][1] = planted(codes, width, rng, strength=0.8)
    ids = [f"pool-{i:04d}" for i in range(n)]
    pool = write_cache(tmp_path / "pool", "nli", views, ids, NLI_LABELS[codes].tolist())
    test, _ = nli_cache(tmp_path / "test", 60, n_layers, 1, seed=7, width=width)
    dev_rows = np.arange(0, n, 3)
    train_rows = np.setdiff1d(np.arange(n), dev_rows)
    grid = [10.0, 1e-3, 0.01, 1.0]  # unsorted on purpose
    settings = {**FAST, "linear": {"C": grid}}
    table = run_probes("nli", pool, test, POINT, settings, dev_ids=[ids[i] for i in dev_rows])
    spread = []
    for layer in range(n_layers):
        X_tr, X_dev = (hand_features(pool, layer, r) for r in (train_rows, dev_rows))
        dev_f1 = {}
        with threadpool_limits(1):
            for C in sorted(grid):
                pred = LinearProbe(C).fit(X_tr, codes[train_rows]).predict(X_dev)
                dev_f1[C] = f1_score(codes[dev_rows], pred, average="macro")
            best = max(dev_f1.values())
            chosen = min(C for C, f1 in dev_f1.items() if f1 == best)
            probe = LinearProbe(chosen).fit(X_tr, codes[train_rows])
            pred_test = NLI_LABELS[probe.predict(hand_features(test, layer, slice(None)))]
        got = measures(table, layer)
        assert got["chosen_C"] == chosen
        assert got["dev_macro_f1"] == pytest.approx(best, abs=1e-12)
        y_test = np.asarray(open_cache(test).labels)
        assert got["accuracy"] == pytest.approx(np.mean(pred_test == y_test), abs=1e-12)
        spread.append(max(dev_f1.values()) - min(dev_f1.values()))
    assert max(spread) > 0.05  # the choice was a real one
    # A single number keeps working, with no chosen_C row.
    single = run_probes("nli", pool, test, POINT, FAST, dev_ids=[ids[i] for i in dev_rows])
    assert "chosen_C" not in set(single.measure)
    # A list needs probe-dev items.
    with pytest.raises(FinescopeError, match=r"probe\.linear\.C.*probe-dev"):
        run_probes("nli", pool, test, POINT, settings)
    # SVM too.
    svm = {**FAST, "probes": ["svm"], "svm": {"C": [0.1, 10.0]}}
    table = run_probes("nli", pool, test, POINT, svm, dev_ids=[ids[i] for i in dev_rows])
    assert set(table[table.measure == "chosen_C"].value) <= {0.1, 10.0}


def test_C_ties_go_to_the_smaller_C(tmp_path):
    # One-hot label features: every C separates dev perfectly, so all tie at macro-F1 1.
    codes = np.arange(60) % 3
    X = np.zeros((1, 60, 3))
    X[0, np.arange(60), codes] = 1.0
    ids = [f"i{k}" for k in range(60)]
    views = {"premise": X, "hypothesis": X}
    pool = write_cache(tmp_path / "pool", "nli", views, ids, NLI_LABELS[codes].tolist())
    test = write_cache(tmp_path / "test", "nli", views, ids, NLI_LABELS[codes].tolist())
    settings = {**FAST, "linear": {"C": [100.0, 1.0, 10.0]}}
    got = measures(run_probes("nli", pool, test, POINT, settings, dev_ids=ids[:15]), 0)
    assert got["chosen_C"] == 1.0 and got["dev_macro_f1"] == 1.0


def pair_cache(path: Path, n: int, seed: int, signal_view: str = "cls", **meta) -> Path:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 3, n)
    views = {v: rng.normal(size=(2, n, 6)) for v in ("cls", "premise", "hypothesis")}
    views[signal_view][1] = planted(codes, 6, rng, strength=5.0)
    ids = [f"{path.name}-{i:04d}" for i in range(n)]
    return write_cache(path, "nli", views, ids, NLI_LABELS[codes].tolist(), **meta)


def test_features_column_and_matrices_for_each_cache_layout(tmp_path):
    pair = {"nli_view": "pair"}
    train = pair_cache(tmp_path / "train", 150, 0, **pair)
    test = pair_cache(tmp_path / "test", 90, 1, **pair)

    def features(settings, tr=train, te=test):
        table = run_probes("nli", tr, te, POINT, {**FAST, **settings})
        assert table.features.nunique() == 1
        return table.features.iloc[0], layer_values(table, "linear", "accuracy")

    name, acc = features({})
    assert name == "cls+premise+hypothesis" and acc[1] > 0.95
    name, acc = features({"nli_features": "cls"})
    assert name == "cls" and acc[1] > 0.95
    # The signal sits in the cls view only: the segments alone are at chance.
    name, acc = features({"nli_features": "segments", "nli_interactions": True})
    assert name == "premise+hypothesis+|u-v|+u*v" and acc[1] < 0.5
    name, _ = features({"nli_features": "cls", "nli_interactions": True})
    assert name == "cls+|u-v|+u*v"
    # Separate caches (nli_view absent or "separate"): auto = the segments.
    sep_tr, _ = nli_cache(tmp_path / "sep_tr", 60, 2, 1, seed=2)
    sep_te = pair_cache(tmp_path / "sep_te", 30, 3, nli_view="separate")
    assert features({}, sep_tr, sep_tr)[0] == "premise+hypothesis"
    with pytest.raises(FinescopeError, match="nli_features.*cls"):
        features({"nli_features": "cls_segments"}, sep_tr, sep_tr)
    with pytest.raises(FinescopeError, match="nli_view differs"):
        features({"nli_features": "segments"}, train, sep_te)

    # The matrices: views side by side in order; interactions of premise u and hypothesis v.
    cache, rows = open_cache(train), np.array([5, 0, 17])
    spec = resolve_features("nli", cache.meta, {"nli_features": "cls_segments"})
    X = layer_features(cache, 1, rows, spec)
    cls, u, v = (
        np.asarray(cache.layer(view, 1)[rows]) for view in ("cls", "premise", "hypothesis")
    )
    np.testing.assert_array_equal(X, np.concatenate([cls, u, v], axis=1))
    spec = resolve_features(
        "nli", cache.meta, {"nli_features": "segments", "nli_interactions": True}
    )
    X = layer_features(cache, 1, rows, spec)
    np.testing.assert_array_equal(X, np.concatenate([u, v, np.abs(u - v), u * v], axis=1))
    assert X.shape == (3, 4 * 6) and X.dtype == np.float32

    # NER: the word view, named with the cache's sub-word pooling (mean where unrecorded).
    assert resolve_features("ner", {"ner_pooling": "last"}).name == "word:last"
    assert resolve_features("ner", {}).name == "word:mean"
    ner_tr, ner_te = ner_pair(tmp_path / "ner")
    for path in (ner_tr, ner_te):
        meta = json.loads((path / "meta.json").read_text())
        (path / "meta.json").write_text(json.dumps({**meta, "ner_pooling": "first"}))
    ner = run_probes("ner", ner_tr, ner_te, {**POINT, "task": "ner"}, FAST)
    assert set(ner.features) == {"word:first"}


def test_hypothesis_type_rule():
    assert hypothesis_type("A man is sleeping.") == "man"
    assert hypothesis_type("The IL-2 gene is expressed") == "il"
    assert hypothesis_type("  THERE are DOGS' toys") == "dogs"
    assert hypothesis_type("It is not.") == "it"  # all stop words: the first word
    assert hypothesis_type("42 !") == "42"  # no letters: the first whitespace word
    assert hypothesis_type("") == ""
    assert {"a", "the", "is", "not", "there"} <= STOP_WORDS and "man" not in STOP_WORDS


def lexical_caches(tmp_path, planted_keys: bool, n_pool=540, n_test=240, n_types=30):
    """NLI caches whose hypothesis view is the one-hot hypothesis type (``planted_keys``) or
    noise; the task labels are unrelated to it."""
    rng = np.random.default_rng(8)

    def cache(name, n):
        types = rng.integers(0, n_types, n)
        X = rng.normal(size=(1, n, n_types))
        if planted_keys:
            X = 0.1 * X
            X[0, np.arange(n), types] += 1.0
        views = {"premise": rng.normal(size=(1, n, n_types)), "hypothesis": X}
        ids = [f"{name}{i}" for i in range(n)]
        hyps = {i: f"The thing{_letters(t)} runs" for i, t in zip(ids, types, strict=True)}
        return ids, hyps, views, NLI_LABELS[rng.integers(0, 3, n)].tolist()

    out = []
    for name, n in (("pool", n_pool), ("test", n_test)):
        ids, hyps, views, labels = cache(name, n)
        out.append((write_cache(tmp_path / name, "nli", views, ids, labels), ids, hyps))
    return out


def test_lexical_control_pays_off_only_where_the_features_encode_the_key(tmp_path):
    settings = {**FAST, "selectivity": True, "linear": {"C": 10.0}}
    results = {}
    for planted_keys in (True, False):
        (pool, ids, hyp_pool), (test, _, hyp_test) = lexical_caches(
            tmp_path / str(planted_keys), planted_keys
        )
        table = run_probes(
            "nli", pool, test, POINT, settings, dev_ids=ids[:120],
            probe_hypotheses=hyp_pool, test_hypotheses=hyp_test,
        )  # fmt: skip
        results[planted_keys] = measures(table, 0)
        # Chance for a probe that cannot see the key: the majority control label's share.
        keys = [hypothesis_type(h) for h in hyp_test.values()]
        train_labels = np.asarray(open_cache(pool).labels)[120:]
        control = selectivity_control_labels(keys, train_labels, 0)
        results[planted_keys]["majority"] = np.unique(control, return_counts=True)[1].max() / len(
            control
        )
    memorised, noise = results[True], results[False]
    # Same key, same control label in probe-train, probe-dev and test: memorising pays.
    assert memorised["control_accuracy"] > 0.9 and memorised["dev_control_accuracy"] > 0.9
    assert noise["control_accuracy"] < noise["majority"] + 0.05
    assert noise["dev_control_accuracy"] < 0.6
    assert memorised["control_coverage"] == noise["control_coverage"] == 1.0
    assert memorised["dev_control_coverage"] == 1.0


def test_control_labels_are_the_same_across_splits():
    pool = NLI_LABELS[np.arange(30) % 3]
    train_keys = ["man", "dog", "woman", "man", "child"]
    test_keys = ["child", "man", "cat", "dog"]
    a = dict(zip(train_keys, selectivity_control_labels(train_keys, pool, 5), strict=True))
    b = dict(zip(test_keys, selectivity_control_labels(test_keys, pool, 5), strict=True))
    assert all(a[k] == b[k] for k in set(a) & set(b))


def test_control_coverage_on_a_hand_example(tmp_path):
    X = np.random.default_rng(0).normal(size=(1, 6, 2))
    views = {"premise": X, "hypothesis": X}
    pool_ids = [f"p{i}" for i in range(6)]
    labels = NLI_LABELS[np.arange(6) % 3].tolist()
    pool = write_cache(tmp_path / "pool", "nli", views, pool_ids, labels)
    test_ids = [f"t{i}" for i in range(4)]
    test = write_cache(tmp_path / "test", "nli", {k: v[:, :4] for k, v in views.items()},
                       test_ids, labels[:4])  # fmt: skip
    # Probe-train types: man, dog, woman, sky; dev items p4, p5 (cat, tree) are not probe-train.
    pool_h = ["A man sleeps", "The dog runs", "a woman", "the sky is blue", "A cat", "Tree"]
    # Test types: man (seen), cat (dev only: not seen), dogs (not dog), sky (seen): 2 / 4.
    test_h = ["The man sits", "A cat purrs", "Dogs bark", "There is the sky"]
    table = run_probes(
        "nli", pool, test, POINT, {**FAST, "selectivity": True}, dev_ids=["p4", "p5"],
        probe_hypotheses=dict(zip(pool_ids, pool_h, strict=True)), test_hypotheses=test_h,
    )  # fmt: skip
    got = measures(table, 0)
    assert got["control_coverage"] == 0.5 and got["dev_control_coverage"] == 0.0


def test_ner_entity_measures_by_hand():
    y = ["O", "O", "DNA", "DNA", "RNA"]
    pred = ["O", "DNA", "DNA", "O", "RNA"]
    got = score_predictions("ner", y, pred)
    # F1 per class: O 1/2 (1 hit, 1 false alarm, 1 miss), DNA 1/2, RNA 1.
    assert got == pytest.approx({"accuracy": 3 / 5, "macro_f1": 2 / 3, "entity_accuracy": 2 / 3})
    assert set(score_predictions("nli", y, pred)) == {"accuracy", "macro_f1"}

    from finescope.probe.features import _Split

    split = _Split(
        rows=np.arange(5), labels=np.asarray(y), groups=np.zeros(5), keys=None,
        control=np.asarray(["a", "b", "a", "b", "a"]),
    )  # fmt: skip
    ctrl = control_scores("ner", split, got, np.asarray(["a"] * 5))
    # Control: accuracy 3/5; F1 a = 2 * 0.6 * 1 / 1.6 = 0.75, b = 0 -> 0.375; entity words
    # (gold not O: rows 2, 3, 4) control a, b, a -> 2 / 3.
    assert ctrl == pytest.approx(
        {
            "control_accuracy": 3 / 5,
            "selectivity": 0.0,
            "control_macro_f1": 0.375,
            "selectivity_macro_f1": 2 / 3 - 0.375,
            "control_entity_accuracy": 2 / 3,
            "selectivity_entity": 0.0,
        }
    )


def test_ner_selectivity_on_macro_f1_and_entity_words_matches_hand_computation(tmp_path):
    # Features = one-hot of the merged tag: the task probe is perfect. The control labels are
    # random per word type, which the features do not encode, so the control probe predicts
    # for each tag its most frequent control label in training (as in the NLI hand check).
    rng = np.random.default_rng(11)
    tags = np.array(["O", "B-DNA", "I-DNA", "B-RNA"])
    merged_codes = {"O": 0, "DNA": 1, "RNA": 2}
    seed = 4

    def ner(path, n_words, tag_p):
        t = rng.choice(4, n_words, p=tag_p)
        words = [f"w{k}" for k in rng.integers(0, 40, n_words)]
        merged = [merge_ner_tag(tag) for tag in tags[t]]
        X = np.eye(3)[[merged_codes[m] for m in merged]][None]
        ids = [f"{path.name}{i}" for i in range(n_words // 5)]
        word_item = [i // 5 for i in range(n_words)]
        write_cache(path, "ner", {"word": X}, ids, tags[t].tolist(), word_item, words)
        return np.asarray(merged), np.asarray([w.lower() for w in words])

    y_tr, w_tr = ner(tmp_path / "train", 400, [0.7, 0.1, 0.1, 0.1])
    y_te, w_te = ner(tmp_path / "test", 200, [0.7, 0.1, 0.1, 0.1])
    ctrl_tr = selectivity_control_labels(w_tr, y_tr, seed)
    ctrl_te = selectivity_control_labels(w_te, y_tr, seed)
    majority = {}
    for tag in merged_codes:
        labels, counts = np.unique(ctrl_tr[y_tr == tag], return_counts=True)
        top = np.sort(counts)[::-1]
        assert len(top) == 1 or top[0] > top[1] + 1, "pick a seed without near ties"
        majority[tag] = labels[np.argmax(counts)]
    pred = np.asarray([majority[tag] for tag in y_te])
    entity = y_te != "O"
    hand_acc = np.mean(pred == ctrl_te)
    hand_f1 = f1_score(ctrl_te, pred, average="macro", zero_division=0)
    hand_entity = np.mean(pred[entity] == ctrl_te[entity])
    settings = {**FAST, "selectivity": True, "seed": seed, "linear": {"C": 1e4}}
    table = run_probes("ner", tmp_path / "train", tmp_path / "test", {**POINT, "task": "ner"},
                       settings)  # fmt: skip
    got = measures(table, 0)
    assert got["accuracy"] == got["macro_f1"] == got["entity_accuracy"] == 1.0
    assert got["control_accuracy"] == pytest.approx(hand_acc, abs=1e-12)
    assert got["control_macro_f1"] == pytest.approx(hand_f1, abs=1e-12)
    assert got["control_entity_accuracy"] == pytest.approx(hand_entity, abs=1e-12)
    assert got["selectivity_macro_f1"] == pytest.approx(1 - hand_f1, abs=1e-12)
    assert got["selectivity_entity"] == pytest.approx(1 - hand_entity, abs=1e-12)
    # The three selectivities really differ here: accuracy selectivity hides the entity words.
    assert len({round(got[m], 6) for m in ("selectivity", "selectivity_macro_f1",
                                             "selectivity_entity")}) == 3  # fmt: skip
