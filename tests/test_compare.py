"""Change measures: attention maps (fast vs reference), CKA properties, the long-form table."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from benchmarks.references import reference_attention_measures
from finescope.cache import Cache
from finescope.compare import (
    ATTENTION_MEASURES,
    COLUMNS,
    attention_measures,
    cka_views,
    debiased_cka,
    linear_cka,
    run_compare,
)
from finescope.errors import FinescopeError
from finescope.extract import run_extract
from finescope.io import write_csv
from finescope.models import load_tokenizer

POINT = {"task": "nli", "model": "tiny", "fraction": 50, "seed": 1}
PAIRS = [
    ("IL-2 binds the receptor .", "IL-2 does not bind the receptor ."),
    ("Patients received 5 mg .", "Patients were treated in the study ."),
    ("The protein binds DNA .", "No evidence of kinase activation was found ."),
    ("mRNA levels increased .", "The receptor was decreased after treatment ."),
    ("T cells express IL-2 .", "B cells ."),
]
ITEMS = [
    {"id": f"n{i}", "premise": p, "hypothesis": h, "label": "entailment"}
    for i, (p, h) in enumerate(PAIRS * 2)
]


def _perturbed_copy(model_dir, folder, scale=0.2):
    """The same model with noise on every weight, saved like a fine-tuned model."""
    model = transformers.AutoModel.from_pretrained(str(model_dir))
    torch.manual_seed(7)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * scale)
    model.save_pretrained(folder)
    for file in model_dir.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy(file, folder / file.name)
    return folder


@pytest.fixture(
    scope="module", params=[("bert", "pair"), ("gpt2", "pair"), ("bert", "separate")], ids="-".join
)
def cache_pair(request, tmp_path_factory):
    """Pre-trained and perturbed caches (NLI, float32, attention for 4 items), padded batches."""
    arch, view = request.param
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    root = tmp_path_factory.mktemp(f"pair_{arch}_{view}")
    ft_dir = _perturbed_copy(model_dir, root / "ft_model")
    settings = {"dtype": "float32", "attention_items": 4, "batch_size": 3, "nli_view": view}
    run_extract("nli", model_dir, ITEMS, root / "pre", settings)
    run_extract("nli", ft_dir, ITEMS, root / "ft", settings)
    return root / "pre", root / "ft"


def _random_maps(rng, heads, t, causal):
    maps = rng.dirichlet(np.ones(t), size=(heads, t))
    if causal:
        maps = np.tril(maps)
        maps /= maps.sum(-1, keepdims=True)
    return maps


@pytest.mark.parametrize("causal", [False, True])
def test_fast_attention_measures_match_reference_on_random_maps(causal):
    rng = np.random.default_rng(0)
    for t in (1, 2, 7):
        a, b = _random_maps(rng, 3, t, causal), _random_maps(rng, 3, t, causal)
        fast, slow = attention_measures(a, b), reference_attention_measures(a, b)
        for name in ATTENTION_MEASURES:
            np.testing.assert_allclose(fast[name], slow[name], atol=1e-10)
        assert np.all(fast["attention_js"] >= 0) and np.all(fast["attention_js"] <= np.log(2))


def test_js_reaches_ln2_for_disjoint_rows():
    a = np.array([[[1.0, 0.0], [1.0, 0.0]]])
    b = np.array([[[0.0, 1.0], [0.0, 1.0]]])
    out = attention_measures(a, b)
    np.testing.assert_allclose(out["attention_js"], [np.log(2)])
    np.testing.assert_allclose(out["attention_cosine"], [0.0])


def test_fast_attention_measures_match_reference_on_models(cache_pair):
    pre, ft = Cache(cache_pair[0]), Cache(cache_pair[1])
    for k in range(pre.n_attention):
        a, b = pre.attention(k), ft.attention(k)
        fast = attention_measures(a, b)  # all blocks at once: (L, H)
        for block in range(a.shape[0]):
            slow = reference_attention_measures(a[block], b[block])
            for name in ATTENTION_MEASURES:
                np.testing.assert_allclose(fast[name][block], slow[name], atol=1e-5)


def test_padded_and_unpadded_caches_give_the_same_change(cache_pair, tmp_path):
    """The pair fixture pads (batch_size 3); without padding the table is the same."""
    padded = run_compare(*cache_pair, POINT, {})
    for folder, name in zip(cache_pair, ("pre", "ft"), strict=True):
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["forward_passes"] < 2 * len(ITEMS)
        run_extract(
            "nli",
            meta["model_dir"],
            ITEMS,
            tmp_path / name,
            {"dtype": "float32", "attention_items": 4, "batch_size": 1}
            | {"nli_view": meta["nli_view"]},
        )
    unpadded = run_compare(tmp_path / "pre", tmp_path / "ft", POINT, {})
    np.testing.assert_allclose(padded["value"], unpadded["value"], atol=1e-4)


def test_identical_models_show_no_change(cache_pair):
    frame = run_compare(cache_pair[0], cache_pair[0], POINT, {})
    value = frame.groupby("measure")["value"]
    np.testing.assert_allclose(value.min()["attention_cosine"], 1.0, atol=1e-6)
    np.testing.assert_allclose(value.max()["attention_js"], 0.0, atol=1e-9)
    np.testing.assert_allclose(frame.query("measure == 'attention_entropy_change'")["value"], 0.0)
    cka = frame[frame["measure"].str.startswith("cka")]
    meta = Cache(cache_pair[0]).meta
    if meta["nli_view"] == "pair" and not meta["decoder"]:
        # An encoder's layer-0 [CLS] vector is the same embedding for every item: undefined.
        assert cka.query("layer == 0")["value"].isna().all()
        cka = cka.query("layer > 0")
    np.testing.assert_allclose(cka["value"], 1.0, atol=1e-9)


def test_run_compare_rows_and_columns(cache_pair):
    frame = run_compare(*cache_pair, POINT, {"cka_max_items": 12})
    assert list(frame.columns) == COLUMNS
    n_layers, n_blocks, n_heads = 3, 2, 2
    assert len(frame) == n_blocks * (n_heads + 1) * 3 + n_layers * 2
    assert set(frame["measure"]) == {*ATTENTION_MEASURES, "cka", "cka_debiased"}
    attention = frame[frame["measure"].str.startswith("attention")]
    assert set(attention["layer"]) == {1, 2}
    assert set(attention["head"]) == {"0", "1", "all"}
    assert set(frame.query("measure == 'cka'")["layer"]) == {0, 1, 2}
    assert frame[["task", "model", "fraction", "seed"]].drop_duplicates().values.tolist() == [
        ["nli", "tiny", 50, 1]
    ]
    for name in ATTENTION_MEASURES:
        part = attention[attention["measure"] == name]
        for layer in (1, 2):
            heads = part[(part["layer"] == layer) & (part["head"] != "all")]["value"]
            overall = part[(part["layer"] == layer) & (part["head"] == "all")]["value"]
            np.testing.assert_allclose(overall.item(), heads.mean())
    changed = frame.query("measure == 'attention_cosine'")["value"]
    assert changed.max() <= 1 + 1e-9 and changed.min() < 0.99
    no_debiased = run_compare(*cache_pair, POINT, {"debiased_cka": False, "attention": False})
    assert set(no_debiased["measure"]) == {"cka"}


def test_mismatched_caches_are_refused(cache_pair, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(cache_pair[1], other)
    meta = json.loads((other / "meta.json").read_text())
    meta["ids"][0] = "different"
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FinescopeError, match="different items"):
        run_compare(cache_pair[0], other, POINT, {})
    meta["ids"][0] = "n0"
    lengths = meta["attention"]["lengths"]
    assert lengths[0] != lengths[1]
    lengths[0], lengths[1] = lengths[1], lengths[0]  # same file size, other sequences
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FinescopeError, match="different attention sequences"):
        run_compare(cache_pair[0], other, POINT, {})


def test_cka_of_identical_representations_is_one():
    x = np.random.default_rng(0).normal(size=(300, 20))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert debiased_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_rotation_and_scaling():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 16))
    y = x @ rng.normal(size=(16, 12)) + 0.5 * rng.normal(size=(400, 12))
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    y_rotated = 3.7 * (y @ q) + 5.0  # rotation, isotropic scaling and a shift
    for cka in (linear_cka, debiased_cka):
        base = cka(x, y)
        assert 0.2 < base < 1.0
        assert cka(x, y_rotated) == pytest.approx(base, abs=1e-10)
        assert cka(y_rotated, x) == pytest.approx(base, abs=1e-10)


def test_linear_cka_matches_the_kernel_formula():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(50, 8)), rng.normal(size=(50, 5))
    h = np.eye(50) - 1.0 / 50
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    expected = np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_))
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-10)
    # chunked accumulation over many rows gives the same value
    big_x, big_y = rng.normal(size=(20000, 4)), rng.normal(size=(20000, 3))
    big_y[:, 0] += big_x[:, 0]
    xc, yc = big_x - big_x.mean(0), big_y - big_y.mean(0)
    direct = np.linalg.norm(yc.T @ xc) ** 2 / (
        np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    )
    assert linear_cka(big_x, big_y) == pytest.approx(direct, rel=1e-10)


def test_debiased_cka_is_near_zero_for_independent_data():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(500, 50)), rng.normal(size=(500, 50))
    assert abs(debiased_cka(x, y)) < 0.05 < linear_cka(x, y)  # the biased one is inflated
    sampled = debiased_cka(x, x @ np.eye(50) * 2, max_items=100, seed=4)
    assert sampled == pytest.approx(1.0, abs=1e-12)


def test_cka_items_follow_the_nli_view(cache_pair):
    pre, ft = Cache(cache_pair[0]), Cache(cache_pair[1])
    pair = pre.nli_view == "pair"
    # Pair caches: one joint attention sequence per item; separate: premise and hypothesis.
    assert pre.n_attention == (4 if pair else 8)
    tokenizer = load_tokenizer(pre.meta["model_dir"])
    if pair:
        joint = tokenizer(ITEMS[0]["premise"], ITEMS[0]["hypothesis"])["input_ids"]
        extra = 1 if pre.meta["pair_separator"] else 0
        assert pre.meta["attention"]["lengths"][0] == len(joint) + extra
    frame = run_compare(*cache_pair, POINT, {"attention": False, "debiased_cka": False})
    for layer in range(pre.n_layers):
        views = ["cls"] if pair else ["premise", "hypothesis"]
        assert cka_views(pre) == views
        X = np.concatenate([pre.layer(v, layer) for v in views])
        Y = np.concatenate([ft.layer(v, layer) for v in views])
        assert X.shape[0] == (1 if pair else 2) * len(ITEMS)
        got = frame.query(f"layer == {layer}")["value"].item()
        np.testing.assert_allclose(got, linear_cka(X, Y), equal_nan=True)


def test_caches_of_different_nli_views_are_refused(tiny_bert_dir, tmp_path):
    run_extract("nli", tiny_bert_dir, ITEMS, tmp_path / "pair", {"nli_view": "pair"})
    run_extract("nli", tiny_bert_dir, ITEMS, tmp_path / "sep", {"nli_view": "separate"})
    with pytest.raises(FinescopeError, match="differ in extract setting nli_view"):
        run_compare(tmp_path / "pair", tmp_path / "sep", POINT, {})


# Modules of the `models` extra: a job of envs/analysis.yaml must run without them.
BLOCK_MODELS_EXTRA = """
import importlib.abc, sys
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'torch', 'transformers', 'peft', 'accelerate', 'torchcrf'}:
            raise ModuleNotFoundError(f'No module named {name!r} (blocked)')
