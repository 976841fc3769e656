"""The whole DAG through Snakemake on the study's model kinds (cased BERT, GPT-2 with its real
vocabulary, BioGPT, Llama), each loaded by hub id at a pinned revision from an offline Hugging
Face cache."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
import yaml

from finescope.io import read_jsonl
from finescope.models import encode_pairs, encode_words, load_tokenizer, word_index
from tests.workflow_utils import snakemake, tiny_config

pytestmark = pytest.mark.workflow

MODELS = {
    # name: (repo id, family, domain)
    "bert": ("google-bert/bert-base-cased", "encoder", "general"),
    "gpt2": ("openai-community/gpt2-medium", "decoder", "general"),
    "biogpt": ("microsoft/biogpt", "decoder", "biomedical"),
    "llama": ("finescope-test/tiny-llama", "decoder", "general"),
}


NLI_MODELS = ("bert", "gpt2", "biogpt")  # [CLS]; eos separator, pad == eos; own </s> separator


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory, hub_cache):
    """Every stage of NER for all four models, then NLI extraction and fine-tuning for three
    (the pair encoding and classification position), in the same folder."""
    workdir = tmp_path_factory.mktemp("hub_run")
    # bert is pinned to its older snapshot, not main: the run must load that one.
    revisions = {name: hub_cache.commits[repo][0] for name, (repo, _, _) in MODELS.items()}
    data = {"source": "synthetic", "train": 24, "dev": 9, "test": 12}
    env = {"HF_HOME": str(hub_cache.home), "HF_HUB_OFFLINE": "1"}
    configs = {}
    for task in ("ner", "nli"):
        config = tiny_config(
            workdir,
            {},
            tasks={task: {"data": dict(data)}},
            fractions=[0, 100],
            probe_pool={"size": 12},
            extract={
                "batch_size": 8,
                "max_length": 128,
                "attention_items": 2,
                "dtype": "float32",
                "keep": "all",  # the tests read the caches after the run
            },
            probe={"probes": ["linear"], "mdl": False, "random_baseline": False},
            analysis={"n_boot": 20},
        )
        settings = yaml.safe_load(config.read_text())
        settings["finetune"]["max_length"] = 128
        settings["models"] = {
            name: {"ref": repo, "revision": revisions[name], "family": family, "domain": domain}
            for name, (repo, family, domain) in MODELS.items()
        }
        configs[task] = workdir / f"config_{task}.yaml"
        configs[task].write_text(yaml.safe_dump(settings, sort_keys=False))
    snakemake(workdir, "--cores", "2", "--configfile", str(configs["ner"]), env=env)
    nli_targets = [
        path
        for name in NLI_MODELS
        for path in (
            f"results/cache/nli/{name}/f0/s0/test",
            f"results/finetune/nli/{name}/f100/s1/model",
        )
    ]
    # Targets first: --configfile takes every value after it.
    snakemake(workdir, *nli_targets, "--cores", "2", "--configfile", str(configs["nli"]), env=env)
    return workdir, revisions


def test_the_pinned_revisions_are_recorded(hub_run):
    workdir, revisions = hub_run
    for name in MODELS:
        facts = json.loads((workdir / f"resources/models/{name}.json").read_text())
        assert facts["revision"] == revisions[name]
    measures = pd.read_parquet(workdir / "results/tables/measures.parquet")
    assert set(measures["model"]) == set(MODELS)
    recorded = measures.groupby("model")["model_revision"].unique().to_dict()
    assert {m: list(v) for m, v in recorded.items()} == {m: [r] for m, r in revisions.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_ner_caches_hold_one_vector_per_word(hub_run, name):
    workdir, _ = hub_run
    items = {str(i["id"]): i for i in read_jsonl(workdir / "results/data/ner/test.jsonl")}
    for point in ("f0/s0", "f100/s1"):  # pre-trained, fine-tuned
        cache = workdir / f"results/cache/ner/{name}/{point}/test"
        meta = json.loads((cache / "meta.json").read_text())
        assert meta["n_words_lost"] == meta["n_words_without_tokens"] == 0
        assert meta["n_sentences_word_by_word"] == 0
        words_of = {}
        for i, w, word in zip(meta["word_item"], meta["word_position"], meta["words"], strict=True):
            words_of.setdefault(i, []).append((w, word))
        for k, item_id in enumerate(meta["ids"]):
            assert words_of[k] == list(enumerate(items[item_id]["tokens"]))
        vectors = np.load(cache / "word.npy", mmap_mode="r")
        assert vectors.shape[1] == len(meta["words"]) == meta["n_rows"]


@pytest.mark.parametrize("name", NLI_MODELS)
def test_nli_cls_vector_is_read_where_the_head_reads(hub_run, name):
    workdir, _ = hub_run
    folder = workdir / f"resources/models/{name}"
    cache = workdir / f"results/cache/nli/{name}/f0/s0/test"
    meta = json.loads((cache / "meta.json").read_text())
    items = {str(i["id"]): i for i in read_jsonl(workdir / "results/data/nli/test.jsonl")}
    first = items[meta["ids"][0]]
    tokenizer = load_tokenizer(folder)
    decoder = MODELS[name][1] == "decoder"
    (pair,) = encode_pairs(
        tokenizer, [first["premise"]], [first["hypothesis"]], meta["max_length"], decoder=decoder,
        token_type_ids=True,
    )  # fmt: skip
    ids = pair.input_ids
    if decoder:  # the last token that is not the pad id, as *ForSequenceClassification reads
        expected = max(t for t, i in enumerate(ids) if i != tokenizer.pad_token_id)
    else:
        expected = 0
        assert ids[0] == tokenizer.cls_token_id
    assert pair.cls == expected
    model = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    inputs = {"input_ids": torch.tensor([ids])}
    if pair.token_type_ids is not None:
        inputs["token_type_ids"] = torch.tensor([pair.token_type_ids])
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    stored = np.load(cache / "cls.npy", mmap_mode="r")
    for layer in range(len(hidden)):
        np.testing.assert_allclose(stored[layer, 0], hidden[layer][0, expected], atol=1e-4)


@pytest.mark.parametrize("name", list(MODELS))
def test_exported_folders_tokenise_like_finescope(hub_run, name):
    workdir, _ = hub_run
    words = read_jsonl(workdir / "results/data/ner/test.jsonl")[0]["tokens"]
    text = " ".join(words)
    folders = [workdir / f"resources/models/{name}"]
    folders += [
        workdir / f"results/finetune/{task}/{name}/f100/s1/model"
        for task in ("ner", "nli")
        if task == "ner" or name in NLI_MODELS
    ]
    for folder in folders:
        ours = load_tokenizer(folder)
        plain = transformers.AutoTokenizer.from_pretrained(folder)
        assert plain(text)["input_ids"] == ours(text)["input_ids"], folder
        mine = encode_words(ours, [words])
        if ours.is_fast:
            theirs = plain([words], is_split_into_words=True)
            assert theirs["input_ids"] == mine["input_ids"], folder
            assert theirs.word_ids(0) == word_index(mine, 0)
        else:  # words in context: the pieces of the sentence itself
            assert mine["input_ids"][0] == plain(text)["input_ids"]
