"""The study's model kinds loaded by hub id from an offline Hugging Face cache: revisions,
exported folders that plain ``AutoTokenizer`` reads the same way, BioGPT's words in context,
decoder detection and missing tokenizer packages."""

from __future__ import annotations

import json
import sys

import pytest
import transformers
from safetensors.torch import load_file
from transformers.utils import import_utils

from finescope.errors import FinescopeError
from finescope.models import (
    TOKENIZER_PACKAGES,
    encode_words,
    load_tokenizer,
    materialize_model,
    word_index,
)
from finescope.models.loading import _missing_package_error

# repo id -> (model type, decoder)
KINDS = {
    "google-bert/bert-base-cased": ("bert", False),
    "dmis-lab/biobert-v1.1": ("bert", False),
    "openai-community/gpt2-medium": ("gpt2", True),
    "microsoft/biogpt": ("biogpt", True),
    "finescope-test/tiny-llama": ("llama", True),
    "finescope-test/tiny-qwen2": ("qwen2", True),
}
SENTENCE = "The 5' flanking region of the IL-2 gene binds NF-kappa B ."


@pytest.fixture(scope="module")
def materialized(hub_cache, tmp_path_factory):
    """Every kind materialised once by hub id: repo id -> (folder, facts)."""
    import huggingface_hub

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache.hub))
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        for repo_id in KINDS:
            folder = tmp_path_factory.mktemp("materialized") / "model"
            out[repo_id] = (folder, materialize_model(repo_id, folder, key="m"))
    return out


@pytest.mark.parametrize("repo_id", list(KINDS))
def test_hub_ids_materialise_from_the_offline_cache(materialized, hub_cache, repo_id):
    folder, facts = materialized[repo_id]
    assert (facts["model_type"], facts["decoder"]) == KINDS[repo_id]
    assert facts["revision"] == hub_cache.main(repo_id)
    assert json.loads((folder / "config.json").read_text())["pad_token_id"] is not None


@pytest.mark.parametrize("repo_id", list(KINDS))
def test_exported_folders_tokenise_alike_with_plain_autotokenizer(materialized, repo_id):
    folder, _ = materialized[repo_id]
    ours = load_tokenizer(folder)
    plain = transformers.AutoTokenizer.from_pretrained(folder)
    assert plain(SENTENCE)["input_ids"] == ours(SENTENCE)["input_ids"]
    words = SENTENCE.split()
    if ours.is_fast:
        assert (
            plain(words, is_split_into_words=True)["input_ids"]
            == ours(words, is_split_into_words=True)["input_ids"]
        )
    assert plain.pad_token_id == ours.pad_token_id is not None


def test_gpt2_keeps_its_real_vocabulary_and_word_initial_spaces(materialized, hub_cache):
    folder, _ = materialized["openai-community/gpt2-medium"]
    raw = transformers.AutoTokenizer.from_pretrained(
        hub_cache.snapshot("openai-community/gpt2-medium")
    )
    assert len(raw) == 50257 and raw.pad_token is None
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    backend = json.loads((folder / "tokenizer.json").read_text())
    assert settings["add_prefix_space"] is backend["pre_tokenizer"]["add_prefix_space"] is True
    plain = transformers.AutoTokenizer.from_pretrained(folder)
    # Pre-split words get the word-initial space of running text: "Ġgene", not "gene".
    assert plain.convert_ids_to_tokens(plain(["gene"], is_split_into_words=True)["input_ids"]) == [
        "Ġgene"
    ]


def test_a_pinned_revision_loads_that_commit_not_main(offline_hub, tmp_path):
    repo_id = "google-bert/bert-base-cased"
    old, main = offline_hub.commits[repo_id]
    pinned = materialize_model(repo_id, tmp_path / "old", revision=old, key="bert")
    latest = materialize_model(repo_id, tmp_path / "main", key="bert")
    assert (pinned["revision"], latest["revision"]) == (old, main)
    name = "bert.embeddings.word_embeddings.weight"
    snapshot = load_file(offline_hub.snapshot(repo_id, old) / "model.safetensors")[name]
    exported = load_file(tmp_path / "old" / "model.safetensors")
    key = next(k for k in exported if k.endswith("embeddings.word_embeddings.weight"))
    assert exported[key].equal(snapshot)
    assert not load_file(tmp_path / "main" / "model.safetensors")[key].equal(snapshot)


def test_revision_errors_name_the_key(offline_hub, tmp_path, tiny_bert_dir):
    with pytest.raises(FinescopeError, match=r"models\.bert\.revision .* hub ids only"):
        materialize_model(str(tiny_bert_dir), tmp_path / "a", revision="abc", key="bert")
    with pytest.raises(FinescopeError, match="hf download google-bert/bert-base-cased --revision"):
        materialize_model("google-bert/bert-base-cased", tmp_path / "b", revision="f" * 40)
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------------------------
# BioGPT: words tokenised in context


def _check_alignment(tokenizer, words, encoding, i):
    """Pieces are the sentence's own, every word has pieces, in order, that decode to it."""
    ids = encoding["input_ids"][i]
    word_ids = word_index(encoding, i)
    own = tokenizer.build_inputs_with_special_tokens(
        tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    )
    assert ids == own
    real = [w for w in word_ids if w is not None]
    assert real == sorted(real) and set(real) == set(range(len(words)))
    pieces = tokenizer.convert_ids_to_tokens(ids)
    text = tokenizer.tokenize(" ".join(words))
    for w, word in enumerate(words):
        mine = [text[t - word_ids.index(0)] for t, x in enumerate(word_ids) if x == w]
        assert "".join(tokenizer.convert_tokens_to_string(mine).split()) == word
    return pieces


def test_biogpt_tokenises_words_in_context(materialized):
    tokenizer = load_tokenizer(materialized["microsoft/biogpt"][0])
    assert not tokenizer.is_fast
    words = SENTENCE.split()
    enc = encode_words(tokenizer, [words])
    assert enc.n_word_by_word == 0
    _check_alignment(tokenizer, words, enc, 0)
    # Moses splits 5' differently in running text than alone: the alignment uses the former.
    word_ids = word_index(enc, 0)
    in_context = [enc["input_ids"][0][t] for t, w in enumerate(word_ids) if w == 1]
    alone = tokenizer(words[1], add_special_tokens=False)["input_ids"]
    assert in_context != alone
    # In running text Moses gives "5" and "&apos;"; alone it gives "5&apos;".
    moses = [p for token in ("5", "&apos;") for p in tokenizer.bpe(token).split()]
    assert tokenizer.convert_ids_to_tokens(in_context) == moses


def test_biogpt_falls_back_word_by_word_and_counts_it(materialized):
    tokenizer = load_tokenizer(materialized["microsoft/biogpt"][0])
    # A no-break space is a word for the data but whitespace for Moses: no mapping in context.
    odd = ["IL-2", "\u00a0", "binds"]
    enc = encode_words(tokenizer, [SENTENCE.split(), odd])
    assert enc.n_word_by_word == 1
    word_ids = word_index(enc, 1)
    per_word = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in odd]
    assert enc["input_ids"][1][1:] == [t for ids in per_word for t in ids]
    assert [w for w in word_ids if w is not None] == [
        w for w, ids in enumerate(per_word) for _ in ids
    ]


def test_biogpt_real_jnlpba_sentences_with_5_prime(materialized, shared_data):
    tokenizer = load_tokenizer(materialized["microsoft/biogpt"][0])
    sentences, words = [], []
    for line in (shared_data / "jnlpba" / "train.tsv").read_text().splitlines():
        if not line.strip():
            if any(w in ("5'", "3'") for w in words):
                sentences.append(words)
            words = []
            if len(sentences) == 40:
                break
        elif not line.startswith("-DOCSTART-"):
            words.append(line.split("\t")[0])
    assert len(sentences) == 40
    enc = encode_words(tokenizer, sentences)
    assert enc.n_word_by_word == 0
    differs = 0
    for i, words in enumerate(sentences):
        _check_alignment(tokenizer, words, enc, i)
        alone = [t for w in words for t in tokenizer(w, add_special_tokens=False)["input_ids"]]
        differs += alone != enc["input_ids"][i][1:]
    assert differs > 0  # the per-word tokenisation would have given other pieces


# --------------------------------------------------------------------------------------------
# Missing tokenizer packages


def test_missing_sacremoses_is_a_one_line_error(materialized, offline_hub, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sacremoses", None)  # import sacremoses now fails
    with pytest.raises(FinescopeError, match=r"'sacremoses'.*pip install sacremoses==0\.2\.0"):
        load_tokenizer(materialized["microsoft/biogpt"][0])
    with pytest.raises(FinescopeError, match=r"model 'biogpt' \(microsoft/biogpt\).*sacremoses"):
        materialize_model("microsoft/biogpt", tmp_path / "m", key="biogpt")


@pytest.mark.parametrize(
    ("error", "package"),
    [
        (import_utils.SENTENCEPIECE_IMPORT_ERROR.format("LlamaTokenizer"), "sentencepiece"),
        (import_utils.PROTOBUF_IMPORT_ERROR.format("T5Converter"), "protobuf"),
        (import_utils.SACREMOSES_IMPORT_ERROR.format("BioGptTokenizer"), "sacremoses"),
        (ModuleNotFoundError("No module named 'tiktoken'", name="tiktoken"), "tiktoken"),
        (ModuleNotFoundError("No module named 'google'", name="google"), "protobuf"),
    ],
)
def test_tokenizer_packages_are_named_with_their_install_command(error, package):
    exc = error if isinstance(error, ImportError) else ImportError(error)
    friendly = _missing_package_error("'m'", exc)
    assert f"{package!r}" in str(friendly) and TOKENIZER_PACKAGES[package] in str(friendly)
    assert _missing_package_error("'m'", ImportError("No module named 'torchvision'")) is None
