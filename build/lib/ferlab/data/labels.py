"""The label vocabulary of FER2013: class names, the six-class remap and the split mapping."""

from __future__ import annotations

import numpy as np

# FER2013 label ids are the positions in this tuple (0=angry ... 6=neutral).
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# The six-class view of the original system: disgust (436 training faces) is merged into angry.
MERGED_INTO: dict[str, str] = {"disgust": "angry"}

# FER2013's "Usage" column names the split; written down once, used by every reader.
USAGE_TO_SPLIT: dict[str, str] = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SPLITS: tuple[str, ...] = tuple(USAGE_TO_SPLIT.values())

FACE_SIZE = 48  # FER2013 faces are 48x48 grey crops
SUPPORTED_NUM_CLASSES = (len(EMOTIONS), len(EMOTIONS) - len(MERGED_INTO))


def class_names(num_classes: int = len(EMOTIONS)) -> tuple[str, ...]:
    """Class names in output order for the seven-class or the six-class (merged) view."""
    _check_num_classes(num_classes)
    if num_classes == len(EMOTIONS):
        return EMOTIONS
    return tuple(name for name in EMOTIONS if name not in MERGED_INTO)


def label_map(num_classes: int = len(EMOTIONS)) -> np.ndarray:
    """Lookup table from FER2013 label ids (0..6) to class indices of the chosen view."""
    names = class_names(num_classes)
    merged = MERGED_INTO if num_classes < len(EMOTIONS) else {}
    return np.array([names.index(merged.get(e, e)) for e in EMOTIONS], dtype=np.int64)


def remap_labels(labels: np.ndarray, num_classes: int = len(EMOTIONS)) -> np.ndarray:
    """Map FER2013 label ids to class indices of the seven- or six-class view."""
    return label_map(num_classes)[np.asarray(labels, dtype=np.int64)]


def _check_num_classes(num_classes: int) -> None:
    if num_classes not in SUPPORTED_NUM_CLASSES:
        raise ValueError(
            f"num_classes={num_classes} is not supported: FER2013 has {len(EMOTIONS)} classes "
            f"({', '.join(EMOTIONS)}) or {SUPPORTED_NUM_CLASSES[1]} with disgust merged into "
            "angry. "
            "Choose data=fer2013 or data=fer2013_6class."
        )
