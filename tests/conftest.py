"""Shared fixtures: tiny randomly initialised models (offline, seconds to build) and small data."""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import ByteLevelBPETokenizer  # noqa: E402

from finescope.models import materialize_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

WORDS = (
    "the a of in and to is was not no with by on for that cells cell protein gene DNA RNA "
    "binds expression activation receptor factor human T B IL-2 NF-kappa kinase line mRNA "
    "patients dose mg increased decreased levels treatment evidence study shows"
).split()

CORPUS = [
    "IL-2 gene expression in human T cells requires NF-kappa B activation .",
    "The protein binds the DNA of the Jurkat cell line .",
    "Patients received a dose of 5 mg and levels increased .",
    "No evidence of kinase activation was found in B cells .",
    "mRNA of the receptor was decreased after treatment .",
] * 10


def _bert_vocab() -> list[str]:
    chars = list(string.ascii_letters + string.digits + string.punctuation)
    return (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + chars
        + [f"##{c}" for c in chars]
        + [w for w in WORDS if w not in chars]
    )


def _byte_bpe_tokenizer():
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        CORPUS, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def _save_raw(model, tokenizer, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with a WordPiece tokenizer, materialised like a real model."""
    root = tmp_path_factory.mktemp("tiny_bert")
    vocab = {token: i for i, token in enumerate(_bert_vocab())}
    tokenizer = transformers.BertTokenizerFast(vocab=vocab, do_lower_case=False)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    raw = _save_raw(transformers.BertModel(config), tokenizer, root / "raw")
    materialize_model(str(raw), root / "model")
    return root / "model"


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 (byte-level BPE, no pad token of its own), materialised."""
    root = tmp_path_factory.mktemp("tiny_gpt2")
    tokenizer = _byte_bpe_tokenizer()
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    raw = _save_raw(transformers.GPT2LMHeadModel(config), tokenizer, root / "raw")
    materialize_model(str(raw), root / "model")
    return root / "model"


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama-architecture decoder (like SmolLM2), materialised."""
    root = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = _byte_bpe_tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    raw = _save_raw(transformers.LlamaForCausalLM(config), tokenizer, root / "raw")
    materialize_model(str(raw), root / "model")
    return root / "model"


@pytest.fixture(params=["bert", "gpt2", "llama"])
def tiny_model_dir(request) -> Path:
    """Each tiny architecture in turn: WordPiece encoder, byte-level BPE decoder, Llama decoder."""
    return request.getfixturevalue(f"tiny_{request.param}_dir")


@pytest.fixture
def nli_items() -> list[dict]:
    pairs = [
        ("IL-2 binds the receptor .", "IL-2 binds the receptor .", "entailment"),
        ("IL-2 binds the receptor .", "IL-2 does not bind the receptor .", "contradiction"),
        ("IL-2 binds the receptor .", "IL-2 is expressed in B cells .", "neutral"),
        ("Patients received 5 mg .", "Patients received a dose .", "entailment"),
        ("Patients received 5 mg .", "Patients received 50 mg .", "contradiction"),
        ("Patients received 5 mg .", "Patients were treated in the study .", "neutral"),
    ]
    return [
        {"id": f"nli-{i}", "premise": p, "hypothesis": h, "label": label}
        for i, (p, h, label) in enumerate(pairs * 3)
    ]


@pytest.fixture
def ner_items() -> list[dict]:
    sentences = [
        (
            ["IL-2", "gene", "expression", "in", "T", "cells"],
            ["B-DNA", "I-DNA", "O", "O", "B-cell_type", "I-cell_type"],
        ),
        (
            ["The", "NF-kappa", "B", "protein", "binds"],
            ["O", "B-protein", "I-protein", "I-protein", "O"],
        ),
        (
            ["Jurkat", "cell", "line", "mRNA"],
            ["B-cell_line", "I-cell_line", "I-cell_line", "B-RNA"],
        ),
    ]
    return [
        {"id": f"ner-{i}", "tokens": tokens, "tags": tags}
        for i, (tokens, tags) in enumerate(sentences * 4)
    ]


@pytest.fixture
def shared_data() -> Path:
    """The real corpora beside the project; tests using it skip with the reason when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the project)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory):
    """The study's model kinds (cased BERT, BioBERT, GPT-2 with its real vocabulary, BioGPT,
    Llama, Qwen2), tiny, in an offline Hugging Face cache (``HF_HOME`` layout)."""
    from tests.hub_fixtures import build_hub_cache, corpus_texts, gpt2_vocab_files

    try:
        gpt2_vocab_files()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    pytest.importorskip("sacremoses", reason="BioGPT's tokenizer needs sacremoses")
    return build_hub_cache(tmp_path_factory.mktemp("hf_home"), [*CORPUS, *corpus_texts()])


@pytest.fixture
def offline_hub(hub_cache, monkeypatch):
    """:func:`hub_cache` as this process's Hugging Face cache (huggingface_hub reads the cache
    folder at call time from its constants; subprocesses get ``HF_HOME``)."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache.hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache
