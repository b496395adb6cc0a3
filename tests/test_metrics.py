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


def test_collection_keeps_metrics_apart_after_a_constant_first_batch():
    # an untrained net predicts one class for everything: top-1 and top-2 states then agree,
    # and torchmetrics' compute groups would merge them for good
    metrics = classification_metrics(3, "val")
    constant = torch.tensor([[0.1, 0.2, 0.7]] * 4)
    metrics.update(constant, torch.tensor([0, 0, 0, 0]))
    metrics.update(PROBS, LABELS)
    values = metrics.compute()
    assert values["val/acc"].item() == pytest.approx(3 / 10)
    assert values["val/acc_top2"].item() == pytest.approx(4 / 10)
    # recall: class 0 1/6, class 1 1/2, class 2 1/2
    assert values["val/acc_macro"].item() == pytest.approx((1 / 6 + 1 / 2 + 1 / 2) / 3)


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


# --- evaluation report metrics: known answers --------------------------------------------------

def test_evaluation_metrics_known_answers():
    from ferlab.metrics import evaluation_metrics

    m = evaluation_metrics(PROBS, LABELS, ["a", "b", "c"])
    assert m["n"] == 6 and m["acc"] == pytest.approx(0.5) and m["acc_top2"] == pytest.approx(4 / 6)
    assert "acc_top3" not in m  # top-3 of three classes is always right: not reported
    expected_nll = -np.log(PROBS[torch.arange(6), LABELS].numpy()).mean()
    assert m["nll"] == pytest.approx(expected_nll, rel=1e-5)
    # class a: predicted a for rows 0, 3, 5 (one right) -> precision 1/3, recall 1/2
    assert m["per_class"]["a"]["precision"] == pytest.approx(1 / 3)
    assert m["per_class"]["a"]["recall"] == pytest.approx(1 / 2)
    assert m["per_class"]["a"]["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert m["per_class"]["c"]["support"] == 2
    # wrong rows 1, 3, 5: the truth was 3rd, 2nd, 3rd
    assert m["wrong_answer_rank"] == {"2": 1, "3": 2}


def test_expected_calibration_error_known_answer():
    from ferlab.metrics import evaluation_metrics

    # every prediction has confidence 0.8; half are right -> ECE = |0.8 - 0.5| = 0.3
    probs = torch.tensor([[0.8, 0.2]] * 4)
    labels = torch.tensor([0, 0, 1, 1])
    assert evaluation_metrics(probs, labels, ["x", "y"])["ece"] == pytest.approx(0.3)
    # perfectly calibrated: confidence 1.0 and always right
    assert evaluation_metrics(torch.eye(2), torch.tensor([0, 1]), ["x", "y"])["ece"] == 0


def test_true_class_rank():
    from ferlab.metrics import true_class_rank

    assert true_class_rank(PROBS, LABELS).tolist() == [0, 2, 0, 1, 0, 2]


def test_fold_probabilities_merges_disgust_into_angry():
    from ferlab.data.labels import label_map
    from ferlab.metrics import fold_probabilities

    probs = torch.tensor([[0.1, 0.3, 0.1, 0.2, 0.1, 0.1, 0.1]])
    folded = fold_probabilities(probs, label_map(6)[:7], 6)
    assert torch.allclose(folded, torch.tensor([[0.4, 0.1, 0.2, 0.1, 0.1, 0.1]]))


def test_fold_probabilities_drops_contempt_and_renormalises():
    from ferlab.data.labels import label_map
    from ferlab.metrics import fold_probabilities

    probs = torch.tensor([[0.1, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1, 0.2]])  # eight classes
    seven = fold_probabilities(probs, label_map(7), 7)
    assert torch.allclose(seven, probs[:, :7] / 0.8)
    six = fold_probabilities(probs, label_map(6), 6)
    assert torch.allclose(six, torch.tensor([[0.2, 0.1, 0.2, 0.1, 0.1, 0.1]]) / 0.8)


def test_report_figures_render():
    from ferlab.metrics import mistakes_figure, rank_figure, reliability_figure

    faces = np.zeros((6, 48, 48), np.uint8)
    fig = mistakes_figure(faces, PROBS, LABELS, ["a", "b", "c"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 3 and titles[0].startswith("T a\nP b")  # most confident mistake first
    assert reliability_figure(PROBS, LABELS).axes and rank_figure({"2": 1, "3": 2}).axes
