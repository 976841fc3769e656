"""Fine-tuning: learning on toy tasks, exact resume after SIGKILL, determinism, decoder padding,
NER sub-word alignment, checkpoint validation, outputs."""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import finescope.finetune as ft
import finescope.finetune.batches as ft_batches
from finescope.errors import FinescopeError
from finescope.io import read_json, read_jsonl, write_json, write_jsonl
from finescope.metrics import ner_metrics, nli_metrics
from finescope.models import encode_pairs, encode_words, load_model, load_tokenizer, word_index

ROOT = Path(__file__).resolve().parents[1]

# Toy tasks that tiny random models learn in a few epochs: the NLI label is given by the last
# word of the hypothesis; NER tags follow word identity. No text contains an end-of-text token
# (the decoders pad with it).
FILLER = (
    "the a of in and to is was with by on for that cells protein binds expression receptor "
    "human patients dose levels treatment"
).split()
CUES = {"contradiction": "not", "entailment": "shows", "neutral": "study"}
ENTITIES = [(["kinase"], "protein"), (["DNA"], "DNA"), (["cell", "line"], "cell_line")]
SIZES = {"train": 48, "dev": 12, "test": 24}

# Fast, single-threaded (small matrices gain nothing from threads on a busy machine).
BASE = {"threads": 1, "warmup_ratio": 0.1, "select_on_dev": True}
SETTINGS = {
    ("nli", "bert"): BASE | {"learning_rate": 1e-3, "epochs": 12, "batch_size": 4},
    ("nli", "gpt2"): BASE | {"learning_rate": 3e-3, "epochs": 8, "batch_size": 8},
    ("nli", "llama"): BASE | {"learning_rate": 3e-3, "epochs": 8, "batch_size": 8},
    ("ner", "bert"): BASE | {"learning_rate": 3e-3, "epochs": 8, "batch_size": 8},
    ("ner", "gpt2"): BASE | {"learning_rate": 3e-3, "epochs": 8, "batch_size": 8},
    ("ner", "llama"): BASE | {"learning_rate": 3e-3, "epochs": 8, "batch_size": 8},
}
# Resume/determinism: dropout active, gradient accumulation, dev selection; 3 epochs x 6 steps.
RESUME = BASE | {
    "learning_rate": 3e-3,
    "epochs": 3,
    "batch_size": 4,
    "gradient_accumulation": 2,
    "checkpoint_every": 4,
    "seed": 3,
}
TIMING_KEYS = {"train_seconds", "examples_per_second", "resumed_from_step", "model_dir"}


def _nli_items(n: int, rng: random.Random, prefix: str) -> list[dict]:
    labels = sorted(CUES)
    items = []
    for i in range(n):
        label = labels[i % len(labels)]
        premise = " ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 7)))
        hypothesis = " ".join(rng.choice(FILLER) for _ in range(rng.randint(2, 5)))
        items.append(
            {
                "id": f"{prefix}{i}",
                "premise": premise,
                "hypothesis": f"{hypothesis} {CUES[label]}",
                "label": label,
            }
        )
    return items


def _ner_items(n: int, rng: random.Random, prefix: str) -> list[dict]:
    items = []
    for i in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(4, 9)):
            if rng.random() < 0.3:
                words, kind = rng.choice(ENTITIES)
                tokens += words
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
            else:
                tokens.append(rng.choice(FILLER))
                tags.append("O")
        items.append({"id": f"{prefix}{i}", "tokens": tokens, "tags": tags})
    return items


def _write_toy(task: str, root: Path) -> Path:
    rng = random.Random(0)
    make = _nli_items if task == "nli" else _ner_items
    for split, n in SIZES.items():
        write_jsonl(root / f"{split}.jsonl", make(n, rng, f"{split}-"))
    if task == "nli":
        write_json(root / "labels.json", {"task": "nli", "labels": sorted(CUES)})
    else:
        types = sorted({kind for _, kind in ENTITIES})
        labels = ["O"] + [f"{p}-{t}" for t in types for p in "BI"]
        write_json(root / "labels.json", {"task": "ner", "labels": labels, "entity_types": types})
    return root


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    return {
        task: _write_toy(task, tmp_path_factory.mktemp(f"toy_{task}")) for task in ("nli", "ner")
    }


def _train_ids(data_dir: Path) -> list[str]:
    return [item["id"] for item in read_jsonl(data_dir / "train.jsonl")]


