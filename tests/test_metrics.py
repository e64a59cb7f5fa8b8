"""Metrics and losses: the numbers `mmva evaluate` and training report, checked against independent
implementations (torchmetrics, torch's cross-entropy) and hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision

from mmva.labels import EMOTIONS, SENTIMENTS
from mmva.train.losses import MultiTaskLoss, class_weights, label_ids
from mmva.train.metrics import compute_metrics, confusion_image, confusion_markdown, json_safe
from mmva.types import Utterance


def test_hand_computed_case():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    m = compute_metrics(y_true, y_pred, SENTIMENTS)
    assert m["support"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # rows are the truth, columns the prediction
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    neg = m["per_class"]["negative"]
    assert neg["precision"] == pytest.approx(0.5) and neg["recall"] == pytest.approx(0.5)
    assert m["per_class"]["neutral"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["positive"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_agrees_with_torchmetrics_on_random_predictions():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 7, 500)
    y_pred = np.where(rng.random(500) < 0.4, y_true, rng.integers(0, 7, 500))
    m = compute_metrics(y_true, y_pred, EMOTIONS)
    t, p = torch.as_tensor(y_true), torch.as_tensor(y_pred)
    assert m["weighted_f1"] == pytest.approx(float(MulticlassF1Score(7, average="weighted")(p, t)), abs=1e-6)
    assert m["macro_f1"] == pytest.approx(float(MulticlassF1Score(7, average="macro")(p, t)), abs=1e-6)
    assert m["weighted_precision"] == pytest.approx(
        float(MulticlassPrecision(7, average="weighted")(p, t)), abs=1e-6)
    assert m["accuracy"] == pytest.approx(float(MulticlassAccuracy(7, average="micro")(p, t)), abs=1e-6)
    assert np.sum(m["confusion_matrix"]) == 500


def test_unknown_labels_are_ignored_and_absent_classes_reported():
    m = compute_metrics([-1, 3, 3, -1], [0, 3, 4, 2], EMOTIONS)
    assert m["support"] == 2 and m["accuracy"] == 0.5
    assert set(m["per_class"]) == set(EMOTIONS)
    assert m["per_class"]["anger"]["support"] == 0
    assert len(m["confusion_matrix"]) == 7
    empty = compute_metrics([-1], [0], EMOTIONS)
    assert empty["support"] == 0 and np.isnan(empty["accuracy"])
    # an unlabelled split still gives strict JSON (null, not NaN)
    assert json.loads(json.dumps(json_safe(empty), allow_nan=False))["accuracy"] is None
    with pytest.raises(ValueError, match="items"):
        compute_metrics([0, 1], [0], EMOTIONS)


def test_confusion_renderings():
    m = compute_metrics([0, 1, 1], [0, 1, 0], ["a", "b"])
    assert "| **b** | 1 | 1 |" in confusion_markdown(m)
    img = confusion_image(m, cell=10)
    assert img.shape == (20, 20, 3) and img.dtype == np.uint8
    assert img[0, 0].sum() < img[0, 10].sum()  # a perfect row is darker where the mass is


def test_class_weights_come_from_label_columns_without_decoding():
    # The clips do not exist: weights must come from the labels alone.
    utts = [Utterance(path=f"/nonexistent/dia{i}_utt0.mp4", emotion=e, sentiment="neutral")
            for i, e in enumerate(["neutral"] * 6 + ["joy"] * 3 + ["anger"])]
    utts.append(Utterance(text="no label"))
    ids = label_ids(utts, "emotion")
    assert ids[-1] == -1
    w = class_weights(ids, len(EMOTIONS))
    counts = {"neutral": 6, "joy": 3, "anger": 1}
    for name, c in counts.items():
        assert float(w[EMOTIONS.index(name)]) == pytest.approx(10 / (3 * c), rel=1e-5)
    assert float(w[EMOTIONS.index("fear")]) == 1.0  # absent class: neutral weight
    assert float(class_weights([0] * 1000 + [1], 2, max_weight=5.0)[1]) == 5.0


def test_multitask_loss_matches_weighted_smoothed_cross_entropy():
    torch.manual_seed(0)
    logits = {"emotion": torch.randn(5, 7), "sentiment": torch.randn(5, 3)}
    emo, sen = torch.tensor([0, 3, 6, -1, 3]), torch.tensor([2, 1, -1, 0, 0])
    ew, sw = torch.rand(7) + 0.5, torch.rand(3) + 0.5
    loss = MultiTaskLoss(ew, sw, label_smoothing=0.1, sentiment_weight=0.5)(logits, emo, sen)
    e = F.cross_entropy(logits["emotion"], emo, weight=ew, ignore_index=-1, label_smoothing=0.1)
    s = F.cross_entropy(logits["sentiment"], sen, weight=sw, ignore_index=-1, label_smoothing=0.1)
    assert float(loss["emotion_loss"]) == pytest.approx(float(e))
    assert float(loss["loss"]) == pytest.approx(float(e + 0.5 * s))
    # a batch with no labelled item contributes zero, not NaN
    none = MultiTaskLoss()(logits, torch.full((5,), -1), torch.full((5,), -1))
    assert float(none["loss"]) == 0.0
