"""Metric collections and report figures (confusion matrix)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure  # not pyplot: importing ferlab keeps the user's backend
from torchmetrics import MetricCollection
from torchmetrics.classification import (
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
        # compute groups share state between metrics whose states matched after the first
        # update (e.g. top-1 and top-2 on a constant early prediction): wrong numbers after
        compute_groups=False,
    )


def uniform_prior_metrics(num_classes: int, stage: str) -> MetricCollection:
    """Accuracy and balanced accuracy (the mean of the per-class recalls) of the predictions
    moved to a uniform class prior (``ferlab.priors``): ``val/acc_uniform_prior`` ..."""
    return MetricCollection(
        {"acc": MulticlassAccuracy(num_classes, average="micro"),
         "acc_macro": MulticlassAccuracy(num_classes, average="macro")},
        prefix=f"{stage}/", postfix="_uniform_prior", compute_groups=False)


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
    fig = Figure(figsize=(1.0 + 0.75 * n, 0.6 + 0.7 * n), dpi=100)
    ax = fig.subplots()
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


# --- the evaluation report ---------------------------------------------------------------------

def evaluation_metrics(probs: torch.Tensor, labels: torch.Tensor,
                       class_names: Sequence[str], n_bins: int = 15) -> dict:
    """Every number of the evaluation report for probabilities (N, C) and labels (N,)."""
    from torchmetrics.classification import (
        MulticlassCalibrationError,
        MulticlassF1Score,
        MulticlassPrecision,
    )

    c = len(class_names)
    probs, labels = probs.float(), labels.long()
    out = {
        "n": len(labels),
        "acc": MulticlassAccuracy(c, average="micro")(probs, labels).item(),
        "acc_macro": MulticlassAccuracy(c, average="macro")(probs, labels).item(),
        "nll": torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels).item(),
        "ece": MulticlassCalibrationError(c, n_bins=n_bins, norm="l1")(probs, labels).item(),
    }
    for k in (2, 3):
        if k < c:
            out[f"acc_top{k}"] = MulticlassAccuracy(c, top_k=k, average="micro")(
                probs, labels).item()
    precision = MulticlassPrecision(c, average="none")(probs, labels)
    recall = MulticlassRecall(c, average="none")(probs, labels)
    f1 = MulticlassF1Score(c, average="none")(probs, labels)
    support = torch.bincount(labels, minlength=c)
    out["per_class"] = {
        name: {"precision": precision[i].item(), "recall": recall[i].item(),
               "f1": f1[i].item(), "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    out["confusion_matrix"] = confusion_matrix(c)(probs.argmax(1), labels).tolist()
    ranks = true_class_rank(probs, labels)
    wrong = ranks[ranks > 0]
    out["wrong_answer_rank"] = {str(r + 1): int((wrong == r).sum()) for r in range(1, c)}
    return out


def true_class_rank(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """0 when the true class is the model's first guess, 1 when second, ... (ties count as
    ahead of the true class)."""
    true_p = probs.gather(1, labels[:, None])
    return (probs >= true_p).sum(1) - 1


def fold_probabilities(probs: torch.Tensor, label_map: Sequence[int],
                       num_classes: int) -> torch.Tensor:
    """Sum the probabilities of classes that a coarser view merges (e.g. disgust into angry);
    a class mapped to -1 (contempt outside the eight-class view) is dropped and the rest
    renormalised."""
    index = torch.as_tensor(label_map, device=probs.device)
    keep = index >= 0
    folded = torch.zeros(len(probs), num_classes, device=probs.device,
                         dtype=probs.dtype).index_add_(1, index[keep], probs[:, keep])
    return folded if keep.all() else folded / folded.sum(1, keepdim=True).clamp_min(1e-12)


def per_class_figure(per_class: dict[str, dict], title: str = "") -> Figure:
    names = list(per_class)
    x = np.arange(len(names))
    fig = Figure(figsize=(1.0 + 0.9 * len(names), 3.6), dpi=100)
    ax = fig.subplots()
    for offset, key in ((-0.2, "precision"), (0.2, "recall")):
        values = [per_class[n][key] for n in names]
        bars = ax.bar(x + offset, values, width=0.4, label=key)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1.08)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "per-class precision and recall")
    fig.tight_layout()
    return fig


def reliability_figure(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15,
                       title: str = "") -> Figure:
    """Accuracy against confidence per confidence bin (a calibrated model lies on the
    diagonal), with the share of samples per bin."""
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    bins = torch.bucketize(confidence, edges[1:-1])
    counts = torch.bincount(bins, minlength=n_bins).float()
    acc = torch.zeros(n_bins).index_add_(0, bins, correct) / counts.clamp_min(1)
    mids = (edges[:-1] + edges[1:]) / 2
    # matplotlib draws numpy arrays (tensors go through a deprecated numpy protocol)
    counts, acc, mids = counts.numpy(), acc.numpy(), mids.numpy()
    fig = Figure(figsize=(4.2, 4.2), dpi=100)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.bar(mids[counts > 0], acc[counts > 0], width=1 / n_bins, edgecolor="black", alpha=0.7,
           label="accuracy")
    ax.bar(mids, counts / counts.sum(), width=1 / n_bins, alpha=0.3, label="share of samples")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or "reliability diagram")
    fig.tight_layout()
    return fig


def rank_figure(rank_counts: dict[str, int], title: str = "") -> Figure:
    """Where the true class sits among the model's guesses when the first guess is wrong."""
    keys = list(rank_counts)
    values = np.array([rank_counts[k] for k in keys], dtype=float)
    share = values / max(values.sum(), 1)
    fig = Figure(figsize=(4.5, 3.2), dpi=100)
    ax = fig.subplots()
    bars = ax.bar(keys, share)
    ax.bar_label(bars, labels=[f"{s:.0%}" for s in share], fontsize=8)
    ax.set_xlabel("rank of the true class among the guesses")
    ax.set_ylabel("share of wrong answers")
    ax.set_ylim(0, 1.05)
    ax.set_title(title or "wrong answers: where was the truth?")
    fig.tight_layout()
    return fig


def mistakes_figure(faces: np.ndarray, probs: torch.Tensor, labels: torch.Tensor,
                    class_names: Sequence[str], count: int = 24, title: str = "") -> Figure:
    """The most confident mistakes: each face with its true and predicted class."""
    confidence, predicted = probs.max(1)
    wrong = torch.nonzero(predicted != labels).flatten()
    order = wrong[torch.argsort(confidence[wrong], descending=True)][:count].tolist()
    cols = 8
    rows = max(1, -(-len(order) // cols))
    fig = Figure(figsize=(cols * 1.3, rows * 1.55), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        ax.imshow(faces[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"T {class_names[labels[i]]}\nP {class_names[predicted[i]]} "
                     f"{confidence[i]:.2f}", fontsize=6.5)
    fig.suptitle(title or "most confident mistakes (T true, P predicted)", fontsize=9)
    fig.tight_layout()
    return fig