def _majority_score(task: str, data_dir: Path) -> float:
    labels, train, _, test = ft.load_task_data(task, data_dir)
    if task == "nli":
        majority = Counter(item["label"] for item in train).most_common(1)[0][0]
        gold = [item["label"] for item in test]
        return nli_metrics(gold, [majority] * len(gold), labels)["score"]
    return ner_metrics([i["tags"] for i in test], [["O"] * len(i["tags"]) for i in test])["score"]


def _without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def _curve(path: Path) -> list[dict]:
    with path.open() as fh:
        return [
            {k: v for k, v in row.items() if k != "examples_per_second"}
            for row in csv.DictReader(fh)
        ]


# --------------------------------------------------------------------------------------------
# Learning and outputs


@pytest.mark.parametrize("task", ["nli", "ner"])
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_learns_toy_task_and_writes_outputs(task, arch, toy_data, request, tmp_path):
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    data = toy_data[task]
    settings = SETTINGS[(task, arch)] | {"checkpoint_every": 5}
    checkpoints = tmp_path / "ckpt"
    metrics = ft.run_finetune(
        task, model_dir, data, _train_ids(data), tmp_path / "out", checkpoints, settings
    )

    assert metrics["score"] >= _majority_score(task, data) + 0.3, metrics
    for key in (
        "task primary score train_items epochs steps train_seconds examples_per_second device "
        "compute_precision truncated_words"
    ).split():
        assert key in metrics
    contract = (
        {"accuracy", "macro_f1", "per_class", "confusion"}
        if task == "nli"
        else {"precision", "recall", "f1", "per_type", "token_accuracy"}
    )
    assert contract <= set(metrics)
    assert metrics["task"] == task and metrics["device"] == "cpu"
    assert metrics["compute_precision"] == "fp32"
    assert metrics["truncated_words"] == 0 and metrics["truncated_items"] == 0
    if task == "ner":
        assert 0.0 <= metrics["precision"] <= 1.0  # entity precision (contract key)
    assert read_json(tmp_path / "out" / "metrics.json") == json.loads(json.dumps(metrics))
    assert not checkpoints.exists()  # removed after success

    curve = list(csv.DictReader((tmp_path / "out" / "curve.csv").open()))
    assert list(curve[0]) == list(ft.CURVE_COLUMNS)
    assert len(curve) == metrics["steps"]
    assert sum(row["dev_score"] != "" for row in curve) == settings["epochs"]

    # The saved folder is an ordinary model: a base model for extraction, or the task model.
    saved = tmp_path / "out" / "model"
    labels = read_json(data / "labels.json")["labels"]
    base = load_model(saved, task, head=False)
    assert base.config.pad_token_id is not None
    model = load_model(saved, task, labels)
    tokenizer = load_tokenizer(saved)
    _, _, _, test = ft.load_task_data(task, data)
    again, predictions = ft.evaluate(model, tokenizer, task, test, labels, settings)
    assert again["score"] == pytest.approx(metrics["score"], abs=1e-12)
    assert len(predictions) == len(test)


@pytest.mark.parametrize(("task", "arch"), [("nli", "bert"), ("ner", "llama"), ("nli", "gpt2")])
def test_lora_trains_and_saves_a_merged_model(task, arch, toy_data, request, tmp_path):
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    data = toy_data[task]
    settings = SETTINGS[(task, arch)] | {
        "learning_rate": 1e-2,
        "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0},
    }
    metrics = ft.run_finetune(task, model_dir, data, _train_ids(data), tmp_path, None, settings)
    assert metrics["lora"] is True
    assert metrics["score"] >= _majority_score(task, data) + 0.3, metrics

    weights = load_file(tmp_path / "model" / "model.safetensors")
    assert not [k for k in weights if "lora" in k or "base_model" in k or "modules_to_save" in k]
    labels = read_json(data / "labels.json")["labels"]
    model = load_model(tmp_path / "model", task, labels)
    _, _, _, test = ft.load_task_data(task, data)
    again, _ = ft.evaluate(model, load_tokenizer(tmp_path / "model"), task, test, labels, settings)
    assert again["score"] == pytest.approx(metrics["score"], abs=1e-12)


