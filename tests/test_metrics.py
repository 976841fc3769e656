"""Downstream metrics against values computed by hand."""

from __future__ import annotations

import pytest
from seqeval.metrics import f1_score as seqeval_f1
from seqeval.scheme import IOB2

from finescope.errors import FinescopeError
from finescope.metrics import invalid_starts, ner_metrics, nli_metrics

LABELS = ["contradiction", "entailment", "neutral"]


def test_nli_metrics_by_hand():
    y_true = ["entailment", "entailment", "contradiction", "neutral", "neutral", "neutral"]
    y_pred = ["entailment", "neutral", "contradiction", "neutral", "entailment", "neutral"]
    m = nli_metrics(y_true, y_pred, LABELS)
    # contradiction: P=1, R=1 -> 1; entailment: P=1/2, R=1/2 -> 1/2; neutral: P=2/3, R=2/3 -> 2/3
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"] == pytest.approx(
        {"contradiction": 1.0, "entailment": 0.5, "neutral": 2 / 3}
    )
    assert m["macro_f1"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert m["score"] == m["macro_f1"]
    assert m["primary"] == "macro_f1" and m["task"] == "nli" and m["n"] == 6
    # rows = gold, columns = predicted, in LABELS order
    assert m["confusion"] == [[1, 0, 0], [0, 1, 1], [0, 1, 2]]


def test_nli_macro_f1_ignores_labels_absent_everywhere():
    m = nli_metrics(["entailment", "neutral"], ["entailment", "entailment"], LABELS)
    # entailment: P=1/2, R=1 -> 2/3; neutral: 0; contradiction occurs nowhere -> not averaged
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["per_class"]["contradiction"] == 0.0
    assert m["confusion"][0] == [0, 0, 0]


def test_nli_metrics_rejects_unknown_labels_and_length_mismatch():
    with pytest.raises(FinescopeError, match="not among"):
        nli_metrics(["entailment"], ["maybe"], LABELS)
    with pytest.raises(FinescopeError, match="2 gold labels but 1"):
        nli_metrics(["entailment", "neutral"], ["neutral"], LABELS)


def test_ner_metrics_by_hand():
    gold = [
        ["B-protein", "I-protein", "O", "B-DNA"],
        ["O", "B-cell_type", "I-cell_type", "O", "B-protein"],
    ]
    pred = [
        ["B-protein", "I-protein", "O", "B-protein"],  # 1 right, 1 wrong type
        ["O", "B-cell_type", "O", "O", "B-protein"],  # span too short, 1 right
    ]
    m = ner_metrics(gold, pred)
    # gold entities 4, predicted 4, exact matches 2
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(0.5)
    assert m["score"] == m["f1"] and m["primary"] == "f1" and m["task"] == "ner"
    # protein: gold 2, predicted 3, right 2 -> P 2/3, R 1, F1 0.8
    assert m["per_type"]["protein"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    assert m["per_type"]["DNA"]["f1"] == 0.0 and m["per_type"]["DNA"]["support"] == 1
    assert m["per_type"]["cell_type"]["f1"] == 0.0
    assert m["token_accuracy"] == pytest.approx(7 / 9)
    assert m["n"] == 2 and m["n_tokens"] == 9


def test_ner_strict_mode_ignores_stray_inside_tags():
    # Strict IOB2: I-X after O starts no entity, in gold or prediction.
    gold = [["O", "B-protein", "I-protein", "O"]]
    pred = [["O", "O", "I-protein", "O"]]
    m = ner_metrics(gold, pred)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["token_accuracy"] == pytest.approx(3 / 4)
    # An I- of another type does not continue an entity either.
    m = ner_metrics([["B-DNA", "I-DNA"]], [["B-DNA", "I-protein"]])
    assert m["f1"] == 0.0
    # ... while a perfect match with a stray I- in the gold counts only the real entity.
    m = ner_metrics([["B-DNA", "O", "I-DNA"]], [["B-DNA", "O", "I-DNA"]])
    assert m["f1"] == 1.0 and m["per_type"]["DNA"]["support"] == 1


def test_ner_metrics_without_entities_and_errors():
    m = ner_metrics([["O", "O"]], [["O", "O"]])
    assert m["f1"] == 0.0 and m["token_accuracy"] == 1.0 and m["per_type"] == {}
    with pytest.raises(FinescopeError, match="sentence 0 has 2 gold tags but 1"):
        ner_metrics([["O", "O"]], [["O"]])
    with pytest.raises(FinescopeError, match="1 gold sentences but 2"):
        ner_metrics([["O"]], [["O"], ["O"]])


def test_conlleval_counts_entities_opened_by_an_inside_tag():
    gold = [["O", "B-protein", "I-protein", "O", "B-DNA"], ["B-cell_type", "I-cell_type", "O"]]
    # A decoder's typical slip: entities opened with I- (after O and after another type).
    pred = [["O", "I-protein", "I-protein", "O", "I-DNA"], ["B-cell_type", "I-protein", "O"]]
    m = ner_metrics(gold, pred)
    # Strict IOB2: the two I-opened spans are no entities; "B-cell_type I-protein" is a
    # one-word cell_type (wrong span). Predicted 1, gold 3, right 0.
    assert m["f1"] == 0.0 and m["precision"] == 0.0 and m["recall"] == 0.0
    # Conlleval: I-protein I-protein and I-DNA are entities and match; B-cell_type and
    # I-protein are two wrong entities. Predicted 4, gold 3, right 2.
    assert m["precision_conlleval"] == pytest.approx(2 / 4)
    assert m["recall_conlleval"] == pytest.approx(2 / 3)
    assert m["f1_conlleval"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert m["f1_conlleval"] == pytest.approx(seqeval_f1(gold, pred))
    assert m["f1"] == pytest.approx(seqeval_f1(gold, pred, mode="strict", scheme=IOB2))
    assert m["invalid_starts"] == 3
    assert m["score"] == m["f1"]  # strict stays the primary score


def test_strict_and_conlleval_agree_on_valid_sequences():
    gold = [["B-protein", "I-protein", "O", "B-DNA"], ["O", "B-cell_type", "I-cell_type"]]
    pred = [["B-protein", "I-protein", "O", "B-protein"], ["O", "B-cell_type", "O"]]
    m = ner_metrics(gold, pred)
    assert m["invalid_starts"] == 0
    # gold 3 entities, predicted 3, right 1 (the first protein) under both rules
    assert m["f1_conlleval"] == pytest.approx(m["f1"]) == pytest.approx(1 / 3)
    assert invalid_starts(["I-X", "I-X", "B-Y", "I-Y", "I-X", "O", "I-Y"]) == 3
    assert ner_metrics([["O"]], [["O"]])["f1_conlleval"] == 0.0
