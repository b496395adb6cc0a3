"""Class priors: the class mix a model's probabilities carry, and moving them to another mix.

A network trained with cross-entropy on FER2013 learns its training faces' class frequencies as
a prior (happy 25%, disgust 1.5%) and carries it to every face it sees. Its probabilities can be
moved to another prior without retraining (logit adjustment): multiply each class's probability
by target / learnt prior and renormalise. ``"train"`` keeps the learnt prior (the model as
trained), ``"uniform"`` gives every class the same prior (what a class-balanced accuracy
rewards), and a ``{class: frequency}`` mapping names any other mix.

Every checkpoint and model file records, under :data:`PRIOR_KEY`, ``{"train": {class: freq},
"output": {class: freq}, "faces": n, "splits": [...]}``: the training faces' frequencies and the
prior the model's outputs carry (the same for plain cross-entropy; flattened by a logit-adjusted
loss or class-balanced sampling).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PRIOR_KEY = "ferlab_prior"
NAMED_PRIORS = ("train", "uniform")


def frequencies(counts: Sequence[float] | np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Class frequencies (summing to 1) from per-class counts, by class name."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape != (len(classes),) or counts.min() < 0 or counts.sum() <= 0:
        raise ValueError(f"class counts must be {len(classes)} non-negative numbers with a "
                         f"positive sum; got {counts.tolist()}.")
    return {c: float(n) for c, n in zip(classes, counts / counts.sum())}


def output_prior(train: Mapping[str, float], logit_adjust_tau: float = 0.0,
                 balanced_sampling: bool = False) -> dict[str, float]:
    """The prior a trained model's probabilities carry: the training mix for plain
    cross-entropy; uniform under class-balanced sampling; the training mix to the power
    1 - tau under a logit-adjusted loss (tau = 1: uniform), Menon et al. 2021."""
    freq = np.array(list(train.values()), dtype=np.float64)
    if balanced_sampling:
        freq = np.ones_like(freq)
    freq = np.maximum(freq, 1e-12) ** (1.0 - logit_adjust_tau)
    return {c: float(f) for c, f in zip(train, freq / freq.sum())}


def target_vector(prior: str | Mapping[str, float], classes: Sequence[str],
                  recorded: Mapping[str, Any] | None,
                  where: str = "the model") -> np.ndarray | None:
    """The factor (C,) that moves a model's probabilities to ``prior``: target / the prior its
    outputs carry, or None when they already carry it (``"train"`` on a plain model), so that
    the model's own numbers come back exactly."""
    if isinstance(prior, str) and prior not in NAMED_PRIORS:
        raise ValueError(f"prior must be one of {NAMED_PRIORS} or a {{class: frequency}} mapping; "
                         f"got {prior!r}.")
    if recorded is None:
        if prior == "train":
            return None
        raise ValueError(
            f"{where} records no class prior (it was written before ferlab recorded them), so its "
            f"probabilities cannot be moved to prior={prior!r}. Use prior='train', or export it "
            "again from its checkpoint with this ferlab.")
    output = _vector(recorded["output"], classes, f"{where}'s recorded output prior")
    if prior == "train":
        target = _vector(recorded["train"], classes, f"{where}'s recorded training prior")
    elif prior == "uniform":
        target = np.full(len(classes), 1.0 / len(classes))
    else:
        unknown = sorted(set(prior) - set(classes))
        if unknown:
            raise ValueError(f"prior names classes the model does not have: {unknown}; its "
                             f"classes are {list(classes)}.")
        target = _vector({c: prior.get(c, 0.0) for c in classes}, classes, "prior")
    if np.allclose(target, output, rtol=0, atol=1e-12):
        return None
    return target / np.maximum(output, 1e-12)


def adjust(probs: np.ndarray, factor: np.ndarray | None) -> np.ndarray:
    """Probabilities (B, C) moved by ``factor`` (from :func:`target_vector`) and renormalised."""
    if factor is None:
        return probs
    moved = probs * factor.astype(probs.dtype)
    return moved / np.maximum(moved.sum(-1, keepdims=True), np.finfo(probs.dtype).tiny)


def _vector(mapping: Mapping[str, float], classes: Sequence[str], what: str) -> np.ndarray:
    if not isinstance(mapping, Mapping) or set(mapping) != set(classes):
        raise ValueError(f"{what} must give a frequency for each of {list(classes)}; got "
                         f"{dict(mapping) if isinstance(mapping, Mapping) else mapping!r}.")
    values = np.array([mapping[c] for c in classes], dtype=np.float64)
    if not np.isfinite(values).all() or values.min() < 0 or values.sum() <= 0:
        raise ValueError(f"{what} must be non-negative numbers with a positive sum; got "
                         f"{values.tolist()}.")
    return values / values.sum()


def check_record(record: Any, classes: Sequence[str]) -> dict[str, Any]:
    """A class prior record read from a file, checked (ValueError saying what is wrong):
    ``train`` and ``output`` give a frequency for each class, ``faces`` is a count, ``splits``
    names splits. Only these keys are kept."""
    if not isinstance(record, Mapping):
        raise ValueError(f"it is a {type(record).__name__}, not a mapping.")
    checked: dict[str, Any] = {}
    for key in ("train", "output"):
        mapping = record.get(key)
        if not isinstance(mapping, Mapping) or set(mapping) != set(classes) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in mapping.values()):
            raise ValueError(f"{key!r} must give a number for each of {list(classes)}; got "
                             f"{mapping!r:.120}.")
        _vector(mapping, classes, repr(key))
        checked[key] = {c: float(mapping[c]) for c in classes}
    faces = record.get("faces")
    if faces is not None and (not isinstance(faces, int) or isinstance(faces, bool) or faces < 0):
        raise ValueError(f"'faces' must be a count; got {faces!r:.60}.")
    splits = record.get("splits", [])
    if not isinstance(splits, (list, tuple)) or not all(isinstance(s, str) for s in splits):
        raise ValueError(f"'splits' must be a list of split names; got {splits!r:.60}.")
    return {**checked, "faces": faces, "splits": list(splits)}