def test_lora_leaves_only_adapters_and_head_trainable(tiny_bert_dir):
    model = load_model(tiny_bert_dir, "ner", ["O", "B-X", "I-X"], seed=0)
    wrapped = ft.apply_lora(model, "ner", {"r": 2, "alpha": 4, "dropout": 0.0})
    names = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "classifier" in n for n in names)
    assert any("classifier" in n for n in names)


def test_bf16_autocast_on_cpu(tiny_bert_dir, toy_data, tmp_path):
    settings = SETTINGS[("nli", "bert")] | {"epochs": 1, "precision": "bf16"}
    data = toy_data["nli"]
    metrics = ft.run_finetune(
        "nli", tiny_bert_dir, data, _train_ids(data), tmp_path, None, settings
    )
    assert metrics["compute_precision"] == "bf16"
    assert (tmp_path / "model" / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------
# Determinism and exact resume


@pytest.fixture(scope="module")
def reference_run(tiny_bert_dir, toy_data, tmp_path_factory) -> tuple[dict, Path]:
    """An uninterrupted run (checkpointing on, so the checkpoints themselves are exercised)."""
    out = tmp_path_factory.mktemp("reference")
    data = toy_data["ner"]
    metrics = ft.run_finetune(
        "ner", tiny_bert_dir, data, _train_ids(data), out / "out", out / "ckpt", RESUME
    )
    return metrics, out / "out"


def test_two_runs_are_identical(reference_run, tiny_bert_dir, toy_data, tmp_path):
    reference, reference_out = reference_run
    data = toy_data["ner"]
    settings = RESUME | {"checkpoint_every": 0}
    metrics = ft.run_finetune(
        "ner", tiny_bert_dir, data, _train_ids(data), tmp_path, None, settings
    )
    assert _without_timing(metrics) == _without_timing(reference)
    assert _curve(tmp_path / "curve.csv") == _curve(reference_out / "curve.csv")


# Killed with SIGKILL right after its k-th checkpoint, as a scheduler or the OOM killer would.
KILLED_RUN = """
import json, os, signal, sys
from finescope.finetune import run_finetune
args = json.loads(sys.argv[1])
def kill_after(count):
    if count == args["kill_after"]:
        os.kill(os.getpid(), signal.SIGKILL)
run_finetune("ner", args["model"], args["data"], args["ids"], args["out"], args["ckpt"],
             args["settings"], on_checkpoint=kill_after)
"""


def test_resume_after_sigkill_matches_uninterrupted_run(
    reference_run, tiny_bert_dir, toy_data, tmp_path
):
    reference, reference_out = reference_run
    data = toy_data["ner"]
    args = {
        "model": str(tiny_bert_dir),
        "data": str(data),
        "ids": _train_ids(data),
        "out": str(tmp_path / "out"),
        "ckpt": str(tmp_path / "ckpt"),
        "settings": RESUME,
        # Right after its 2nd checkpoint: global step 8 = epoch 2, step 2 of 6, with the best
        # dev state of epoch 1 in the checkpoint.
        "kill_after": 2,
    }
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, json.dumps(args)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr[-3000:]
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["step-000000008"]
    assert not (tmp_path / "out" / "metrics.json").exists()
    # Everything in the state file is readable without unpickling arbitrary objects.
    state = torch.load(tmp_path / "ckpt" / "step-000000008" / "state.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 2, 8)
    assert (tmp_path / "ckpt" / "step-000000008" / "best.safetensors").is_file()

    metrics = ft.run_finetune(
        "ner", tiny_bert_dir, data, args["ids"], tmp_path / "out", tmp_path / "ckpt", RESUME
    )
    assert metrics["resumed_from_step"] == 8
    assert _without_timing(metrics) == _without_timing(reference)
    assert _curve(tmp_path / "out" / "curve.csv") == _curve(reference_out / "curve.csv")
    resumed = load_file(tmp_path / "out" / "model" / "model.safetensors")
    uninterrupted = load_file(reference_out / "model" / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    assert not (tmp_path / "ckpt").exists()


class _Stop(Exception):
    pass


def _stop_after_first(count: int) -> None:
    if count == 1:
        raise _Stop


def _crashed_run(model_dir, data, ckpt, out, settings) -> None:
    """A run that crashes right after its first checkpoint."""
    with pytest.raises(_Stop):
        ft.run_finetune(
            "nli", model_dir, data, _train_ids(data), out, ckpt, settings, _stop_after_first
        )
    assert any(ckpt.glob("step-*"))


def test_checkpoint_of_another_job_is_reported_and_not_used(
    tiny_bert_dir, tiny_gpt2_dir, toy_data, tmp_path, caplog
):
    data = toy_data["nli"]
    settings = SETTINGS[("nli", "gpt2")] | {"epochs": 2, "checkpoint_every": 3}
    ckpt = tmp_path / "ckpt"
    ids = _train_ids(data)

    # Same job: resumed.
    _crashed_run(tiny_gpt2_dir, data, ckpt, tmp_path / "a", settings)
    metrics = ft.run_finetune("nli", tiny_gpt2_dir, data, ids, tmp_path / "a", ckpt, settings)
    assert metrics["resumed_from_step"] == 3

    # Another model: reported, removed, fresh start.
    _crashed_run(tiny_gpt2_dir, data, ckpt, tmp_path / "b", settings)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="finescope.finetune"):
        metrics = ft.run_finetune("nli", tiny_bert_dir, data, ids, tmp_path / "b", ckpt, settings)
    assert "belongs to another job (differs in: model" in caplog.text
    assert metrics["resumed_from_step"] is None and metrics["steps"] == 12

    # Other settings: reported with the setting's name.
    _crashed_run(tiny_gpt2_dir, data, ckpt, tmp_path / "c", settings)
    caplog.clear()
    changed = settings | {"learning_rate": 1e-3}
    with caplog.at_level(logging.WARNING, logger="finescope.finetune"):
        metrics = ft.run_finetune("nli", tiny_gpt2_dir, data, ids, tmp_path / "c", ckpt, changed)
    assert "settings.learning_rate" in caplog.text
    assert metrics["resumed_from_step"] is None


def test_unreadable_checkpoint_is_reported_and_training_starts_fresh(
    tiny_gpt2_dir, toy_data, tmp_path, caplog
):
    data = toy_data["nli"]
    settings = SETTINGS[("nli", "gpt2")] | {"epochs": 1, "checkpoint_every": 2}
    ckpt = tmp_path / "ckpt"
    _crashed_run(tiny_gpt2_dir, data, ckpt, tmp_path, settings)
    (next(ckpt.glob("step-*")) / "state.pt").write_bytes(b"not a checkpoint")
    (ckpt / ".step-000000009.abc.tmp").mkdir()  # a write killed before its rename
    with caplog.at_level(logging.WARNING, logger="finescope.finetune"):
        metrics = ft.run_finetune(
            "nli", tiny_gpt2_dir, data, _train_ids(data), tmp_path, ckpt, settings
        )
    assert "is unreadable" in caplog.text
    assert metrics["resumed_from_step"] is None and metrics["steps"] == 6
    assert not ckpt.exists()


# --------------------------------------------------------------------------------------------
# Decoder padding and NER alignment


@pytest.mark.parametrize("task", ["nli", "ner"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decoder_gives_same_logits_with_left_and_right_padding(arch, task, toy_data, request):
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    labels, train, _, _ = ft.load_task_data(task, toy_data[task])
    items = train[:8]
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, task, labels, seed=0).eval()
    assert ft_batches.uses_position_ids(model)
    enc = ft.encode_items(task, tokenizer, items, labels, 64, decoder=True)
    assert len(set(enc.lengths)) > 1
    # The decoders pad with the end-of-text token; it only occurs as the NLI pair separator,
    # never at the end, where the head reads.
    for f in enc.features:
        count = f["input_ids"].count(tokenizer.eos_token_id)
        assert count == (1 if task == "nli" else 0)
        assert f["input_ids"][-1] != tokenizer.eos_token_id

    logits, predictions = {}, {}
    for side in ("right", "left"):
        tokenizer.padding_side = side
        batch = ft.make_collator(task, tokenizer, position_ids=True)(enc.features)
        batch.pop("labels")
        with torch.no_grad():
            logits[side] = model(**batch).logits
        predictions[side] = ft.evaluate(model, tokenizer, task, items, labels, {})[1]
    if task == "nli":
        torch.testing.assert_close(logits["left"], logits["right"], atol=1e-5, rtol=0)
    else:
        width = logits["left"].shape[1]
        for i, n in enumerate(enc.lengths):
            torch.testing.assert_close(
                logits["left"][i, width - n :], logits["right"][i, :n], atol=1e-5, rtol=0
            )
    assert predictions["left"] == predictions["right"]


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_nli_pairs_are_one_sequence_from_the_shared_pair_encoding(arch, toy_data, request):
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    labels, train, _, _ = ft.load_task_data("nli", toy_data["nli"])
    items = train[:5]
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, "nli", labels, seed=0)
    s = ft.FinetuneSettings()
    enc = ft_batches._encode_for(model, tokenizer, "nli", items, labels, s, "train")
    decoder = arch != "bert"
    pairs = encode_pairs(
        tokenizer,
        [item["premise"] for item in items],
        [item["hypothesis"] for item in items],
        s.max_length,
        decoder=decoder,
        token_type_ids=not decoder,
    )
    for feature, pair, item in zip(enc.features, pairs, items, strict=True):
        assert feature["input_ids"] == pair.input_ids
        assert feature.get("token_type_ids") == pair.token_type_ids
        assert feature["labels"] == labels.index(item["label"])
        if decoder:  # premise, eos separator, hypothesis
            a = tokenizer(item["premise"])["input_ids"]
            b = tokenizer(item["hypothesis"])["input_ids"]
            assert feature["input_ids"] == [*a, tokenizer.eos_token_id, *b]
        else:  # exactly the tokenizer's own pair encoding
            ref = tokenizer(item["premise"], item["hypothesis"])
            assert feature["input_ids"] == ref["input_ids"]
            assert feature["token_type_ids"] == ref["token_type_ids"]
    assert enc.cls_positions == [pair.cls for pair in pairs]
    assert enc.cls_positions == (
        [len(f["input_ids"]) - 1 for f in enc.features] if decoder else [0] * 5
    )
    short = ft.encode_items("nli", tokenizer, items, labels, 6, decoder=decoder)
    assert short.truncated_items == 5 and set(short.lengths) == {6}


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_ner_labels_sit_on_one_subword_per_word(arch, request):
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    tokenizer = load_tokenizer(model_dir)
    labels = ["O", "B-DNA", "I-DNA", "B-protein", "I-protein"]
    tokens = ["IL-2", "gene", "expression", "NF-kappa", "B"]
    tags = ["B-DNA", "I-DNA", "O", "B-protein", "I-protein"]
    items = [{"id": "s", "tokens": tokens, "tags": tags}]
    word_ids = word_index(encode_words(tokenizer, [tokens]), 0)
    assert max(Counter(w for w in word_ids if w is not None).values()) > 1  # real sub-words

    for subword in ("first", "last"):
        enc = ft.encode_items("ner", tokenizer, items, labels, 64, subword=subword)
        positions = {}
        for pos, w in enumerate(word_ids):
            if w is not None and (subword == "last" or w not in positions):
                positions[w] = pos
        expected = [-100] * len(word_ids)
        for w, pos in positions.items():
            expected[pos] = labels.index(tags[w])
        assert enc.features[0]["labels"] == expected
        assert enc.word_tokens[0] == [positions[w] for w in range(len(tokens))]
        assert enc.truncated_words == 0

    # Words cut by truncation have no label, are counted, and are predicted "O".
    short = ft.encode_items("ner", tokenizer, items, labels, 4)
    n_cut = sum(p < 0 for p in short.word_tokens[0])
    assert n_cut > 0 and short.truncated_words == n_cut and short.truncated_items == 1
    assert short.word_tokens[0][-n_cut:] == [-1] * n_cut
    model = load_model(model_dir, "ner", labels, seed=0)
    metrics, predictions = ft.evaluate(model, tokenizer, "ner", items, labels, {"max_length": 4})
    assert len(predictions[0]) == len(tokens)
    assert predictions[0][-n_cut:] == ["O"] * n_cut
    assert metrics["truncated_words"] == n_cut


# --------------------------------------------------------------------------------------------
# Batching, settings, errors


def test_epoch_batches_are_a_pure_function_of_seed_and_epoch():
    rng = random.Random(1)
    lengths = [rng.randint(3, 60) for _ in range(203)]
    first = ft.epoch_batches(lengths, 8, seed=5, epoch=0, mega_batch=5)
    assert first == ft.epoch_batches(lengths, 8, seed=5, epoch=0, mega_batch=5)
    assert first != ft.epoch_batches(lengths, 8, seed=5, epoch=1, mega_batch=5)
    assert first != ft.epoch_batches(lengths, 8, seed=6, epoch=0, mega_batch=5)
    flat = [i for batch in first for i in batch]
    assert sorted(flat) == list(range(203))
    assert all(len(b) <= 8 for b in first)
    # Length grouping: far less padding than random batches.
    padded = sum(len(b) * max(lengths[i] for i in b) for b in first)
    shuffled = list(range(203))
    rng.shuffle(shuffled)
    random_padded = sum(
        len(shuffled[j : j + 8]) * max(lengths[i] for i in shuffled[j : j + 8])
        for j in range(0, 203, 8)
    )
    assert padded < 0.8 * random_padded


def test_build_batches_gives_the_training_batches(tiny_gpt2_dir, toy_data):
    labels, train, _, _ = ft.load_task_data("ner", toy_data["ner"])
    tokenizer = load_tokenizer(tiny_gpt2_dir)
    model = load_model(tiny_gpt2_dir, "ner", labels, seed=0)
    batches = ft.build_batches(model, tokenizer, "ner", train, labels, {"batch_size": 8})
    assert len(batches) == 6 and sum(len(b["input_ids"]) for b in batches) == len(train)
    assert {"input_ids", "attention_mask", "labels", "position_ids"} <= set(batches[0])
    model(**batches[0]).loss.backward()  # a bare loop can use them as they are


def test_settings_are_validated():
    s = ft.FinetuneSettings.build({"learning_rate": "5e-5", "lora": {"enabled": True}})
    assert s.learning_rate == 5e-5 and s.lora.r == 8 and s.eval_batch == 32
    with pytest.raises(FinescopeError, match="finetune.precision"):
        ft.FinetuneSettings.build({"precision": "fp8"})
    with pytest.raises(FinescopeError, match="finetune.batch_size"):
        ft.FinetuneSettings.build({"batch_size": 0})
    with pytest.raises(FinescopeError, match="finetune.lora.r"):
        ft.FinetuneSettings.build({"lora": {"r": "many"}})
    with pytest.raises(FinescopeError, match="needs a CUDA GPU"):
        ft.resolve_precision("fp16", torch.device("cpu"))
    assert ft.resolve_precision("auto", torch.device("cpu")).name == "fp32"


def test_bad_subset_and_data_are_reported(tiny_bert_dir, toy_data, tmp_path):
    with pytest.raises(FinescopeError, match="not in the training split"):
        ft.run_finetune("nli", tiny_bert_dir, toy_data["nli"], ["nope"], tmp_path, None, BASE)
    bad = _write_toy("nli", tmp_path / "bad")
    rows = read_jsonl(bad / "dev.jsonl")
    rows[1]["label"] = "maybe"
    write_jsonl(bad / "dev.jsonl", rows)
    with pytest.raises(FinescopeError, match=r"dev.jsonl:2: labels \['maybe'\]"):
        ft.load_task_data("nli", bad)


def test_out_of_memory_names_the_settings_to_change(tiny_bert_dir, toy_data, monkeypatch):
    labels, train, _, _ = ft.load_task_data("nli", toy_data["nli"])
    model = load_model(tiny_bert_dir, "nli", labels, seed=0)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model, "forward", out_of_memory)
    with pytest.raises(FinescopeError, match="finetune.batch_size.*gradient_accumulation"):
        ft.train_loop(model, load_tokenizer(tiny_bert_dir), "nli", train, labels, BASE)


def test_adamw_is_fused_on_cpu_and_takes_the_same_steps_as_the_default_update():
    from finescope.finetune.train import adamw

    torch.manual_seed(0)
    start = torch.randn(64, 32)
    grads = [torch.randn(64, 32) for _ in range(5)]
    weights = {}
    for name, make in {
        "fused": lambda p: adamw([{"params": [p], "weight_decay": 0.01}], 1e-2),
        "foreach": lambda p: torch.optim.AdamW([p], lr=1e-2, weight_decay=0.01, foreach=True),
    }.items():
        p = torch.nn.Parameter(start.clone())
        optimizer = make(p)
        for g in grads:
            p.grad = g.clone()
            optimizer.step()
        weights[name] = p.detach()
        if name == "fused":
            assert optimizer.defaults["fused"] is True
    torch.testing.assert_close(weights["fused"], weights["foreach"], rtol=1e-5, atol=1e-6)
