"""Readers for the forms FER2013 is distributed in, with errors that name the offending file/row.

Supported layouts of the data root:

* ``fer2013.csv`` - the original release, columns ``emotion,pixels,Usage``;
* ``icml_face_data.csv`` - the same data with columns ``emotion, Usage, pixels``;
* the image-folder release - ``train/<class>/Training_*.jpg`` and
  ``test/<class>/{PublicTest,PrivateTest}_*.jpg``.

The data root may also point straight at one of the CSV files.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ferlab.data.labels import EMOTIONS, FACE_SIZE, SPLITS, USAGE_TO_SPLIT
from ferlab.progress import track

log = logging.getLogger(__name__)

CSV_NAMES: tuple[str, ...] = ("fer2013.csv", "icml_face_data.csv")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")
IMAGE_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("Training",),
    "test": ("PublicTest", "PrivateTest"),
}
CSV_COLUMNS: tuple[str, ...] = ("emotion", "pixels", "Usage")
NUM_PIXELS = FACE_SIZE * FACE_SIZE

WHERE_TO_GET = (
    "FER2013 comes from the ICML 2013 'Challenges in Representation Learning' challenge "
    "(Kaggle: 'challenges-in-representation-learning-facial-expression-recognition-challenge' "
    "for fer2013.csv / icml_face_data.csv, or the 'FER-2013' image-folder release). "
    "Put it in a folder and point ferlab at it with data.root=/path/to/fer2013 or the "
    "environment variable FERLAB_DATA. Accepted layouts: <root>/fer2013.csv, "
    "<root>/icml_face_data.csv, or <root>/train/<class>/Training_*.jpg with "
    "<root>/test/<class>/PublicTest_*.jpg and PrivateTest_*.jpg."
)


class DataNotFoundError(FileNotFoundError):
    """The data root does not exist or holds no FER2013 layout that ferlab can read."""


class DataFormatError(ValueError):
    """A FER2013 file exists but its content is not what the format promises."""


class SplitTable:
    """A dataclass of per-face arrays with a ``splits`` array (index into SPLITS)."""

    splits: np.ndarray

    def __len__(self) -> int:
        return len(self.splits)

    def select(self, split: str):
        """The faces of one split ("train", "val" or "test"): every array cut alike."""
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
        keep = self.splits == SPLITS.index(split)
        return type(self)(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})


@dataclass(frozen=True)
class FaceTable(SplitTable):
    """All faces of a FER2013 copy: uint8 pixels, FER2013 label ids, split ids and origins."""

    faces: np.ndarray  # (N, 48, 48) uint8
    labels: np.ndarray  # (N,) int64, FER2013 ids 0..6
    splits: np.ndarray  # (N,) int8, index into SPLITS
    sources: np.ndarray  # (N,) str, file path or "file.csv:line N"


@dataclass(frozen=True)
class Source:
    """Where a FER2013 copy lives and in which form."""

    kind: str  # "csv" or "folder"
    path: Path  # the CSV file, or the folder holding train/ and test/

    def files(self) -> list[Path]:
        if self.kind == "csv":
            return [self.path]
        return sorted(_iter_image_files(self.path))

    def fingerprint(self) -> str:
        """A hash of every file's relative path, size and mtime: changes when the source does."""
        digest = hashlib.sha256(self.kind.encode())
        for file in self.files():
            stat = file.stat()
            rel = file.relative_to(self.path) if self.kind == "folder" else file.name
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def read(self) -> FaceTable:
        """Decode and validate every face."""
        return read_csv(self.path) if self.kind == "csv" else read_image_folder(self.path)


