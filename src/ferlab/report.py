"""The evaluation report directory: metrics.json, figures and a report.md that ties them up."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from ferlab.metrics import (
    confusion_figure,
    mistakes_figure,
    per_class_figure,
    rank_figure,
    reliability_figure,
)


def save_figures(out: Path, name: str, faces: np.ndarray, probs: torch.Tensor,
                 labels: torch.Tensor, metrics: dict[str, Any],
                 class_names: Sequence[str]) -> dict[str, str]:
    """Write the report figures of one dataset; return {figure: file name}."""
    counts = np.array(metrics["confusion_matrix"])
    figures: dict[str, Figure] = {
        "confusion_counts": confusion_figure(counts, class_names, normalize=False,
                                             title=f"{name}: confusion matrix (counts)"),
        "confusion_normalised": confusion_figure(counts, class_names,
                                                 title=f"{name}: confusion matrix (by row)"),
        "per_class": per_class_figure(metrics["per_class"], title=f"{name}: precision / recall"),
        "reliability": reliability_figure(probs, labels,
                                          title=f"{name}: reliability (ECE {metrics['ece']:.3f})"),
        "wrong_answer_rank": rank_figure(metrics["wrong_answer_rank"],
                                         title=f"{name}: rank of the truth when wrong"),
        "mistakes": mistakes_figure(faces, probs, labels, class_names,
                                    title=f"{name}: most confident mistakes"),
    }
    files = {}
    out.mkdir(parents=True, exist_ok=True)
    for key, fig in figures.items():
        files[key] = f"{name}_{key}.png"
        fig.savefig(out / files[key])
    return files


def markdown(report: dict[str, Any], figures: dict[str, dict[str, str]]) -> str:
    """report.md: headline table, then per dataset the details and figures."""
    head = report["model"]
    source, network = head["source"], head["network"]
    if isinstance(source, list):  # a user's ensemble: its members
        source = " + ".join(source)
    if isinstance(network, list):  # any ensemble: its members' probabilities averaged
        network = " + ".join(network) + " (probabilities averaged)"
    backend = f"; backend: {head['backend']}" if "backend" in head else ""
    lines = [f"# Evaluation of `{source}`", "",
             f"Model: `{network}`, {head['num_classes']} classes; test-time "
             f"augmentation: **{report['tta']}**{backend}; class prior: "
             f"**{report.get('prior', 'train')}**.", "",
             "| data | n | acc | balanced acc | top-2 | top-3 | NLL | ECE |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in report["datasets"].items():
        lines.append(f"| {name} | {m['n']} | {m['acc']:.4f} | {m['acc_macro']:.4f} | "
                     f"{m.get('acc_top2', float('nan')):.4f} | "
                     f"{m.get('acc_top3', float('nan')):.4f} | {m['nll']:.4f} | "
                     f"{m['ece']:.4f} |")
    for name, m in report["datasets"].items():
        lines += ["", f"## {name}", ""]
        if "no_tta" in m:
            lines.append(f"- Without TTA: acc {m['no_tta']['acc']:.4f}, macro "
                         f"{m['no_tta']['acc_macro']:.4f}; {report['tta']} changes acc by "
                         f"{m['acc'] - m['no_tta']['acc']:+.4f}.")
        for key in ("uniform_prior", "train_prior"):
            if key in m:
                v = m[key]
                recalls = ", ".join(f"{c} {r:.3f}" for c, r in v["recall"].items())
                lines.append(f"- With the {key.split('_')[0]} class prior: acc {v['acc']:.4f}, "
                             f"balanced acc {v['acc_macro']:.4f}; recall {recalls}.")
        if "clean" in m:
            c = m["clean"]
            lines.append(f"- Clean view: {c['removed']} of {m['n']} images are exact copies "
                         f"of training images; without them acc {c['acc']:.4f}, macro "
                         f"{c['acc_macro']:.4f} (n={c['n']}).")
        for key, view in (("seven_class", "Seven-class view (contempt left out)"),
                          ("six_class", "Six-class view (disgust folded into angry)")):
            if key in m:
                s = m[key]
                lines.append(f"- {view}: acc {s['acc']:.4f}, macro {s['acc_macro']:.4f}, "
                             f"top-2 {s['acc_top2']:.4f} (n={s['n']}).")
        for key, label in (("excluded_classes", "Excluded class folders"),
                           ("no_face", "Images without a detected face"),
                           ("unreadable", "Unreadable images")):
            if m.get(key):
                lines.append(f"- {label}: {m[key]}")
        ranks = m["wrong_answer_rank"]
        wrong = sum(ranks.values())
        if wrong:
            lines.append(f"- When wrong, the true class was the second guess in "
                         f"{ranks.get('2', 0) / wrong:.0%} of cases.")
        lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for cls, v in m["per_class"].items():
            lines.append(f"| {cls} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} "
                         f"| {v['support']} |")
        lines.append("")
        lines += [f"![{key}]({file})" for key, file in figures.get(name, {}).items()]
    return "\n".join(lines) + "\n"
