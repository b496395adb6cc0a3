"""A teacher's probabilities on the training faces, computed once and cached: distillation for
networks so small that running the teacher on every batch would cost far more than training
them (``data.teacher=ensemble``; ``module.teacher`` runs the teacher on every augmented batch)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from ferlab.data.labels import EMOTIONS, remap_labels
from ferlab.files import atomic_write

log = logging.getLogger(__name__)


def teacher_probabilities(teacher, faces: np.ndarray, num_classes: int,
                          cache_dir: str | os.PathLike) -> np.ndarray:
    """(N, num_classes) float32: what ``teacher`` (a shipped model or ensemble's name, a model
    file, checkpoint or run directory, or a list of them: an ensemble) answers for each uint8
    face (N, 48, 48), as it trained (its training prior) and with its own test-time
    augmentation. FER2013's seven classes, or the six-class view (disgust's probability added to
    angry's). Cached under ``cache_dir`` by the teacher's files and the faces' bytes."""
    from ferlab.inference.recognizer import EmotionRecognizer  # the one inference path

    recognizer = EmotionRecognizer(list(teacher) if isinstance(teacher, (list, tuple))
                                   else teacher, prior="train")
    if list(recognizer.classes) != list(EMOTIONS):
        raise ValueError(f"data.teacher={teacher} answers in the classes {recognizer.classes}; "
                         f"a teacher for FER2013 answers in its seven ({', '.join(EMOTIONS)}).")
    sources = recognizer.source if isinstance(recognizer.source, list) else [recognizer.source]
    key = hashlib.sha256(recognizer.tta.encode())
    for source in sources:
        key.update(Path(source).read_bytes())
    key.update(np.ascontiguousarray(faces).tobytes())
    cache_file = Path(cache_dir) / f"teacher-{key.hexdigest()[:20]}.npy"
    probs = None
    if cache_file.is_file():
        try:
            probs = np.load(cache_file, allow_pickle=False)
        except (OSError, ValueError):
            probs = None  # damaged: computed again below
        if probs is not None and probs.shape != (len(faces), len(EMOTIONS)):
            probs = None
    if probs is None:
        log.info("Teacher %s answering for %d training faces (once; cached in %s)", teacher,
                 len(faces), cache_file)
        probs = recognizer.predict_faces(faces).astype(np.float32)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache_file, "wb") as handle:
            np.save(handle, probs, allow_pickle=False)
    if num_classes == len(EMOTIONS):
        return probs
    view = np.zeros((len(probs), num_classes), np.float32)
    np.add.at(view.T, remap_labels(np.arange(len(EMOTIONS)), num_classes), probs.T)
    return view
