"""FER+ (Barsoum et al. 2016, arXiv 1608.01041): FER2013's faces with ten annotators' votes each,
read from the layouts FER+ users have, and the paper's four ways to turn votes into targets.

Supported layouts of the data root:

* FER+'s own (what its ``generate_training_data.py`` writes): ``FER2013Train/``,
  ``FER2013Valid/``, ``FER2013Test/``, each with the faces as PNGs and a ``label.csv``
  (image name, face box, ten vote counts); the votes are read from the ``label.csv`` files, or
  from ``fer2013new.csv`` in the root with ``votes=fer2013new.csv``;
* ``fer2013.csv`` (FER2013's pixels) beside ``fer2013new.csv`` (FER+'s votes, row for row).

The votes' order is FER+'s: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt,
unknown, not-a-face (NF).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ferlab.data.cache import load_cached
from ferlab.data.labels import CONTEMPT, EMOTIONS, SPLITS, USAGE_TO_SPLIT, VOCABULARY
from ferlab.data.sources import (
    DataFormatError,
    DataNotFoundError,
    SplitTable,
    decode_face,
    read_csv,
)
from ferlab.progress import track

log = logging.getLogger(__name__)

VOTE_NAMES: tuple[str, ...] = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust",
                               "fear", "contempt", "unknown", "NF")
# FER+'s eight emotions as ferlab's vocabulary names them, in FER+'s vote order
FERPLUS_CLASSES: tuple[str, ...] = ("neutral", "happy", "surprise", "sad", "angry", "disgust",
                                    "fear", CONTEMPT)
NUM_EMOTIONS = len(FERPLUS_CLASSES)  # the votes after these are unknown and NF
FOLDERS: dict[str, str] = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
LABEL_FILE = "label.csv"
VOTES_CSV = "fer2013new.csv"
VOTE_FILES: tuple[str, ...] = (LABEL_FILE, VOTES_CSV)
LABEL_MODES: tuple[str, ...] = ("majority", "multilabel", "probability", "crossentropy")

WHERE_TO_GET = (
    "FER+ (github.com/microsoft/FERPlus) gives the votes as fer2013new.csv and, through its "
    "generate_training_data.py run on FER2013's fer2013.csv, the folders FER2013Train/, "
    "FER2013Valid/ and FER2013Test/ of PNGs with a label.csv each. Point ferlab at the folder "
    "holding them with data.root=/path/to/ferplus or FERLAB_FERPLUS; accepted layouts: "
    "<root>/FER2013{Train,Valid,Test}/label.csv with the PNGs, or <root>/fer2013.csv beside "
    "<root>/fer2013new.csv."
)


@dataclass(frozen=True)
class VoteTable(SplitTable):
    """All faces of a FER+ copy: uint8 pixels, ten vote counts each, split ids and origins."""

    faces: np.ndarray  # (N, 48, 48) uint8
    votes: np.ndarray  # (N, 10) int16, FER+'s order (VOTE_NAMES)
    splits: np.ndarray  # (N,) int8, index into SPLITS
    sources: np.ndarray  # (N,) str, "FER2013Train/fer0000000.png" or "fer2013.csv:line N"


@dataclass(frozen=True)
class FERPlusSource:
    """Where a FER+ copy lives, in which layout, and which file gives the votes."""

    kind: str  # "folders" or "csv"
    path: Path  # the root folder
    votes: str  # "label.csv" or "fer2013new.csv"

    def files(self) -> list[Path]:
        if self.kind == "csv":
            return [self.path / "fer2013.csv", self.path / VOTES_CSV]
        files = [f for folder in FOLDERS.values() for f in sorted((self.path / folder).iterdir())
                 if not f.name.startswith(".")]
        return files + ([self.path / VOTES_CSV] if self.votes == VOTES_CSV else [])

    def fingerprint(self) -> str:
        """A hash of every file's relative path, size and mtime and of the vote file chosen."""
        digest = hashlib.sha256(f"{self.kind}\0{self.votes}".encode())
        for file in self.files():
            stat = file.stat()
            digest.update(f"{file.relative_to(self.path)}\0{stat.st_size}\0"
                          f"{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def read(self) -> VoteTable:
        """Decode and validate every face and its votes."""
        return read_votes_csv(self.path) if self.kind == "csv" else read_folders(self.path,
                                                                                 self.votes)


def locate_ferplus(root: str | os.PathLike, votes: str = LABEL_FILE) -> FERPlusSource:
    """Detect which FER+ layout ``root`` holds (and check the vote file asked for is there)."""
    if votes not in VOTE_FILES:
        raise ValueError(f"data.votes={votes!r} is not one of {list(VOTE_FILES)}: FER+'s votes "
                         "come from the label.csv of each split folder or from fer2013new.csv.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"No FER+ data at {root.resolve()} (not a folder). "
                                f"{WHERE_TO_GET}")
    if all((root / folder / LABEL_FILE).is_file() for folder in FOLDERS.values()):
        if votes == VOTES_CSV and not (root / VOTES_CSV).is_file():
            raise DataNotFoundError(f"data.votes={VOTES_CSV} but {root / VOTES_CSV} does not "
                                    f"exist; copy it there or use data.votes={LABEL_FILE}.")
        return FERPlusSource("folders", root, votes)
    if (root / "fer2013.csv").is_file() and (root / VOTES_CSV).is_file():
        if votes == LABEL_FILE:
            log.info("%s holds fer2013.csv and %s (no split folders): the votes come from %s.",
                     root, VOTES_CSV, VOTES_CSV)
        return FERPlusSource("csv", root, VOTES_CSV)
    found = sorted(p.name for p in root.iterdir())[:10]
    raise DataNotFoundError(f"No FER+ layout found in {root.resolve()} (it holds: "
                            f"{found or 'nothing'}). {WHERE_TO_GET}")


def _vote_array(frame: pd.DataFrame, columns: list, where) -> np.ndarray:
    """The ten vote columns as integers, or an error naming the first bad row."""
    values = frame[columns].apply(lambda c: pd.to_numeric(c.astype(str).str.strip(),
                                                          errors="coerce"))
    bad = (values.isna() | (values < 0) | (values % 1 != 0)).any(axis=1).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataFormatError(f"{where(i)}: the ten vote counts {frame[columns].iloc[i].tolist()} "
                              "are not all non-negative integers.")
    return values.to_numpy(dtype=np.int16)


def _read_label_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """A split folder's label.csv: image names and their (N, 10) votes."""
    try:
        frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{path}: not a readable CSV file ({err}).") from err
    if frame.shape[1] != 2 + len(VOTE_NAMES):
        raise DataFormatError(f"{path}: rows have {frame.shape[1]} fields; FER+'s label.csv has "
                              f"{2 + len(VOTE_NAMES)}: image name, face box, then the votes for "
                              f"{', '.join(VOTE_NAMES)}.")
    names = [n.strip() for n in frame[0]]
    return names, _vote_array(frame, list(range(2, 12)), lambda i: f"{path}:line {i + 1}")


def _read_votes_csv(path: Path) -> pd.DataFrame:
    """fer2013new.csv with its columns checked (Usage, Image name, the ten votes)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataFormatError(f"{path}: not a readable CSV file ({err}).") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    expected = ["Usage", "Image name", *VOTE_NAMES]
    if list(frame.columns) != expected:
        raise DataFormatError(f"{path}: columns {list(frame.columns)}; FER+'s {VOTES_CSV} has "
                              f"{expected}.")
    return frame


def read_folders(root: str | os.PathLike, votes: str = LABEL_FILE) -> VoteTable:
    """FER+'s own layout: every split folder's PNGs, voted by label.csv or fer2013new.csv."""
    root = Path(root)
    by_name: dict[tuple[str, str], np.ndarray] = {}
    if votes == VOTES_CSV:
        frame = _read_votes_csv(root / VOTES_CSV)
        table = _vote_array(frame, list(VOTE_NAMES), lambda i: f"{root / VOTES_CSV}:line {i + 2}")
        # a name given twice (FER+ has four) labels the later row's face, which is the one FER+'s
        # generate_training_data.py wrote last under that name
        for usage, name, row in zip(frame["Usage"], frame["Image name"], table):
            if name.strip():
                by_name[(USAGE_TO_SPLIT.get(usage.strip(), usage), name.strip())] = row
    files, vote_rows, split_ids = [], [], []
    for split, folder in FOLDERS.items():
        names, folder_votes = _read_label_csv(root / folder / LABEL_FILE)
        for name, row in zip(names, folder_votes):
            file = root / folder / name
            if Path(name).name != name or not file.is_file():
                raise DataFormatError(f"{root / folder / LABEL_FILE}: names {name!r}, which is "
                                      f"not a file in {root / folder}.")
            if votes == VOTES_CSV:
                if (split, name) not in by_name:
                    raise DataFormatError(f"{root / VOTES_CSV} has no votes for {folder}/{name} "
                                          f"({split}); use data.votes={LABEL_FILE}.")
                row = by_name[(split, name)]
            files.append(file)
            vote_rows.append(row)
            split_ids.append(SPLITS.index(split))
    if not files:
        raise DataFormatError(f"{root}: the label.csv files list no faces. {WHERE_TO_GET}")
    # cv2 releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        faces = np.stack(list(track(pool.map(decode_face, files), len(files), "Decoding FER+")))
    return VoteTable(faces=faces, votes=np.stack(vote_rows).astype(np.int16),
                     splits=np.array(split_ids, dtype=np.int8),
                     sources=np.array([str(f.relative_to(root)) for f in files]))


def read_votes_csv(root: str | os.PathLike) -> VoteTable:
    """``fer2013.csv`` (pixels) with ``fer2013new.csv`` (votes), row for row; rows FER+ left
    without an image name (not a face) are dropped, as FER+'s own scripts drop them."""
    root = Path(root)
    pixels = read_csv(root / "fer2013.csv")
    frame = _read_votes_csv(root / VOTES_CSV)
    if len(frame) != len(pixels):
        raise DataFormatError(f"{root / VOTES_CSV} has {len(frame)} rows and fer2013.csv "
                              f"{len(pixels)}; FER+'s votes follow fer2013.csv row for row.")
    usage = frame["Usage"].str.strip().map(USAGE_TO_SPLIT)
    mismatch = (usage.map(lambda s: SPLITS.index(s) if isinstance(s, str) else -1).to_numpy()
                != pixels.splits)
    if mismatch.any():
        i = int(np.flatnonzero(mismatch)[0])
        raise DataFormatError(f"{root / VOTES_CSV}:line {i + 2}: Usage {frame['Usage'].iloc[i]!r} "
                              f"but fer2013.csv's row says {SPLITS[pixels.splits[i]]}: the two "
                              "files do not belong together.")
    votes = _vote_array(frame, list(VOTE_NAMES), lambda i: f"{root / VOTES_CSV}:line {i + 2}")
    keep = (frame["Image name"].str.strip() != "").to_numpy()
    return VoteTable(faces=pixels.faces[keep], votes=votes[keep], splits=pixels.splits[keep],
                     sources=pixels.sources[keep])


def load_votes(root: str | os.PathLike, votes: str = LABEL_FILE,
               cache_dir: str | os.PathLike | None = None) -> VoteTable:
    """All FER+ faces and votes under ``root``, from the cache when the source is unchanged."""
    source = locate_ferplus(root, votes)
    return load_cached(source, VoteTable, f"ferplus-{Path(source.votes).stem}", "FER+", cache_dir)


# --- votes -> targets ---------------------------------------------------------------------------
def _paper_target(raw: np.ndarray, mode: str) -> np.ndarray:
    """One face's target over the ten vote classes, as FER+'s reference code builds it: single
    votes are dropped as outliers; a face with no clear answer becomes "unknown" (dropped)."""
    raw = raw.astype(np.float64)
    unknown = np.zeros(len(raw))
    unknown[-2] = 1.0
    raw[raw < 1.0 + sys.float_info.epsilon] = 0.0  # one annotator alone is an outlier
    total = raw.sum()
    out = np.zeros(len(raw))
    if mode == "majority":  # strictly more than half of the remaining votes
        peak = raw.max()
        if peak <= 0.5 * total:
            return unknown
        out[np.argmax(raw)] = 1.0
        return out
    if mode == "multilabel":  # every emotion with at least 30% of the votes
        out = np.where(raw >= 0.3 * total, raw, 0.0)
        return unknown if out.sum() <= 0.5 * total else out / out.sum()
    # probability / crossentropy: the top emotions (at most three) until 75% of the votes
    part, count, valid = 0.0, 0, True
    while part < 0.75 * total and count < 3 and valid:
        peak = raw.max()
        for i in range(len(raw)):
            if raw[i] == peak:
                out[i], raw[i] = peak, 0.0
                part += peak
                count += 1
                if i >= NUM_EMOTIONS:  # unknown or NF among the top: stop there
                    valid = False
                    if out.sum() > peak:  # emotions came before it: it is left out
                        out[i] = 0.0
                        count -= 1
                    break
    if out.sum() <= 0.5 * total or count > 3:
        return unknown
    return out / out.sum()


def vote_targets(votes: np.ndarray, mode: str, num_classes: int = len(VOCABULARY)
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``(M, num_classes)`` in ferlab's class order from ``(N, 10)`` FER+ votes, and the
    mask ``(N,)`` of the faces kept. A face is dropped when its target is unknown or not-a-face
    (the paper's rule: ties and split votes in majority mode, faces no emotion wins in the
    others); in the seven-class view also when its target's top class is contempt (the rest of
    a target loses its contempt share and is renormalised)."""
    if mode not in LABEL_MODES:
        raise ValueError(f"data.labels={mode!r} is not one of {list(LABEL_MODES)} (Barsoum et al. "
                         "2016's majority voting, multi-label learning, probabilistic label "
                         "drawing and cross-entropy loss).")
    if num_classes not in (len(EMOTIONS), len(VOCABULARY)):
        raise ValueError(f"FER+ trains {len(VOCABULARY)} classes (with {CONTEMPT}) or FER2013's "
                         f"{len(EMOTIONS)} (data.num_classes=7); got {num_classes}.")
    votes = np.asarray(votes)
    if votes.ndim != 2 or votes.shape[1] != len(VOTE_NAMES):
        raise ValueError(f"votes must be (N, {len(VOTE_NAMES)}) in FER+'s order; got "
                         f"{votes.shape}.")
    paper = np.stack([_paper_target(row, mode) for row in votes]) if len(votes) else \
        np.zeros((0, len(VOTE_NAMES)))
    keep = paper.argmax(axis=1) < NUM_EMOTIONS
    order = [FERPLUS_CLASSES.index(name) for name in VOCABULARY[:num_classes]]
    if num_classes == len(EMOTIONS):
        keep &= paper.argmax(axis=1) != FERPLUS_CLASSES.index(CONTEMPT)
    targets = paper[keep][:, order]
    targets /= targets.sum(axis=1, keepdims=True)
    return targets.astype(np.float32), keep


def majority_labels(votes: np.ndarray, num_classes: int = len(VOCABULARY)
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Class indices ``(M,)`` of the faces with a majority label, and the mask ``(N,)`` of them:
    what FER+'s test figures count against."""
    targets, keep = vote_targets(votes, "majority", num_classes)
    return targets.argmax(axis=1).astype(np.int64), keep
