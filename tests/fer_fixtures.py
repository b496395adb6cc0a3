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


# --- FER+ ----------------------------------------------------------------------------------------
# FER+'s vote columns, and where each of ferlab's classes sits among them
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                   "contempt", "unknown", "NF")
FERPLUS_COLUMN_OF = {"neutral": 0, "happy": 1, "surprise": 2, "sad": 3, "angry": 4,
                     "disgust": 5, "fear": 6, "contempt": 7}
FERPLUS_FOLDERS = {"Training": "FER2013Train", "PublicTest": "FER2013Valid",
                   "PrivateTest": "FER2013Test"}


def make_votes(labels, seed: int = 0) -> np.ndarray:
    """Ten annotators per face: 7 for its FER2013 class, 2 for a neighbour, 1 outlier vote;
    every fifth training face's class is contempt instead (FER+ adds it)."""
    rng = np.random.default_rng(seed)
    votes = np.zeros((len(labels), len(FERPLUS_COLUMNS)), dtype=np.int64)
    for i, label in enumerate(labels):
        main = FERPLUS_COLUMN_OF[EMOTIONS[label]] if i % 5 else FERPLUS_COLUMN_OF["contempt"]
        others = [c for c in range(8) if c != main]
        second, outlier = rng.choice(others, size=2, replace=False)
        votes[i, main], votes[i, second], votes[i, outlier] = 7, 2, 1
    return votes


def write_ferplus_folders(root: Path, faces, votes, usages) -> Path:
    """FER+'s own layout: FER2013{Train,Valid,Test}/ of PNGs, each with its label.csv."""
    rows: dict[str, list[str]] = {}
    for i, (face, vote, usage) in enumerate(zip(faces, votes, usages)):
        folder = root / FERPLUS_FOLDERS[usage]
        folder.mkdir(parents=True, exist_ok=True)
        name = f"fer{i:07d}.png"
        cv2.imwrite(str(folder / name), face)
        rows.setdefault(folder.name, []).append(
            f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, vote)))
    for folder, lines in rows.items():
        (root / folder / "label.csv").write_text("\n".join(lines) + "\n")
    return root


def write_ferplus_votes_csv(path: Path, votes, usages, names=None) -> Path:
    """fer2013new.csv: Usage, Image name, the ten votes (an empty name: not a face)."""
    names = names if names is not None else [f"fer{i:07d}.png" for i in range(len(votes))]
    frame = pd.DataFrame({"Usage": usages, "Image name": names})
    for k, column in enumerate(FERPLUS_COLUMNS):
        frame[column] = np.asarray(votes)[:, k]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path
