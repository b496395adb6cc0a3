"""Tiny synthetic FER2013 copies in every supported format, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ferlab.data.labels import EMOTIONS, FACE_SIZE, USAGE_TO_SPLIT

USAGES = tuple(USAGE_TO_SPLIT)


def make_faces(per_class: dict[str, int] | None = None, seed: int = 0):
    """Faces whose class is visible (a bright bar at a class-specific height) plus noise.

    Returns faces (N, 48, 48) uint8, FER2013 labels (N,) and usages (N,) in row order.
    """
    per_class = per_class or {"Training": 4, "PublicTest": 2, "PrivateTest": 2}
    rng = np.random.default_rng(seed)
    faces, labels, usages = [], [], []
    for usage, n in per_class.items():
        for label in range(len(EMOTIONS)):
            for _ in range(n):
                face = rng.integers(40, 120, size=(FACE_SIZE, FACE_SIZE)).astype(np.uint8)
                row = 4 + label * 6
                face[row:row + 5, 6:42] = 230
                faces.append(face)
                labels.append(label)
                usages.append(usage)
    return np.stack(faces), np.array(labels), np.array(usages)


def write_fer2013_csv(path: Path, faces, labels, usages, icml: bool = False) -> Path:
    """fer2013.csv (emotion,pixels,Usage) or icml_face_data.csv (emotion, Usage, pixels)."""
    pixels = [" ".join(map(str, f.ravel())) for f in faces]
    if icml:
        frame = pd.DataFrame({"emotion": labels, " Usage": usages, " pixels": pixels})
    else:
        frame = pd.DataFrame({"emotion": labels, "pixels": pixels, "Usage": usages})
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def write_image_folder(root: Path, faces, labels, usages) -> Path:
    """train/<class>/Training_<row>.jpg and test/<class>/{Public,Private}Test_<row>.jpg."""
    for row, (face, label, usage) in enumerate(zip(faces, labels, usages)):
        folder = root / ("train" if usage == "Training" else "test") / EMOTIONS[label]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{usage}_{row:06d}.jpg"), face, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return root