def locate(root: str | os.PathLike) -> Source:
    """Detect which FER2013 layout ``root`` holds."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataNotFoundError(f"No FER2013 data at {root.resolve()} (the path does not exist). "
                                f"{WHERE_TO_GET}")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataNotFoundError(f"{root} is a file but not a CSV. {WHERE_TO_GET}")
        return Source("csv", root)
    for name in CSV_NAMES:
        if (root / name).is_file():
            return Source("csv", root / name)
    if all((root / folder).is_dir() for folder in IMAGE_FOLDERS):
        return Source("folder", root)
    found = sorted(p.name for p in root.iterdir())[:10]
    raise DataNotFoundError(
        f"No FER2013 layout found in {root.resolve()} (it holds: {found or 'nothing'}). "
        f"{WHERE_TO_GET}"
    )


def read_csv(path: str | os.PathLike) -> FaceTable:
    """Read ``fer2013.csv`` or ``icml_face_data.csv`` (column names may carry spaces)."""
    path = Path(path)
    try:
        # blank lines kept as rows (then dropped) so that every row knows its line in the file
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{path}: not a readable CSV file ({err}).") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in CSV_COLUMNS if c not in frame.columns]
    if missing:
        raise DataFormatError(
            f"{path}: missing column(s) {missing}; found {list(frame.columns)}. A FER2013 CSV has "
            f"the columns {list(CSV_COLUMNS)} (icml_face_data.csv spells them ' Usage', ' pixels')."
        )
    lines = np.arange(len(frame)) + 2  # +1 for the header, +1 for 1-based lines
    blank = (frame == "").all(axis=1).to_numpy()
    frame, lines = frame[~blank].reset_index(drop=True), lines[~blank]
    if frame.empty:
        raise DataFormatError(f"{path}: the CSV has a header but no rows.")

    def where(i: int) -> str:
        return f"{path}:line {lines[i]}"

    labels = pd.to_numeric(frame["emotion"].str.strip(), errors="coerce")
    bad = ~labels.isin(range(len(EMOTIONS)))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataFormatError(
            f"{where(i)}: emotion label {frame['emotion'].iloc[i]!r} is not an integer in "
            f"0..{len(EMOTIONS) - 1} ({', '.join(f'{k}={e}' for k, e in enumerate(EMOTIONS))})."
        )
    usage = frame["Usage"].str.strip()
    bad = ~usage.isin(list(USAGE_TO_SPLIT))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataFormatError(
            f"{where(i)}: Usage {usage.iloc[i]!r} is not one of {list(USAGE_TO_SPLIT)}."
        )

    faces = np.empty((len(frame), FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    for i, text in enumerate(frame["pixels"]):
        faces[i] = _parse_pixels(text, where(i))

    split_ids = usage.map({u: SPLITS.index(s) for u, s in USAGE_TO_SPLIT.items()})
    return FaceTable(
        faces=faces,
        labels=labels.to_numpy(dtype=np.int64),
        splits=split_ids.to_numpy(dtype=np.int8),
        sources=np.array([where(i) for i in range(len(frame))]),
    )


def _parse_pixels(text: str, where: str) -> np.ndarray:
    tokens = text.split()
    if len(tokens) != NUM_PIXELS:
        raise DataFormatError(
            f"{where}: the pixels field has {len(tokens)} values; expected {NUM_PIXELS} "
            f"space-separated integers in 0..255 ({FACE_SIZE}x{FACE_SIZE} grey pixels)."
        )
    try:
        values = np.array(tokens, dtype=np.int64)
    except ValueError as err:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise DataFormatError(
            f"{where}: pixel value {bad!r} is not an integer; expected {NUM_PIXELS} integers "
            "in 0..255."
        ) from err
    if values.min() < 0 or values.max() > 255:
        bad = values[(values < 0) | (values > 255)][0]
        raise DataFormatError(f"{where}: pixel value {bad} is outside 0..255.")
    return values.astype(np.uint8).reshape(FACE_SIZE, FACE_SIZE)


def _iter_image_files(root: Path) -> Iterator[Path]:
    """Every image file of the image-folder layout, checking folder and file names."""
    for folder, usages in IMAGE_FOLDERS.items():
        present = set()
        for class_dir in sorted((root / folder).iterdir()):
            if class_dir.name.startswith("."):
                continue
            if not class_dir.is_dir():
                raise DataFormatError(
                    f"{class_dir}: a file in {root / folder}, which may only hold the class "
                    f"folders {', '.join(EMOTIONS)}; move it out.")
            if class_dir.name.lower() not in EMOTIONS:
                raise DataFormatError(
                    f"{class_dir}: unknown class folder; {root / folder} may only hold the "
                    f"folders {', '.join(EMOTIONS)}."
                )
            present.add(class_dir.name.lower())
            for file in class_dir.iterdir():
                if file.name.startswith("."):
                    continue
                usage = file.name.split("_", 1)[0]
                if usage not in usages or file.suffix.lower() not in IMAGE_SUFFIXES:
                    raise DataFormatError(
                        f"{file}: unexpected file in {folder}/; expected images named "
                        f"{' or '.join(u + '_<id>.jpg' for u in usages)} (the split comes from "
                        "the name)."
                    )
                yield file
        absent = [e for e in EMOTIONS if e not in present]
        if absent:
            log.warning("%s has no folder for %s: this copy of FER2013 has no %s faces (the "
                        "release has all seven classes in train/ and test/).", root / folder,
                        ", ".join(absent), "/".join(absent))


def decode_face(file: Path) -> np.ndarray:
    data = np.fromfile(file, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is None:
        raise DataFormatError(f"{file}: the file does not decode as an image.")
    if image.shape != (FACE_SIZE, FACE_SIZE):
        raise DataFormatError(
            f"{file}: image is {image.shape[1]}x{image.shape[0]}; FER2013 faces are "
            f"{FACE_SIZE}x{FACE_SIZE}."
        )
    return image


def read_image_folder(root: str | os.PathLike) -> FaceTable:
    """Read the image-folder release; the split comes from each file's name prefix."""
    root = Path(root)
    files = sorted(_iter_image_files(root))
    if not files:
        raise DataFormatError(f"{root}: train/ and test/ hold no images. {WHERE_TO_GET}")
    # cv2 releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        faces = np.stack(list(track(pool.map(decode_face, files), len(files), "Decoding FER2013")))
    usage_split = {u: SPLITS.index(s) for u, s in USAGE_TO_SPLIT.items()}
    return FaceTable(
        faces=faces,
        labels=np.array([EMOTIONS.index(f.parent.name.lower()) for f in files], dtype=np.int64),
        splits=np.array([usage_split[f.name.split("_", 1)[0]] for f in files], dtype=np.int8),
        sources=np.array([str(f.relative_to(root)) for f in files]),
    )
