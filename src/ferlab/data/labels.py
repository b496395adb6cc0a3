"""ferlab's label vocabulary: class names, the class views (FER2013's seven, the six-class remap,
FER+'s eight with contempt) and FER2013's split mapping."""

from __future__ import annotations

import numpy as np

# FER2013 label ids are the positions in this tuple (0=angry ... 6=neutral).
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# The six-class view of the original system: disgust (436 training faces) is merged into angry.
MERGED_INTO: dict[str, str] = {"disgust": "angry"}

# FER+'s eighth class, after FER2013's seven: an eight-class network's first seven outputs are
# FER2013's, so FER2013 label ids are also its class indices.
CONTEMPT = "contempt"
VOCABULARY: tuple[str, ...] = (*EMOTIONS, CONTEMPT)

# FER2013's "Usage" column names the split; written down once, used by every reader.
USAGE_TO_SPLIT: dict[str, str] = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SPLITS: tuple[str, ...] = tuple(USAGE_TO_SPLIT.values())

FACE_SIZE = 48  # FER2013 faces are 48x48 grey crops
SUPPORTED_NUM_CLASSES = (len(EMOTIONS), len(EMOTIONS) - len(MERGED_INTO), len(VOCABULARY))


def class_names(num_classes: int = len(EMOTIONS)) -> tuple[str, ...]:
    """Class names in output order for the seven-class, six-class (merged) or eight-class (with
    FER+'s contempt) view."""
    _check_num_classes(num_classes)
    if num_classes == len(VOCABULARY):
        return VOCABULARY
    if num_classes == len(EMOTIONS):
        return EMOTIONS
    return tuple(name for name in EMOTIONS if name not in MERGED_INTO)


def label_map(num_classes: int = len(EMOTIONS)) -> np.ndarray:
    """Lookup table from vocabulary ids (FER2013's 0..6, then contempt) to class indices of the
    chosen view; -1 where the view lacks the class (contempt outside the eight-class view)."""
    names = class_names(num_classes)
    merged = MERGED_INTO if num_classes < len(EMOTIONS) else {}
    return np.array([names.index(merged.get(e, e)) if merged.get(e, e) in names else -1
                     for e in VOCABULARY], dtype=np.int64)


def remap_labels(labels: np.ndarray, num_classes: int = len(EMOTIONS)) -> np.ndarray:
    """Map vocabulary ids (FER2013's label ids) to class indices of a class view."""
    return label_map(num_classes)[np.asarray(labels, dtype=np.int64)]


def _check_num_classes(num_classes: int) -> None:
    if num_classes not in SUPPORTED_NUM_CLASSES:
        raise ValueError(
            f"num_classes={num_classes} is not supported: FER2013 has {len(EMOTIONS)} classes "
            f"({', '.join(EMOTIONS)}), {SUPPORTED_NUM_CLASSES[1]} with disgust merged into "
            f"angry, FER+ {len(VOCABULARY)} with {CONTEMPT}. "
            "Choose data=fer2013, data=fer2013_6class or data=ferplus (data.num_classes=7 or 8)."
        )
