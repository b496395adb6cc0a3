"""Labelled folder datasets (``<root>/<class>/<image>``: CK+48, JAFFE or KDEF exports,
RAF-DB-style folders) mapped onto ferlab's classes for cross-dataset evaluation."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ferlab.data.labels import EMOTIONS, MERGED_INTO, VOCABULARY

log = logging.getLogger(__name__)

# Folder names that other FER datasets use, mapped to ferlab's vocabulary.
CLASS_ALIASES: dict[str, str] = {
    "anger": "angry", "angry": "angry", "an": "angry",
    "disgust": "disgust", "disgusted": "disgust", "di": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear", "fe": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy", "ha": "happy",
    "sad": "sad", "sadness": "sad", "sa": "sad",
    "surprise": "surprise", "surprised": "surprise", "su": "surprise",
    "neutral": "neutral", "calm": "neutral", "ne": "neutral",
    "contempt": "contempt", "contemptuous": "contempt", "co": "contempt",
}


@dataclass
class LabelledFaces:
    """Faces read from a labelled folder, and what was left out and why."""

    faces: np.ndarray  # (N, 48, 48) uint8
    labels: np.ndarray  # (N,) int64, indices into the model's classes
    sources: list[str]
    excluded_classes: dict[str, int] = field(default_factory=dict)  # folder -> images
    no_face: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # file -> reason


def read_labelled_folder(
    root: str | os.PathLike,
    classes: tuple[str, ...],
    load_face: Callable[[Path], np.ndarray | None],
    class_map: Mapping[str, str] | None = None,
    unreadable_errors: tuple[type[BaseException], ...] = (ValueError, OSError),
) -> LabelledFaces:
    """Read ``root/<class>/<image>`` with ``load_face(path)`` -> a (48, 48) uint8 face or None
    (no face found). Folder names map through ``class_map`` then the built-in aliases; a class
    the model lacks (e.g. contempt) is reported and excluded."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"No labelled folder dataset at {root} (expected "
                                "<root>/<class>/<image>).")
    aliases = {**CLASS_ALIASES, **{k.lower(): v for k, v in (class_map or {}).items()}}
    unknown_targets = {v for v in aliases.values() if v not in VOCABULARY}
    if unknown_targets:
        raise ValueError(f"class_map maps to {sorted(unknown_targets)}, which are not ferlab "
                         f"classes {VOCABULARY}.")
    merged = MERGED_INTO if len(classes) < len(EMOTIONS) else {}
    out = LabelledFaces(np.zeros((0, 48, 48), np.uint8), np.zeros(0, np.int64), [])
    faces, labels = [], []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root} holds no class folders (expected <root>/<class>/<image>).")
    for folder in folders:
        emotion = aliases.get(folder.name.lower())
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        if emotion is None or merged.get(emotion, emotion) not in classes:
            out.excluded_classes[folder.name] = len(files)
            continue
        label = classes.index(merged.get(emotion, emotion))
        for file in files:
            try:
                face = load_face(file)
            except unreadable_errors as err:
                out.unreadable[str(file)] = str(err)
                continue
            if face is None:
                out.no_face.append(str(file))
                continue
            faces.append(face)
            labels.append(label)
            out.sources.append(str(file))
    if out.excluded_classes:
        log.warning("Excluded class folders the model does not know: %s", out.excluded_classes)
    if faces:
        out.faces, out.labels = np.stack(faces), np.array(labels, dtype=np.int64)
    return out
