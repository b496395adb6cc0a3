from __future__ import annotations

import numpy as np
import pytest
import torch

from ferlab.metrics import (
    classification_metrics,
    confusion_figure,
    confusion_matrix,
    per_class_recall,
)

# 3 classes, 6 samples; hand-checked answers below
PROBS = torch.tensor([
    [0.7, 0.2, 0.1],  # true 0: top1 0
    [0.2, 0.5, 0.3],  # true 0: top1 1, top2 {1,2} -> miss
    [0.1, 0.6, 0.3],  # true 1: top1 1
    [0.4, 0.35, 0.25],  # true 1: top1 0, top2 {0,1} -> hit
    [0.3, 0.3001, 0.3999],  # true 2: top1 2
    [0.5, 0.3, 0.2],  # true 2: top1 0, top2 {0,1} -> miss
])
LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


def test_known_answers():
    values = classification_metrics(3, "val")(PROBS, LABELS)
    assert set(values) == {"val/acc", "val/acc_macro", "val/acc_top2"}
    assert values["val/acc"].item() == pytest.approx(3 / 6)
    assert values["val/acc_top2"].item() == pytest.approx(4 / 6)
    # recall per class: 1/2, 1/2, 1/2
    assert values["val/acc_macro"].item() == pytest.approx(0.5)


def test_macro_differs_from_micro_on_imbalanced_data():
    probs = torch.eye(2)[[0, 0, 0, 0, 1]]
    labels = torch.tensor([0, 0, 0, 1, 1])
    values = classification_metrics(2, "test")(probs, labels)
    assert values["test/acc"].item() == pytest.approx(4 / 5)
    assert values["test/acc_macro"].item() == pytest.approx((1 + 0.5) / 2)


def test_confusion_matrix_and_recall():
    preds = PROBS.argmax(1)
    counts = confusion_matrix(3)(preds, LABELS)
    np.testing.assert_array_equal(counts.numpy(), [[1, 1, 0], [1, 1, 0], [1, 0, 1]])
    np.testing.assert_allclose(per_class_recall(3)(preds, LABELS).numpy(), [0.5, 0.5, 0.5])


def test_confusion_figure_is_row_normalised():
    fig = confusion_figure(torch.tensor([[3, 1], [0, 2]]), ["a", "b"])
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["0.00", "0.25", "0.75", "1.00"]
    counts = confusion_figure(np.array([[3, 1], [0, 2]]), ["a", "b"], normalize=False)
    assert sorted(t.get_text() for t in counts.axes[0].texts) == ["0", "1", "2", "3"]
