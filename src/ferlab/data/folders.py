"""Labelled folder datasets (``<root>/<class>/<image>``: CK+48, JAFFE or KDEF exports,
RAF-DB-style folders) mapped onto ferlab's classes: read for cross-dataset evaluation, or cached
memory-mapped for training, with split rules and subject-independent folds."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ferlab.data.labels import EMOTIONS, FACE_SIZE, MERGED_INTO, SPLITS, VOCABULARY
from ferlab.data.sources import DataFormatError, DataNotFoundError
from ferlab.data.transforms import to_face
from ferlab.progress import track

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


def class_aliases(class_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """Folder name (lower case) -> ferlab class: the built-in aliases and the user's own
    (``class_map``, e.g. ``{"0": "angry", "enojo": "angry"}``), checked."""
    aliases = {**CLASS_ALIASES, **{str(k).lower(): v for k, v in (class_map or {}).items()}}
    unknown_targets = {v for v in aliases.values() if v not in VOCABULARY}
    if unknown_targets:
        raise ValueError(f"class_map maps to {sorted(unknown_targets)}, which are not ferlab "
                         f"classes {VOCABULARY}.")
    return aliases


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
    aliases = class_aliases(class_map)
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


# --- folder sets for training -----------------------------------------------------------------
# the names a split folder may have in <root>/<split>/<class>/<image>
SPLIT_NAMES: dict[str, str] = {"train": "train", "training": "train", "val": "val",
                               "valid": "val", "validation": "val", "test": "test",
                               "testing": "test"}
DECODE_CHUNK = 4096  # images decoded per batch of threads (bounds what waits in memory)


@dataclass(frozen=True)
class FolderTable:
    """A labelled folder set as cached: faces memory-mapped, one row per image file."""

    faces: np.ndarray  # (N, 48, 48) uint8
    labels: np.ndarray  # (N,) int64, vocabulary ids (VOCABULARY)
    splits: np.ndarray  # (N,) int8, index into SPLITS from the split folders, -1 without them
    sources: np.ndarray  # (N,) str, the file relative to the root
    found: np.ndarray  # (N,) bool, False where face detection found no face


@dataclass(frozen=True)
class FolderSource:
    """A folder of labelled images: ``root/<split>/<class>/*`` or ``root/<class>/*``."""

    kind: str  # "split_folders" or "class_folders"
    path: Path
    class_map: tuple[tuple[str, str], ...] = ()
    detect: str | None = None  # None: every image is a face; else the detector to crop with

    def files(self) -> list[tuple[Path, int, int]]:
        """(file, split id or -1, vocabulary id) of every image, in a fixed order."""
        aliases = class_aliases(dict(self.class_map))
        tops = _subfolders(self.path)
        groups = ([(t, SPLITS.index(SPLIT_NAMES[t.name.lower()])) for t in tops]
                  if self.kind == "split_folders" else [(self.path, -1)])
        out = []
        for folder, split in groups:
            for class_dir in _subfolders(folder):
                emotion = aliases.get(class_dir.name.lower())
                if emotion is None:
                    raise DataFormatError(
                        f"{class_dir}: the folder name {class_dir.name!r} is no class ferlab "
                        f"knows ({', '.join(VOCABULARY)} or an alias such as anger, happiness); "
                        f"map it with data.class_map={{{class_dir.name}: <class>}} or move it out.")
                label = VOCABULARY.index(emotion)
                out += [(f, split, label) for f in sorted(class_dir.rglob("*"))
                        if f.is_file() and not f.name.startswith(".")]
        if not out:
            raise DataFormatError(f"{self.path} holds no images in its class folders.")
        return out

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"{self.kind}\0{self.class_map}\0{self.detect}".encode())
        for file, _, _ in self.files():
            stat = file.stat()
            digest.update(f"{file.relative_to(self.path)}\0{stat.st_size}\0"
                          f"{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def read_into(self, store) -> dict[str, np.ndarray]:
        """Decode every image (any size, grey or colour) to a 48x48 grey face, detecting and
        cropping the largest face first when ``detect`` is set, straight into ``store``."""
        from ferlab.inference.detect import find_faces, make_detector
        from ferlab.inference.images import ImageError, read_image

        files = self.files()
        local = threading.local()  # a detector per thread: OpenCV's cascades are not shareable

        def load(file: Path) -> np.ndarray | None:
            try:
                if not self.detect:
                    return to_face(read_image(file, grey=True))
                if not hasattr(local, "detector"):
                    local.detector = make_detector(self.detect)
                found = find_faces(file, local.detector)
            except (ImageError, OSError) as err:
                raise DataFormatError(f"{file}: cannot be read as an image ({err}); remove it "
                                      "from the folder set.") from err
            return found[0][1] if found else None

        faces = store.empty("faces", (len(files), FACE_SIZE, FACE_SIZE), np.uint8)
        found = np.zeros(len(files), dtype=bool)
        paths = [f for f, _, _ in files]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            starts = range(0, len(paths), DECODE_CHUNK)
            for start in track(starts, len(starts), f"Decoding {self.path.name}"):
                for i, face in enumerate(pool.map(load, paths[start:start + DECODE_CHUNK]),
                                         start):
                    if face is not None:
                        faces[i], found[i] = face, True
        faces.flush()
        if not found.all():
            missed = [str(paths[i].relative_to(self.path)) for i in np.flatnonzero(~found)]
            log.warning("No face found in %d of %d images (left out): %s%s", len(missed),
                        len(paths), ", ".join(missed[:5]), " ..." if len(missed) > 5 else "")
        return {"faces": faces, "found": found,
                "labels": np.array([label for _, _, label in files], dtype=np.int64),
                "splits": np.array([split for _, split, _ in files], dtype=np.int8),
                "sources": np.array([str(f.relative_to(self.path)) for f in paths])}


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def locate_folder_set(root: str | os.PathLike, class_map: Mapping[str, str] | None = None,
                      detect: str | None = None) -> FolderSource:
    """The layout of a labelled folder set: split folders holding class folders, or class
    folders alone."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"No folder set at {root.resolve()} (not a folder). A folder "
                                "set is <root>/<class>/<image> or <root>/<split>/<class>/<image> "
                                "(split: train, val, test); point data.root at it.")
    from ferlab.inference.detect import DETECTORS  # cv2 and the detectors: only for photos

    if detect not in (None, *DETECTORS):
        raise ValueError(f"data.detect={detect!r}: choose null (the images are faces) or one "
                         f"of {list(DETECTORS)} (find and crop the largest face once, when the "
                         "set is cached).")
    class_aliases(class_map)  # checked here, before any decoding
    tops = _subfolders(root)
    if not tops:
        raise DataNotFoundError(f"{root} holds no folders; a folder set is "
                                "<root>/<class>/<image> or <root>/<split>/<class>/<image>.")
    split_named = [t for t in tops if t.name.lower() in SPLIT_NAMES]
    if split_named and len(split_named) != len(tops):
        others = [t.name for t in tops if t not in split_named]
        raise DataFormatError(f"{root} mixes split folders ({[t.name for t in split_named]}) "
                              f"with others ({others}); hold either split folders "
                              "(train, val, test) or class folders, not both.")
    kind = "split_folders" if split_named else "class_folders"
    pairs = tuple(sorted((str(k), str(v)) for k, v in (class_map or {}).items()))
    return FolderSource(kind, root, pairs, detect)


def subject_groups(sources: np.ndarray, pattern: str | None) -> np.ndarray:
    """Each image's subject: the first group of ``pattern`` searched in its file name (every
    image its own subject without a pattern)."""
    if not pattern:
        return np.asarray(sources, dtype=str)
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"data.group={pattern!r} is not a regular expression ({err}).") from err
    if regex.groups < 1:
        raise ValueError(f"data.group={pattern!r} has no group: its first group (...) must "
                         r"capture the subject id, e.g. '^(S\d+)_' for CK+'s S005_001_... names.")
    out = []
    for source in sources:
        match = regex.search(Path(str(source)).name)
        if match is None or match.group(1) is None:
            raise ValueError(f"data.group={pattern!r} finds no subject id in {source}; every "
                             "image's file name must match it.")
        out.append(match.group(1))
    return np.array(out)


def check_split_rule(val_fraction: float, test_fraction: float, folds: int, fold: int) -> None:
    """Refuse split settings no set can follow."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"data.val_fraction and data.test_fraction must be in [0, 1) with a sum "
                         f"below 1; got {val_fraction}, {test_fraction}.")
    if folds < 0 or folds == 1 or (folds and not 0 <= fold < folds):
        raise ValueError(f"data.folds={folds}, data.fold={fold}: k-fold needs folds >= 2 and "
                         "0 <= fold < folds (folds=0: no k-fold).")


def assign_splits(groups: np.ndarray, given: np.ndarray, val_fraction: float = 0.1,
                  test_fraction: float = 0.1, folds: int = 0, fold: int = 0,
                  seed: int = 0) -> np.ndarray:
    """Each image's split id (SPLITS): the split folders' where given; otherwise whole groups
    (subjects) are drawn, so that no subject is in two splits: with ``folds`` K > 0, fold
    ``fold`` of K is the test split (subject-independent k-fold), else a ``test_fraction`` of
    the subjects; a ``val_fraction`` of the remaining subjects validates."""
    check_split_rule(val_fraction, test_fraction, folds, fold)
    rng = np.random.default_rng(seed)
    out = np.asarray(given, dtype=np.int8).copy()
    if (out >= 0).all() and len(out):
        if folds:
            raise ValueError("data.folds needs one pool of images (<root>/<class>/<image>); "
                             "this set comes in split folders, which fix the test split.")
        if not (out == SPLITS.index("val")).any() and val_fraction:
            train = out == SPLITS.index("train")
            out[train] = _draw(groups[train], val_fraction, rng, SPLITS.index("val"),
                               SPLITS.index("train"))
        return out
    names = np.unique(groups)
    order = rng.permutation(len(names))
    if folds:
        if len(names) < folds:
            raise ValueError(f"data.folds={folds} but the set has {len(names)} subjects; "
                             "choose fewer folds.")
        in_test = set(names[order[fold::folds]])
    else:
        in_test = set(names[order[:round(test_fraction * len(names))]])
    test = np.array([g in in_test for g in groups], dtype=bool)
    out[test] = SPLITS.index("test")
    out[~test] = _draw(groups[~test], val_fraction, rng, SPLITS.index("val"),
                       SPLITS.index("train"))
    return out


def _draw(groups: np.ndarray, fraction: float, rng: np.random.Generator, chosen: int,
          rest: int) -> np.ndarray:
    """``chosen`` for the images of a ``fraction`` of the groups (at least one group when the
    fraction is positive and two or more exist), ``rest`` for the others."""
    names = np.unique(groups)
    count = round(fraction * len(names))
    if fraction and len(names) > 1:
        count = min(max(count, 1), len(names) - 1)
    picked = set(names[rng.permutation(len(names))[:count]])
    return np.array([chosen if g in picked else rest for g in groups], dtype=np.int8)
