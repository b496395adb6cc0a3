"""What ``ferlab.predict`` is pointed at: files, folders, glob patterns and videos."""

from __future__ import annotations

import errno
import glob
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg",
                            ".wmv"})


@dataclass(frozen=True)
class Input:
    """One thing to process: an existing file, a name that resolved to nothing (``missing``),
    or an entry that could not be listed or followed (``error`` says why)."""

    path: Path
    missing: bool = False
    error: str | None = None

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_SUFFIXES


def expand_inputs(items: list[str]) -> list[Input]:
    """Files as given, folders recursively (hidden files skipped), glob patterns expanded;
    a name matching nothing is kept as a missing input, and a folder that cannot be listed or a
    link that cannot be followed (a loop) as an input with its error, so that each is reported,
    not dropped, while the rest goes on."""
    found: list[Input] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        try:
            key = path.resolve(strict=True)
        except (OSError, RuntimeError) as err:  # a symlink loop (RuntimeError before 3.13)
            why = "a symbolic link loop" if isinstance(err, RuntimeError) or getattr(
                err, "errno", None) == errno.ELOOP else f"{type(err).__name__}: {err.strerror}"
            found.append(Input(path, error=f"{path}: cannot be followed ({why}); not read."))
            return
        if key not in seen:
            seen.add(key)
            found.append(Input(path))

    def unlistable(err: OSError) -> None:
        path = Path(err.filename) if err.filename else Path("?")
        found.append(Input(path, error=f"{path}: the folder cannot be listed ({err.strerror}); "
                                       "its files were not read."))

    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path, onerror=unlistable):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if not name.startswith("."):
                        add(Path(dirpath) / name)
        elif path.exists() or path.is_symlink():
            add(path)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(os.path.expanduser(item), recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file()]
            if not files:
                found.append(Input(path, missing=True))
            for file in files:
                add(file)
        else:
            found.append(Input(path, missing=True))
    return found


@dataclass(frozen=True)
class Frame:
    index: int
    time: float  # seconds
    image: np.ndarray  # BGR (H, W, 3)


class VideoError(ValueError):
    """A video that cannot be opened or read."""


def read_video(path: Path, sample_fps: float = 1.0) -> tuple[Iterator[Frame], float]:
    """Frames sampled at about ``sample_fps`` per second, and the video's own frame rate."""
    if sample_fps <= 0:
        raise ValueError(f"The sampling rate must be positive; got {sample_fps}.")
    if not Path(path).is_file():  # a named pipe would block the whole batch
        raise VideoError(f"{path}: not a regular file (a pipe, socket or device); not read.")
    # FFmpeg writes its own lines ("moov atom not found") straight to stderr; ferlab's error
    # records say what failed, so it is quiet unless the user sets its level
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise VideoError(f"{path}: cannot be opened as a video.")
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    if fps <= 0 or not np.isfinite(fps):
        fps = 25.0  # containers without a rate: assume a common one
    step = max(1, round(fps / sample_fps))
    expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # the container's count, if any

    def frames() -> Iterator[Frame]:
        index = 0
        try:
            while True:
                ok, image = capture.read()
                if not ok:
                    break
                if index % step == 0:
                    yield Frame(index, index / fps, image)
                index += 1
        finally:
            capture.release()
        if index == 0:
            raise VideoError(f"{path}: no frame could be decoded.")
        if index < expected:
            log.warning("%s: read %d of the %d frames its container lists; the rest could not "
                        "be decoded (a truncated or damaged file?).", path, index, expected)

    return frames(), fps
