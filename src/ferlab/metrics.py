"""Metric collections and report figures (confusion matrix)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # figures are written to files and TensorBoard, never shown

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torchmetrics import MetricCollection  # noqa: E402
from torchmetrics.classification import (  # noqa: E402
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassRecall,
)


def classification_metrics(num_classes: int, stage: str) -> MetricCollection:
    """Accuracy, macro accuracy (mean per-class recall) and top-2 accuracy, keyed ``stage/name``."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "acc_macro": MulticlassAccuracy(num_classes, average="macro"),
            "acc_top2": MulticlassAccuracy(num_classes, top_k=2, average="micro"),
        },
        prefix=f"{stage}/",
    )


def per_class_recall(num_classes: int) -> MulticlassRecall:
    return MulticlassRecall(num_classes, average="none")


def confusion_matrix(num_classes: int) -> MulticlassConfusionMatrix:
    """Counts; rows are true classes, columns predicted classes."""
    return MulticlassConfusionMatrix(num_classes, normalize="none")


def confusion_figure(counts: torch.Tensor | np.ndarray, class_names: Sequence[str],
                     normalize: bool = True, title: str = "") -> Figure:
    """A confusion-matrix figure; ``normalize`` divides each row by its true-class count."""
    counts = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, dtype=float)
    values = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * n, 0.6 + 0.7 * n), dpi=100)
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = values.max() / 2 if values.size else 0
    for i in range(n):
        for j in range(n):
            text = f"{values[i, j]:.2f}" if normalize else f"{int(values[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if values[i, j] > threshold else "black")
    default = "confusion matrix (row-normalised)" if normalize else "confusion matrix"
    ax.set_title(title or default)
    fig.tight_layout()
    return fig