sys.meta_path.insert(0, NotInstalled())
"""


def test_compare_job_runs_without_torch_or_transformers(cache_pair, tmp_path):
    """The compare rule runs in envs/analysis.yaml (no torch): its job, log plumbing included,
    gives the same table when torch and transformers cannot be imported."""
    out = tmp_path / "compare.csv"
    script = BLOCK_MODELS_EXTRA + (
        "from finescope import job\n"
        "from finescope.compare import compare_job\n"
        f"with job.logged({str(tmp_path / 'job.log')!r}, threads=1):\n"
        f"    compare_job({str(cache_pair[0])!r}, {str(cache_pair[1])!r}, {POINT!r}, "
        f"{{'cka_max_items': 12}}, {str(out)!r})\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=600)
    expected = tmp_path / "expected.csv"
    write_csv(run_compare(*cache_pair, POINT, {"cka_max_items": 12}), expected)
    assert out.read_text() == expected.read_text()


def test_analysis_environment_leaves_out_the_models_extra():
    """envs/analysis.yaml and finescope's own dependencies name no package of `models`; the
    modules behind the analysis-environment rules import without them."""
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extra = {req.split("==")[0] for req in project["optional-dependencies"]["models"]}
    assert {"torch", "transformers"} <= extra
    core = {req.split("==")[0] for req in project["dependencies"]}
    assert not core & extra
    env = (root / "envs" / "analysis.yaml").read_text()
    assert not [name for name in extra if f"- {name}==" in env]
    modules = "data subsample compare analysis figures summary cache job job_warnings tracking"
    script = BLOCK_MODELS_EXTRA + "".join(f"import finescope.{m}\n" for m in modules.split())
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
