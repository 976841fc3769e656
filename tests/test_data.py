"""Data stage: every reader, tag normalisation, split derivation, bad input, the data report,
and the real corpora beside the project (skipped when absent)."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest

from finescope.data import data_report, prepare_task
from finescope.errors import FinescopeError
from finescope.io import read_json, read_jsonl
from finescope.subsample import subsample_ids, write_subset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NER_LABELS_5 = ["DNA", "RNA", "cell_line", "cell_type", "protein"]


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def mednli_rows(n: int, labels=("entailment", "contradiction", "neutral"), prefix="p") -> str:
    rows = [
        {
            "pairID": f"{prefix}{i}",
            "sentence1": f"The patient received {i} mg of aspirin .",
            "sentence2": f"The patient took aspirin number {i} .",
            "gold_label": labels[i % len(labels)],
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows)


def ner_tsv(sentences: list[list[tuple[str, str]]], docstart: bool = True) -> str:
    out = ["-DOCSTART-\tO", ""] if docstart else []
    for sentence in sentences:
        out += [f"{tok}\t{tag}" for tok, tag in sentence] + [""]
    return "\n".join(out) + "\n"


S1 = [
    ("IL-2", "B-DNA"),
    ("gene", "I-DNA"),
    ("in", "O"),
    ("T", "B-cell_type"),
    ("cells", "I-cell_type"),
]
S2 = [("NF-kappa", "B-protein"), ("B", "I-protein"), ("binds", "O"), ("DNA", "O")]
S3 = [
    ("Jurkat", "B-cell_line"),
    ("cells", "I-cell_line"),
    ("express", "O"),
    ("c-fos", "B-RNA"),
    ("mRNA", "I-RNA"),
]


def ner_files(tmp_path: Path, n: int = 10) -> dict:
    sentences = [S1, S2, S3] * n
    return {
        "source": "files",
        "format": "tsv",
        "train": str(write(tmp_path, "in/train.tsv", ner_tsv(sentences))),
        "dev": str(write(tmp_path, "in/dev.tsv", ner_tsv([S1, S2, S3]))),
        "test": str(write(tmp_path, "in/test.tsv", ner_tsv([S3, S1, S2]))),
    }


def nli_files(tmp_path: Path, n_train: int = 30) -> dict:
    return {
        "source": "files",
        "format": "jsonl",
        "train": str(write(tmp_path, "in/train.jsonl", mednli_rows(n_train, prefix="tr"))),
        "dev": str(write(tmp_path, "in/dev.jsonl", mednli_rows(6, prefix="dv"))),
        "test": str(write(tmp_path, "in/test.jsonl", mednli_rows(9, prefix="te"))),
    }


# ---------------------------------------------------------------------------------------------
# NLI readers
# ---------------------------------------------------------------------------------------------


def test_nli_jsonl_mednli_layout(tmp_path):
    cfg = nli_files(tmp_path)
    stats = prepare_task("nli", cfg, tmp_path / "out", 0)
    assert stats["train"] == {
        "items": 30,
        "labels": {"contradiction": 10, "entailment": 10, "neutral": 10},
    }
    assert stats["test"]["items"] == 9
    train = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert train[1] == {
        "id": "tr1",
        "premise": "The patient received 1 mg of aspirin .",
        "hypothesis": "The patient took aspirin number 1 .",
        "label": "contradiction",
    }
    meta = read_json(tmp_path / "out" / "labels.json")
    assert meta["task"] == "nli"
    assert meta["labels"] == ["contradiction", "entailment", "neutral"]
    assert "entity_types" not in meta
    assert meta["provenance"]["dev"] == {"source": cfg["dev"], "format": "jsonl"}


def test_nli_jsonl_without_pair_ids_gets_split_index_ids(tmp_path):
    rows = [
        {"sentence1": "A man coughs .", "sentence2": "A man is ill .", "gold_label": "neutral"},
        {"sentence1": "A man coughs .", "sentence2": "A man coughs .", "gold_label": "entailment"},
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows) + "\n"  # trailing blank line is fine
    path = write(tmp_path, "d.jsonl", text)
    prepare_task(
        "nli",
        {"source": "files", "train": str(path), "test": str(path), "dev": str(path)},
        tmp_path / "out",
        0,
    )  # format from the suffix
    assert [i["id"] for i in read_jsonl(tmp_path / "out" / "dev.jsonl")] == ["dev-0", "dev-1"]


def test_nli_csv_with_column_names(tmp_path):
    text = (
        "uid,sent_a,sent_b,gold\n"
        'a1,"Fever, cough and chills .",The patient is ill .,yes\n'
        'a2,"She said ""no"" .",She agreed .,no\n'
    )
    path = write(tmp_path, "pairs.csv", text)
    cfg = {
        "source": "files",
        "format": "csv",
        "train": str(path),
        "dev": str(path),
        "test": str(path),
        "columns": {"premise": "sent_a", "hypothesis": "sent_b", "label": "gold", "id": "uid"},
    }
    stats = prepare_task("nli", cfg, tmp_path / "out", 0)
    items = read_jsonl(tmp_path / "out" / "test.jsonl")
    assert items[0] == {
        "id": "a1",
        "premise": "Fever, cough and chills .",
        "hypothesis": "The patient is ill .",
        "label": "yes",
    }
    assert items[1]["premise"] == 'She said "no" .'
    assert stats["test"]["labels"] == {"no": 1, "yes": 1}  # a two-way label set from the data


def test_nli_tsv_two_way_labels(tmp_path):
    header = "premise\thypothesis\tlabel\n"
    rows = [
        f'He said "dose {i}" .\tDose {i} .\t{"entailment" if i % 2 else "not_entailment"}'
        for i in range(8)
    ]
    path = write(tmp_path, "d.tsv", header + "\n".join(rows) + "\n")
    cfg = {
        "source": "files",
        "format": "tsv",
        "train": str(path),
        "test": str(path),
        "dev_fraction": 0.25,
    }
    stats = prepare_task("nli", cfg, tmp_path / "out", 0)
    meta = read_json(tmp_path / "out" / "labels.json")
    assert meta["labels"] == ["entailment", "not_entailment"]
    assert stats["dev"] == {"items": 2, "labels": {"entailment": 1, "not_entailment": 1}}
    assert read_jsonl(tmp_path / "out" / "test.jsonl")[0]["premise"] == 'He said "dose 0" .'


def test_nli_declared_labels_keep_order_and_count_zero(tmp_path):
    cfg = nli_files(tmp_path)
    cfg["labels"] = ["entailment", "neutral", "contradiction", "unused"]
    with pytest.warns(UserWarning, match="split has no unused"):  # train and dev
        stats = prepare_task("nli", cfg, tmp_path / "out", 0)
    assert read_json(tmp_path / "out" / "labels.json")["labels"] == cfg["labels"]
    assert stats["dev"]["labels"] == {
        "entailment": 2,
        "neutral": 2,
        "contradiction": 2,
        "unused": 0,
    }


# ---------------------------------------------------------------------------------------------
# NER readers and tag schemes
# ---------------------------------------------------------------------------------------------


def test_ner_token_tab_tag_with_docstart(tmp_path):
    stats = prepare_task("ner", ner_files(tmp_path), tmp_path / "out", 0)
    assert stats["dev"] == {
        "items": 3,
        "tokens": 14,
        "labels": {"DNA": 1, "RNA": 1, "cell_line": 1, "cell_type": 1, "protein": 1},
    }
    dev = read_jsonl(tmp_path / "out" / "dev.jsonl")
    assert dev[0] == {"id": "dev-0", "tokens": [t for t, _ in S1], "tags": [g for _, g in S1]}
    meta = read_json(tmp_path / "out" / "labels.json")
    assert meta["entity_types"] == NER_LABELS_5
    assert meta["labels"] == [
        "O",
        "B-DNA",
        "I-DNA",
        "B-RNA",
        "I-RNA",
        "B-cell_line",
        "I-cell_line",
        "B-cell_type",
        "I-cell_type",
        "B-protein",
        "I-protein",
    ]


def test_ner_conll_multi_column(tmp_path):
    text = (
        "-DOCSTART- -X- -X- O\n\n"
        "IL-2 NN B-NP B-Gene\nbinds VBZ B-VP O\nCD25 NN B-NP B-Gene\n\n"
        "Aspirin NN B-NP B-Chemical\nworks VBZ B-VP O\n"  # no blank line at the end
    )
    path = write(tmp_path, "d.conll", text)
    cfg = {
        "source": "files",
        "format": "conll",
        "train": str(path),
        "dev": str(path),
        "test": str(path),
    }
    prepare_task("ner", cfg, tmp_path / "out", 0)
    items = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert items == [
        {"id": "train-0", "tokens": ["IL-2", "binds", "CD25"], "tags": ["B-Gene", "O", "B-Gene"]},
        {"id": "train-1", "tokens": ["Aspirin", "works"], "tags": ["B-Chemical", "O"]},
    ]
    assert read_json(tmp_path / "out" / "labels.json")["entity_types"] == ["Chemical", "Gene"]


def test_ner_original_jnlpba_iob2(tmp_path):
    text = (
        "###MEDLINE:96216251\n\n"
        "IL-2\tB-DNA\ngene\tI-DNA\nexpression\tO\n.\tO\n\n"
        "###MEDLINE:96216252\n\n"
        "CD28\tB-protein\nsignals\tO\n\n"
    )
    path = write(tmp_path, "Genia4ERtask1.iob2", text)
    cfg = {"source": "files", "train": str(path), "dev": str(path), "test": str(path)}
    stats = prepare_task("ner", cfg, tmp_path / "out", 0)
    assert stats["train"]["items"] == 2 and stats["train"]["tokens"] == 6
    assert read_json(tmp_path / "out" / "labels.json")["provenance"]["train"]["format"] == "iob2"


def test_ner_jsonl_with_tag_ids(tmp_path):
    rows = [{"tokens": ["IL-2", "gene"], "tags": [1, 2]}, {"tokens": ["x"], "tags": [0]}]
    path = write(tmp_path, "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "source": "files",
        "format": "jsonl",
        "train": str(path),
        "dev": str(path),
        "test": str(path),
        "tag_names": {"O": 0, "B-DNA": 1, "I-DNA": 2},
    }
    prepare_task("ner", cfg, tmp_path / "out", 0)
    assert read_jsonl(tmp_path / "out" / "dev.jsonl")[0]["tags"] == ["B-DNA", "I-DNA"]


def _ner_one_file(tmp_path, sentences, **extra) -> dict:
    path = write(tmp_path, "in/d.tsv", ner_tsv(sentences, docstart=False))
    return {
        "source": "files",
        "format": "tsv",
        "train": str(path),
        "dev": str(path),
        "test": str(path),
        **extra,
    }


def test_iob1_is_normalised(tmp_path):
    # IOB1: entities start with I-; B- only where an entity directly follows one of its type.
    sentence = [
        ("IL-2", "I-protein"),
        ("IL-4", "B-protein"),
        ("and", "O"),
        ("T", "I-cell_type"),
        ("cells", "I-cell_type"),
        ("gene", "I-DNA"),
    ]
    cfg = _ner_one_file(tmp_path, [sentence], scheme="iob1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # IOB1 input is valid: no repair warning
        prepare_task("ner", cfg, tmp_path / "out", 0)
    assert read_jsonl(tmp_path / "out" / "train.jsonl")[0]["tags"] == [
        "B-protein",
        "B-protein",
        "O",
        "B-cell_type",
        "I-cell_type",
        "B-DNA",
    ]


def test_iobes_is_normalised(tmp_path):
    sentence = [
        ("IL-2", "S-protein"),
        ("peripheral", "B-cell_type"),
        ("blood", "I-cell_type"),
        ("cells", "E-cell_type"),
        ("c-fos", "B-DNA"),
        ("gene", "E-DNA"),
        (".", "O"),
    ]
    cfg = _ner_one_file(tmp_path, [sentence], scheme="iobes")
    prepare_task("ner", cfg, tmp_path / "out", 0)
    assert read_jsonl(tmp_path / "out" / "train.jsonl")[0]["tags"] == [
        "B-protein",
        "B-cell_type",
        "I-cell_type",
        "I-cell_type",
        "B-DNA",
        "I-DNA",
        "O",
    ]


def test_bio_alias_and_invalid_tag_for_scheme(tmp_path):
    cfg = _ner_one_file(tmp_path, [S1], scheme="BIO")
    prepare_task("ner", cfg, tmp_path / "out", 0)
    bad = _ner_one_file(tmp_path, [[("IL-2", "S-protein")]])  # S- is not IOB2
    with pytest.raises(FinescopeError, match=r"d\.tsv:1: tag 'S-protein' is not IOB2"):
        prepare_task("ner", bad, tmp_path / "out2", 0)


def test_i_after_o_is_repaired_with_a_counted_warning(tmp_path):
    sentence = [
        ("the", "O"),
        ("IL-2", "I-protein"),
        ("gene", "I-DNA"),
        ("x", "O"),
        ("T", "I-cell_type"),
        ("cells", "I-cell_type"),
    ]
    cfg = _ner_one_file(tmp_path, [sentence])
    with pytest.warns(UserWarning, match=r"repaired 3 tag\(s\) 'I-X'.*strict: true"):
        prepare_task("ner", cfg, tmp_path / "out", 0)
    assert read_jsonl(tmp_path / "out" / "train.jsonl")[0]["tags"] == [
        "O",
        "B-protein",
        "B-DNA",
        "O",
        "B-cell_type",
        "I-cell_type",
    ]


def test_i_after_o_is_an_error_in_strict_mode(tmp_path):
    sentence = [("the", "O"), ("IL-2", "O"), ("gene", "I-DNA")]
    cfg = _ner_one_file(tmp_path, [S1, sentence], strict=True)
    with pytest.raises(
        FinescopeError,
        match=r"d\.tsv:9: 'I-DNA' follows O.*tasks\.ner\.data\."
        r"strict: false",
    ):
        prepare_task("ner", cfg, tmp_path / "out", 0)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets (local save_to_disk folders)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    root = tmp_path_factory.mktemp("hf")
    tokens = [["IL-2", "gene", "binds"], ["NF-kappa", "B", "in", "T", "cells"], ["no", "entity"]]
    int_tags = [[1, 2, 0], [3, 4, 0, 5, 6], [0, 0]]
    names = ["O", "B-DNA", "I-DNA", "B-protein", "I-protein", "B-cell_type", "I-cell_type"]

    def ner_split(features=None):
        return datasets.Dataset.from_dict(
            {"tokens": tokens * 4, "tags": int_tags * 4}, features=features
        )

    datasets.DatasetDict(
        {"train": ner_split(), "validation": ner_split(), "test": ner_split()}
    ).save_to_disk(root / "ner_plain")
    labelled = datasets.Features(
        {
            "tokens": datasets.List(datasets.Value("string")),
            "ner_tags": datasets.List(datasets.ClassLabel(names=names)),
        }
    )
    datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"tokens": tokens * 4, "ner_tags": int_tags * 4}, features=labelled
            )
            for split in ("train", "test")
        }
    ).save_to_disk(root / "ner_classlabel")
    nli_features = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
        }
    )
    nli = {
        "premise": [f"p {i}" for i in range(30)],
        "hypothesis": [f"h {i}" for i in range(30)],
        "label": [i % 3 for i in range(30)],
    }
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(nli, features=nli_features),
            "validation": datasets.Dataset.from_dict(nli, features=nli_features),
            "test": datasets.Dataset.from_dict(nli, features=nli_features),
        }
    ).save_to_disk(root / "nli")
    return root, names


def test_hf_ner_with_tag_names(hf_folders, tmp_path):
    root, names = hf_folders
    cfg = {
        "source": "hf",
        "name": str(root / "ner_plain"),
        "tag_names": names,
        "splits": {"train": "train", "dev": "validation", "test": "test"},
    }
    stats = prepare_task("ner", cfg, tmp_path / "out", 0)
    assert stats["dev"]["labels"] == {"DNA": 4, "cell_type": 4, "protein": 4}
    assert read_jsonl(tmp_path / "out" / "train.jsonl")[1]["tags"] == [
        "B-protein",
        "I-protein",
        "O",
        "B-cell_type",
        "I-cell_type",
    ]
    prov = read_json(tmp_path / "out" / "labels.json")["provenance"]
    assert prov["dev"] == {"source": f"hf:{root / 'ner_plain'}", "split": "validation"}


def test_hf_ner_class_label_feature_and_derived_dev(hf_folders, tmp_path):
    root, _ = hf_folders
    cfg = {"source": "hf", "name": str(root / "ner_classlabel"), "dev_fraction": 0.25}
    stats = prepare_task("ner", cfg, tmp_path / "out", 0)  # ner_tags found, names from ClassLabel
    assert (stats["train"]["items"], stats["dev"]["items"]) == (9, 3)
    prov = read_json(tmp_path / "out" / "labels.json")["provenance"]
    assert prov["dev"]["derived_from"] == "train" and prov["dev"]["fraction"] == 0.25


def test_hf_nli_class_label(hf_folders, tmp_path):
    root, _ = hf_folders
    stats = prepare_task("nli", {"source": "hf", "name": str(root / "nli")}, tmp_path / "out", 0)
    assert stats["dev"]["labels"] == {"contradiction": 10, "entailment": 10, "neutral": 10}
    assert read_jsonl(tmp_path / "out" / "test.jsonl")[1] == {
        "id": "test-1",
        "premise": "p 1",
        "hypothesis": "h 1",
        "label": "neutral",
    }


@pytest.mark.filterwarnings("ignore:tasks.nli.data. the dev split has no")
def test_hf_json_and_csv_loaders_over_local_files(tmp_path):
    labels = ["entailment", "neutral", "contradiction"]
    rows = [{"s1": f"p {i}", "s2": f"h {i}", "y": labels[i % 3]} for i in range(18)]
    for split, part in (("train", rows[:12]), ("test", rows[12:])):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        (tmp_path / f"{split}.csv").write_text(
            "s1,s2,y\n" + "".join(f"{r['s1']},{r['s2']},{r['y']}\n" for r in part)
        )
    columns = {"premise": "s1", "hypothesis": "s2", "label": "y"}
    for loader, ext in (("json", "jsonl"), ("csv", "csv")):
        files = {split: str(tmp_path / f"{split}.{ext}") for split in ("train", "test")}
        cfg = {"source": "hf", "name": loader, "data_files": files, "columns": columns}
        stats = prepare_task("nli", cfg, tmp_path / loader, 0)
        assert stats["test"]["labels"] == {"contradiction": 2, "entailment": 2, "neutral": 2}
        assert stats["train"]["items"] + stats["dev"]["items"] == 12
        first = read_jsonl(tmp_path / loader / "test.jsonl")[0]
        assert (first["premise"], first["hypothesis"], first["label"]) == (
            "p 12",
            "h 12",
            labels[0],
        )
    missing = {"train": str(tmp_path / "absent.jsonl")}
    with pytest.raises(FinescopeError, match=r"tasks\.nli\.data\.name: could not load"):
        prepare_task(
            "nli", {"source": "hf", "name": "json", "data_files": missing}, tmp_path / "x", 0
        )


def test_hf_rows_without_a_gold_label_are_skipped_on_request(tmp_path):
    labels = ["entailment", "neutral", "contradiction"]
    rows = [{"s1": f"p {i}", "s2": f"h {i}", "y": labels[i % 3]} for i in range(18)]
    rows[4]["y"] = rows[7]["y"] = "-"  # annotators disagreed
    for split, part in (("train", rows[:12]), ("test", rows[12:])):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    files = {split: str(tmp_path / f"{split}.jsonl") for split in ("train", "test")}
    columns = {"premise": "s1", "hypothesis": "s2", "label": "y"}
    cfg = {"source": "hf", "name": "json", "data_files": files, "columns": columns}
    with pytest.raises(FinescopeError, match=r"json\[train\] row 4: no gold label"):
        prepare_task("nli", cfg, tmp_path / "out", 0)
    with pytest.warns(UserWarning, match="on_bad_rows is skip: 2 bad row"):
        stats = prepare_task("nli", cfg | {"on_bad_rows": "skip"}, tmp_path / "out", 0)
    assert stats["train"]["items"] + stats["dev"]["items"] == 10
    assert read_json(tmp_path / "out" / "labels.json")["skipped_rows"] == {
        "no gold label": {"count": 2, "examples": ["json[train] row 4", "json[train] row 7"]}
    }


def test_hf_errors(hf_folders, tmp_path):
    root, _ = hf_folders
    with pytest.raises(FinescopeError, match=r"tasks\.ner\.data\.tag_names"):
        prepare_task("ner", {"source": "hf", "name": str(root / "ner_plain")}, tmp_path / "o", 0)
    with pytest.raises(FinescopeError, match=r"tasks\.nli\.data\.splits\.dev: 'valid' is not"):
        prepare_task(
            "nli",
            {
                "source": "hf",
                "name": str(root / "nli"),
                "splits": {"train": "train", "dev": "valid", "test": "test"},
            },
            tmp_path / "o",
            0,
        )
    with pytest.raises(FinescopeError, match=r"tasks\.nli\.data\.columns\.premise: .* no column"):
        prepare_task(
            "nli",
            {"source": "hf", "name": str(root / "nli"), "columns": {"premise": "sentence1"}},
            tmp_path / "o",
            0,
        )
    with pytest.raises(FinescopeError, match=r"tasks\.nli\.data\.name: could not load"):
        prepare_task("nli", {"source": "hf", "name": str(tmp_path / "absent")}, tmp_path / "o", 0)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# Derived splits
# ---------------------------------------------------------------------------------------------


def test_missing_dev_is_derived_from_train_stratified(tmp_path):
    cfg = nli_files(tmp_path, n_train=90)
    del cfg["dev"]
    cfg["dev_fraction"] = 0.2
    stats = prepare_task("nli", cfg, tmp_path / "out", 3)
    assert stats["dev"] == {
        "items": 18,
        "labels": {"contradiction": 6, "entailment": 6, "neutral": 6},
    }
    assert stats["train"]["items"] == 72
    train = {i["id"] for i in read_jsonl(tmp_path / "out" / "train.jsonl")}
    dev = {i["id"] for i in read_jsonl(tmp_path / "out" / "dev.jsonl")}
    assert not train & dev and len(train | dev) == 90
    prov = read_json(tmp_path / "out" / "labels.json")["provenance"]
    assert prov["dev"]["derived_from"] == "train"
    assert prov["dev"]["fraction"] == 0.2 and prov["dev"]["seed"] == 3
    assert prov["train"]["fraction"] == 0.8 and prov["train"]["source"] == cfg["train"]
    # Same seed, same split; another seed, another split.
    prepare_task("nli", cfg, tmp_path / "again", 3)
    prepare_task("nli", cfg, tmp_path / "other", 4)
    assert (tmp_path / "again" / "dev.jsonl").read_text() == (
        tmp_path / "out" / "dev.jsonl"
    ).read_text()
    assert (tmp_path / "other" / "dev.jsonl").read_text() != (
        tmp_path / "out" / "dev.jsonl"
    ).read_text()


def test_only_dev_and_test_derives_train_from_dev(tmp_path):
    cfg = nli_files(tmp_path)
    del cfg["train"]
    cfg["dev"] = str(write(tmp_path, "in/dev.jsonl", mednli_rows(60, prefix="dv")))
    stats = prepare_task("nli", cfg, tmp_path / "out", 0)
    assert (stats["train"]["items"], stats["dev"]["items"]) == (54, 6)
    prov = read_json(tmp_path / "out" / "labels.json")["provenance"]
    assert prov["train"]["derived_from"] == "dev" and prov["train"]["fraction"] == 0.9
    assert "no train file" in prov["train"]["note"]
    assert prov["test"] == {"source": cfg["test"], "format": "jsonl"}


def test_missing_test_needs_test_fraction(tmp_path):
    cfg = nli_files(tmp_path, n_train=100)
    del cfg["test"]
    with pytest.raises(
        FinescopeError,
        match=r"tasks\.nli\.data\.test: no test split.*"
        r"test_fraction",
    ):
        prepare_task("nli", cfg, tmp_path / "out", 0)
    assert not (tmp_path / "out").exists()
    cfg["test_fraction"] = 0.2
    del cfg["dev"]
    stats = prepare_task("nli", cfg, tmp_path / "out", 0)
    assert [stats[s]["items"] for s in ("train", "dev", "test")] == [72, 8, 20]
    prov = read_json(tmp_path / "out" / "labels.json")["provenance"]
    assert prov["test"]["derived_from"] == "train" and prov["train"]["fraction"] == 0.72


def test_only_test_file_with_test_fraction(tmp_path):
    cfg = ner_files(tmp_path)
    cfg = {"source": "files", "format": "tsv", "test": cfg["train"], "test_fraction": 0.5}
    with pytest.warns(UserWarning, match="the dev split has no protein"):  # 2 dev sentences
        stats = prepare_task("ner", cfg, tmp_path / "out", 0)
    assert [stats[s]["items"] for s in ("train", "dev", "test")] == [13, 2, 15]
    with pytest.raises(FinescopeError, match=r"tasks\.ner\.data\.train: no train split"):
        prepare_task(
            "ner", {"source": "files", "format": "tsv", "test": cfg["test"]}, tmp_path / "o2", 0
        )


def test_ner_derivation_stratified_by_entity_types(tmp_path):
    cfg = ner_files(tmp_path, n=20)  # 60 sentences, three type sets of 20 each
    del cfg["dev"]
    prepare_task("ner", cfg, tmp_path / "out", 0)
    dev = read_jsonl(tmp_path / "out" / "dev.jsonl")
    strata = Counter(frozenset(t[2:] for t in item["tags"] if t != "O") for item in dev)
    assert sorted(strata.values()) == [2, 2, 2]


# ---------------------------------------------------------------------------------------------
# Bad input: each error names the place and nothing is written.
# ---------------------------------------------------------------------------------------------


def _nli_cfg_with(tmp_path, name: str, text: str | bytes, **extra) -> dict:
    cfg = nli_files(tmp_path)
    cfg["train"] = str(write(tmp_path, f"in/{name}", text))
    if not name.endswith(".jsonl"):
        cfg["format"] = name.rsplit(".", 1)[1]
        for split in ("dev", "test"):
            cfg[split] = cfg["train"]
    cfg.update(extra)
    return cfg


GOOD = mednli_rows(3)
NLI_BAD = {
    "malformed json": ("t.jsonl", GOOD + '{"sentence1": "x",\n', {}, r"t\.jsonl:4: malformed JSON"),
    "not an object": ("t.jsonl", GOOD + "[1, 2]\n", {}, r"t\.jsonl:4: expected a JSON object"),
    "missing field": (
        "t.jsonl",
        GOOD + '{"sentence1": "a", "gold_label": "neutral"}\n',
        {},
        r"t\.jsonl:4: missing field 'sentence2' \(the hypothesis\).*"
        r"tasks\.nli\.data\.columns\.hypothesis",
    ),
    "empty premise": (
        "t.jsonl",
        '{"sentence1": " ", "sentence2": "b", "gold_label": "neutral"}\n',
        {},
        r"t\.jsonl:1: empty premise",
    ),
    "no gold label": (
        "t.jsonl",
        GOOD + '{"sentence1": "a", "sentence2": "b", "gold_label": "-"}\n',
        {},
        r"t\.jsonl:4: no gold label",
    ),
    "unknown declared label": (
        "t.jsonl",
        GOOD,
        {"labels": ["entailment", "neutral"]},
        r"t\.jsonl:2: label 'contradiction' is not one of the labels "
        r"declared in tasks\.nli\.data\.labels",
    ),
    "duplicate id": (
        "t.jsonl",
        GOOD + mednli_rows(1),
        {},
        r"t\.jsonl:4: duplicate id 'p0' \(first at .*t\.jsonl:1\)",
    ),
    "empty split": ("t.jsonl", "\n", {}, r"t\.jsonl: the train split has no items"),
    "not utf-8": (
        "t.jsonl",
        GOOD.encode() + b'{"sentence1": "caf\xe9"}\n',
        {},
        r"t\.jsonl:4: not valid UTF-8 \(byte 0xe9 at byte offset \d+\)",
    ),
    "tsv field count": (
        "t.tsv",
        "premise\thypothesis\tlabel\na\tb\tneutral\nc\td\n",
        {},
        r"t\.tsv:3: 2 fields but the header",
    ),
    "csv missing column": (
        "t.csv",
        "premise,label\na,neutral\n",
        {},
        r"t\.csv:1: no column 'hypothesis'.*tasks\.nli\.data\.columns\."
        r"hypothesis",
    ),
    "csv unterminated quote": (
        "t.csv",
        'premise,hypothesis,label\n"a,b,c\n',
        {},
        r"t\.csv:2: 1 fields but the header \(line 1\) has 3; check",
    ),
}


@pytest.mark.parametrize("case", sorted(NLI_BAD))
def test_bad_nli_input(tmp_path, case):
    name, text, extra, match = NLI_BAD[case]
    cfg = _nli_cfg_with(tmp_path, name, text, **extra)
    with pytest.raises(FinescopeError, match=match):
        prepare_task("nli", cfg, tmp_path / "out", 0)
    assert not (tmp_path / "out").exists()


NER_BAD = {
    "token without tag": ("IL-2\tB-DNA\ngene\n", {}, r"t\.tsv:2: expected a token and a tag"),
    "column count mismatch": (
        "IL-2 NN B-DNA\ngene I-DNA\n",
        {"format": "conll"},
        r"t\.tsv:2: 2 columns but earlier lines have 3 \(token/tag count",
    ),
    "strict I after O": ("a\tO\nb\tI-DNA\n", {"strict": True}, r"t\.tsv:2: 'I-DNA' follows O"),
    "bad tag": ("a\tB_DNA\n", {}, r"t\.tsv:1: tag 'B_DNA' is not IOB2"),
    "empty file": ("-DOCSTART-\tO\n\n", {}, r"t\.tsv: the train split has no items"),
    "not utf-8": (b"a\tO\n\nb\xff\tO\n", {}, r"t\.tsv:3: not valid UTF-8 .*byte offset 6"),
    "jsonl length mismatch": (
        '{"tokens": ["a", "b"], "tags": ["O"]}\n',
        {"format": "jsonl"},
        r"t\.tsv:1: 2 tokens but 1 tags",
    ),
}


@pytest.mark.parametrize("case", sorted(NER_BAD))
def test_bad_ner_input(tmp_path, case):
    text, extra, match = NER_BAD[case]
    cfg = ner_files(tmp_path)
    cfg["train"] = str(write(tmp_path, "in/t.tsv", text))
    cfg.update(extra)
    with pytest.raises(FinescopeError, match=match):
        prepare_task("ner", cfg, tmp_path / "out", 0)
    assert not (tmp_path / "out").exists()


CONFIG_BAD = {
    "not a mapping": ("nli", ["files"], r"tasks\.nli\.data must be a mapping"),
    "missing source": ("nli", {"train": "x"}, r"tasks\.nli\.data\.source: missing"),
    "unknown source": ("nli", {"source": "s3"}, r"tasks\.nli\.data\.source: 's3' is not one of"),
    "unknown key": (
        "nli",
        {"source": "files", "train": "x", "colums": {}},
        r"tasks\.nli\.data\.colums: unknown key for source 'files'; "
        r"did you mean 'columns'\?",
    ),
    "no files": (
        "ner",
        {"source": "files", "format": "tsv"},
        r"tasks\.ner\.data\.train: missing; give at least one",
    ),
    "file not found": (
        "nli",
        {"source": "files", "format": "jsonl", "train": "nowhere.jsonl"},
        r"tasks\.nli\.data\.train: file nowhere\.jsonl not found",
    ),
    "bad format": (
        "nli",
        {"source": "files", "format": "conll", "train": "x"},
        r"tasks\.nli\.data\.format: 'conll' is not a nli format",
    ),
    "unknown format suffix": (
        "nli",
        {"source": "files", "train": "x.parquet"},
        r"tasks\.nli\.data\.format: missing and not clear",
    ),
    "bad dev_fraction": (
        "nli",
        {"source": "files", "format": "jsonl", "train": "x", "dev_fraction": 1.5},
        r"tasks\.nli\.data\.dev_fraction: 1\.5 must be a number between",
    ),
    "bad strict": (
        "ner",
        {"source": "files", "format": "tsv", "train": "x", "strict": "yes"},
        r"tasks\.ner\.data\.strict: 'yes' must be true or false",
    ),
    "bad scheme": (
        "ner",
        {"source": "files", "format": "tsv", "train": "x", "scheme": "bilou"},
        r"tasks\.ner\.data\.scheme: 'bilou' is not one of",
    ),
    "labels for ner": (
        "ner",
        {"source": "files", "format": "tsv", "train": "x", "labels": ["a", "b"]},
        r"tasks\.ner\.data\.labels: only applies",
    ),
    "unknown column role": (
        "nli",
        {"source": "files", "format": "jsonl", "train": "IN", "columns": {"premis": "s1"}},
        r"tasks\.nli\.data\.columns\.premis: unknown column role",
    ),
    "hf without name": ("ner", {"source": "hf"}, r"tasks\.ner\.data\.name: missing"),
    "bad on_bad_rows": (
        "nli",
        {"source": "files", "format": "jsonl", "train": "x", "on_bad_rows": "drop"},
        r"tasks\.nli\.data\.on_bad_rows: 'drop' is not one of error, skip",
    ),
    "bad allow_unseen_labels": (
        "nli",
        {"source": "synthetic", "allow_unseen_labels": "yes"},
        r"tasks\.nli\.data\.allow_unseen_labels: 'yes' must be true or false",
    ),
    "unknown task": ("qa", {"source": "synthetic"}, r"task 'qa' is not known"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_BAD))
def test_bad_config(tmp_path, case):
    task, cfg, match = CONFIG_BAD[case]
    if isinstance(cfg, dict) and cfg.get("train") == "IN":
        cfg = {**cfg, "train": nli_files(tmp_path)["train"]}
    with pytest.raises(FinescopeError, match=match):
        prepare_task(task, cfg, tmp_path / "out", 0)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Labels that train lacks; bad rows skipped on request
# ---------------------------------------------------------------------------------------------


def test_a_label_that_train_lacks_is_an_error_unless_allowed(tmp_path):
    cfg = nli_files(tmp_path)
    cfg["train"] = str(
        write(tmp_path, "in/train.jsonl", mednli_rows(30, labels=("entailment", "contradiction")))
    )
    with pytest.raises(FinescopeError) as err:
        prepare_task("nli", cfg, tmp_path / "out", 0)
    message = str(err.value)
    assert message.startswith("tasks.nli.data: 1 label(s) occur in dev/test but never in the train")
    assert "neutral (dev, e.g. item 'dv2')" in message
    assert "set tasks.nli.data.allow_unseen_labels: true to keep them" in message
    assert not (tmp_path / "out").exists()

    cfg["allow_unseen_labels"] = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_task("nli", cfg, tmp_path / "out", 0)
    texts = [str(w.message) for w in caught]
    assert any(
        "neutral (dev, e.g. item 'dv2')" in t
        and "kept as tasks.nli.data.allow_unseen_labels is true" in t
        for t in texts
    ), texts
    assert "neutral" in read_json(tmp_path / "out" / "labels.json")["labels"]


def test_an_entity_type_only_in_test_is_an_error(tmp_path):
    cfg = ner_files(tmp_path)
    cfg["train"] = str(write(tmp_path, "in/train.tsv", ner_tsv([S1, S2] * 10)))
    cfg["dev"] = str(write(tmp_path, "in/dev.tsv", ner_tsv([S1, S2])))
    with pytest.raises(
        FinescopeError,
        match=r"tasks\.ner\.data: 2 entity type\(s\).*"
        r"RNA \(test, e\.g\. item 'test-0'\); cell_line \(test",
    ):
        prepare_task("ner", cfg, tmp_path / "out", 0)
    cfg["allow_unseen_labels"] = True
    with pytest.warns(UserWarning, match="allow_unseen_labels is true"):
        prepare_task("ner", cfg, tmp_path / "out", 0)


def test_skip_leaves_bad_nli_rows_out_and_counts_them_by_reason(tmp_path):
    bad = [
        '{"sentence1": "x",',  # 7 malformed JSON
        "[1, 2]",  # 8 not an object
        '{"sentence1": "a", "gold_label": "neutral"}',  # 9 missing field
        '{"sentence1": "a", "gold_label": "neutral"}',  # 10
        '{"sentence1": "a", "sentence2": 3, "gold_label": "neutral"}',  # 11 wrong type
        '{"sentence1": "a", "gold_label": "neutral"}',  # 12
        '{"sentence1": "a", "sentence2": "b", "gold_label": "-"}',  # 13 no gold label
        '{"sentence1": "a", "gold_label": "neutral"}',  # 14
    ]
    text = mednli_rows(6, prefix="tr") + "\n".join(bad) + "\n" + mednli_rows(1, prefix="tr")
    cfg = nli_files(tmp_path)
    path = write(tmp_path, "in/train.jsonl", text)
    cfg["train"] = str(path)
    # The default is to stop at the first bad row, naming its line.
    with pytest.raises(FinescopeError, match=r"train\.jsonl:7: malformed JSON"):
        prepare_task("nli", cfg, tmp_path / "out", 0)

    cfg["on_bad_rows"] = "skip"
    with pytest.warns(UserWarning) as caught:
        stats = prepare_task("nli", cfg, tmp_path / "out", 0)
    assert stats["train"]["items"] == 6  # the duplicate of tr0 on line 15 is left out too
    expected = {
        "duplicate id": {"count": 1, "examples": [f"{path}:15"]},
        "malformed JSON": {"count": 1, "examples": [f"{path}:7"]},
        "missing field": {"count": 4, "examples": [f"{path}:9", f"{path}:10", f"{path}:12"]},
        "no gold label": {"count": 1, "examples": [f"{path}:13"]},
        "not a JSON object": {"count": 1, "examples": [f"{path}:8"]},
        "wrong type": {"count": 1, "examples": [f"{path}:11"]},
    }
    assert read_json(tmp_path / "out" / "labels.json")["skipped_rows"] == expected
    message = next(str(w.message) for w in caught if "on_bad_rows" in str(w.message))
    assert message.startswith("tasks.nli.data.on_bad_rows is skip: 9 bad row(s) left out")
    assert f"missing field: 4 (e.g. {path}:9, {path}:10, {path}:12)" in message
    frame = data_report("nli", tmp_path / "out")
    skipped = frame[frame["split"] == "skipped"].set_index("label")["count"].to_dict()
    assert skipped == {reason: entry["count"] for reason, entry in expected.items()}


def test_skip_leaves_bad_ner_sentences_out(tmp_path):
    good = ner_tsv([S1, S2, S3] * 3, docstart=False)
    broken = "IL-2\tB-DNA\ngene\n\nNF-kappa\tB_protein\nB\tI-protein\n\n"
    n = good.count("\n")  # the broken sentences start on line n + 1
    cfg = ner_files(tmp_path)
    path = write(tmp_path, "in/train.tsv", good + broken)
    cfg |= {"train": str(path), "on_bad_rows": "skip"}
    with pytest.warns(UserWarning, match="2 bad row"):
        stats = prepare_task("ner", cfg, tmp_path / "out", 0)
    assert stats["train"]["items"] == 9
    assert read_json(tmp_path / "out" / "labels.json")["skipped_rows"] == {
        "missing token or tag": {"count": 1, "examples": [f"{path}:{n + 2}"]},
        "tag not in the scheme": {"count": 1, "examples": [f"{path}:{n + 4}"]},
    }
    rows = [
        json.dumps({"tokens": ["a", "b"], "tags": ["O"]}),
        json.dumps({"tokens": [], "tags": []}),
        json.dumps({"tokens": ["a", " "], "tags": ["O", "O"]}),
        json.dumps({"tokens": "a b", "tags": ["O", "O"]}),
    ]
    good = "".join(
        json.dumps({"tokens": [t for t, _ in s], "tags": [g for _, g in s]}) + "\n"
        for s in [S1, S2, S3] * 3
    )
    jsonl = write(tmp_path, "in/train.jsonl", good + "\n".join(rows) + "\n")
    cfg = {"source": "files", "format": "jsonl", "on_bad_rows": "skip"}
    cfg |= {split: str(jsonl) for split in ("train", "dev", "test")}
    with pytest.warns(UserWarning, match="12 bad row"):
        prepare_task("ner", cfg, tmp_path / "out2", 0)
    reasons = read_json(tmp_path / "out2" / "labels.json")["skipped_rows"]
    # Each split reads the same file, so each bad row counts three times.
    assert {r: e["count"] for r, e in reasons.items()} == {
        "empty token": 3,
        "no tokens": 3,
        "tokens/tags length mismatch": 3,
        "wrong type": 3,
    }
    assert reasons["no tokens"]["examples"] == [f"{jsonl}:11"]


# ---------------------------------------------------------------------------------------------
# Data report
# ---------------------------------------------------------------------------------------------


def test_data_report(tmp_path):
    data_dir = tmp_path / "data" / "nli"
    prepare_task("nli", {"source": "synthetic", "train": 60, "dev": 9, "test": 12}, data_dir, 0)
    train = read_jsonl(data_dir / "train.jsonl")
    files = []
    for fraction in (10, 50):
        path = tmp_path / "subsets" / f"f{fraction}_s1.json"
        write_subset(path, subsample_ids(train, "nli", 1, fraction=fraction), "nli", fraction, 1)
        files.append(path)
    frame = data_report("nli", data_dir, files)
    columns = ["task", "split", "fraction", "seed", "label", "count", "probe_overlap"]
    assert list(frame.columns) == columns
    assert list(frame["split"].unique()) == ["train", "dev", "test", "train f10 s1", "train f50 s1"]
    assert frame["probe_overlap"].isna().all()  # no probe pool in this data folder
    counts = {(r.split, r.label): r.count for r in frame.itertuples()}
    assert counts[("train", "(items)")] == 60 and counts[("train", "neutral")] == 20
    assert counts[("train f10 s1", "(items)")] == 6
    assert counts[("train f50 s1", "entailment")] == 10
    csv_lines = frame.to_csv(index=False).splitlines()
    assert csv_lines[1] == "nli,train,,,(items),60,"
    assert csv_lines[-1] == "nli,train f50 s1,50,1,neutral,10,"


def test_data_report_ner_and_stale_subset(tmp_path):
    data_dir = tmp_path / "ner"
    prepare_task("ner", {"source": "synthetic", "train": 20, "dev": 5, "test": 5}, data_dir, 0)
    frame = data_report("ner", data_dir, [])
    labels = list(frame[frame["split"] == "dev"]["label"])
    assert labels == ["(items)", "(tokens)"] + NER_LABELS_5
    stale = tmp_path / "stale.json"
    write_subset(stale, ["train-0", "gone-1"], "ner", 10, 0)
    with pytest.raises(FinescopeError, match=r"1 ids \(e\.g\. 'gone-1'\) are not in"):
        data_report("ner", data_dir, [stale])


# ---------------------------------------------------------------------------------------------
# The real corpora beside the project (../shared/data), counts from its README.
# ---------------------------------------------------------------------------------------------


def _shared(name: str) -> Path:
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is absent (it sits beside the project)")
    return folder


def test_jnlpba_counts(tmp_path):
    folder = _shared("jnlpba")
    cfg = {
        "source": "files",
        "format": "tsv",
        "train": str(folder / "train.tsv"),
        "dev": str(folder / "devel.tsv"),
        "test": str(folder / "test.tsv"),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clean IOB2: no repairs expected
        stats = prepare_task("ner", cfg, tmp_path / "ner", 0)
    assert {s: v["items"] for s, v in stats.items()} == {"train": 16990, "dev": 1739, "test": 3856}
    assert stats["test"]["tokens"] == 101039
    assert sum(stats["test"]["labels"].values()) == 8662
    assert read_json(tmp_path / "ner" / "labels.json")["entity_types"] == NER_LABELS_5
    # train.tsv + devel.tsv are the 2,000 official training abstracts; their entity counts
    # equal the published JNLPBA training statistics.
    both = {t: stats["train"]["labels"][t] + stats["dev"]["labels"][t] for t in NER_LABELS_5}
    assert both == {"protein": 30269, "DNA": 9533, "RNA": 951, "cell_type": 6718, "cell_line": 3830}


def test_healthver_counts(tmp_path):
    folder = _shared("healthver")
    cfg = {
        "source": "files",
        "format": "jsonl",
        "dev": str(folder / "dev.jsonl"),
        "test": str(folder / "test.jsonl"),
    }
    stats = prepare_task("nli", cfg, tmp_path / "nli", 0)
    assert stats["test"] == {
        "items": 1823,
        "labels": {"contradiction": 425, "entailment": 671, "neutral": 727},
    }
    # No train file: train and dev are a seeded, stratified split of dev.jsonl.
    total = {
        label: stats["train"]["labels"][label] + stats["dev"]["labels"][label]
        for label in ("entailment", "contradiction", "neutral")
    }
    assert total == {"entailment": 533, "contradiction": 391, "neutral": 993}
    assert stats["train"]["items"] + stats["dev"]["items"] == 1917
    assert stats["dev"]["items"] == 192
    for label, count in total.items():
        assert abs(stats["dev"]["labels"][label] - 192 * count / 1917) <= 1
    prov = read_json(tmp_path / "nli" / "labels.json")["provenance"]
    assert prov["train"]["derived_from"] == "dev"
    assert prov["train"]["source"] == str(folder / "dev.jsonl")
    ids = [item["id"] for item in read_jsonl(tmp_path / "nli" / "test.jsonl")]
    assert len(set(ids)) == 1823  # pairID used as id
