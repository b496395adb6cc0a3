"""Face detection: a small interface, OpenCV's Haar cascade, and FER2013-style cropping."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ferlab.data.transforms import to_face
from ferlab.inference.images import as_bgr, read_image, to_grey


@dataclass(frozen=True)
class Box:
    """A face box in image pixels."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


class FaceDetector(Protocol):
    """Anything that finds faces in a BGR uint8 image (H, W, 3). A detector whose ``color`` is
    False also accepts a grey image (H, W), which lets callers skip decoding colour."""

    color: bool

    def detect(self, image: np.ndarray) -> list[Box]: ...


# the Haar scan's defaults (the predict CLI shows the same): OpenCV's usual pyramid step and
# neighbours, faces from FER2013's resolution up (experiments/photo_pipeline)
HAAR_SCALE_FACTOR, HAAR_MIN_NEIGHBORS, HAAR_MIN_SIZE, HAAR_MAX_SIDE = 1.1, 5, 48, 640


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (shipped with opencv-python-headless < 5).

    By default the scan is OpenCV's usual one (pyramid step 1.1, 5 neighbours) at the image's
    own resolution, skipping faces under ``min_size`` (48 px: FER2013's resolution, smaller
    faces are upsampled guesses): on photos up to ``max_side`` pixels (640) its boxes are the
    ones ``cv2.CascadeClassifier.detectMultiScale(grey, 1.1, 5)`` gives, so a face is cut as
    the usual hand-written pipeline cuts it (measured on real photos: a scan of a shrunk image
    moves boxes by a pixel or two, and that cost accuracy; experiments/photo_pipeline). Larger
    images are scanned shrunk to ``max_side`` on their longer side, boxes mapped back; there the
    smallest face found is ``max(min_size, 24 * long side / max_side)`` pixels; ``max_side=0``
    (or None) lifts the cap, for small faces in large group photos.
    ``shrink``: scan the image shrunk so that a ``min_size`` face fills the cascade's 24 px
    window (about 30% faster detection; boxes on a coarser grid). ``equalize``:
    histogram-equalise first (measured slower, with fewer faces found).
    """

    color = False
    WINDOW = 24  # the cascade's base window: nothing smaller is found at any scale

    def __init__(self, cascade: str = "haarcascade_frontalface_default.xml",
                 scale_factor: float = HAAR_SCALE_FACTOR,
                 min_neighbors: int = HAAR_MIN_NEIGHBORS, min_size: int = HAAR_MIN_SIZE,
                 max_side: int | None = HAAR_MAX_SIDE, equalize: bool = False,
                 shrink: bool = False) -> None:
        if scale_factor <= 1.0 or min_neighbors < 0 or min_size < 1 or (max_side or 0) < 0:
            raise ValueError(f"Need scale_factor > 1, min_neighbors >= 0, min_size >= 1 and "
                             f"max_side >= 0; got {scale_factor}, {min_neighbors}, {min_size}, "
                             f"{max_side}.")
        path = Path(cascade)
        if not path.is_file():
            path = Path(cv2.data.haarcascades) / cascade
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise FileNotFoundError(
                f"Could not load the Haar cascade {cascade!r} (looked in {path.parent}). "
                "opencv-python-headless 4.x ships the cascades in cv2.data.haarcascades; "
                "OpenCV 5 wheels do not: pip install 'opencv-python-headless<5'."
            )
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size
        self.max_side, self.equalize, self.shrink = max_side or 0, equalize, shrink

    def detect(self, image: np.ndarray) -> list[Box]:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        height, width = grey.shape[:2]
        scale = min(1.0, self.WINDOW / self.min_size) if self.shrink else 1.0
        if self.max_side:
            scale = min(scale, self.max_side / max(height, width))
        if scale < 1.0:
            grey = cv2.resize(grey, (max(1, round(width * scale)), max(1, round(height * scale))),
                              interpolation=cv2.INTER_AREA)
        if self.equalize:
            grey = cv2.equalizeHist(grey)
        min_side = max(1, round(self.min_size * scale))
        found = self.classifier.detectMultiScale(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side))
        boxes = []
        for x, y, w, h in found:
            x0, y0 = round(x / scale), round(y / scale)
            x1, y1 = min(width, round((x + w) / scale)), min(height, round((y + h) / scale))
            boxes.append(Box(x0, y0, x1 - x0, y1 - y0))
        return boxes


class MTCNNDetector:
    """facenet-pytorch's MTCNN (its weights ship inside its wheel): slower than Haar, finds
    turned, tilted and small faces that the cascade misses. Optional: install it with
    ``pip install --no-deps facenet-pytorch==2.6.0 requests`` (it declares an old torch)."""

    color = True

    def __init__(self, min_size: int = 48, threshold: float = 0.9, device: str = "cpu") -> None:
        try:
            from facenet_pytorch import MTCNN
        except ImportError as err:
            raise ImportError(
                "The MTCNN detector needs facenet-pytorch: pip install --no-deps "
                "facenet-pytorch==2.6.0 requests (no-deps: it pins an old torch that ferlab "
                "does not need). `make install` does this."
            ) from err
        self.min_size, self.threshold = min_size, threshold
        self.mtcnn = MTCNN(keep_all=True, min_face_size=min_size, device=device)

    def detect(self, image: np.ndarray) -> list[Box]:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.ndim == 3 else cv2.COLOR_GRAY2RGB)
        boxes, probs = self.mtcnn.detect(rgb)
        if boxes is None:
            return []
        height, width = image.shape[:2]
        found = []
        for (x0, y0, x1, y1), p in zip(boxes, probs):
            x0, y0 = max(0, int(round(x0))), max(0, int(round(y0)))
            x1, y1 = min(width, int(round(x1))), min(height, int(round(y1)))
            if p >= self.threshold and min(x1 - x0, y1 - y0) >= self.min_size:
                found.append(Box(x0, y0, x1 - x0, y1 - y0))
        return found


def make_detector(name: str = "haar", **kwargs) -> FaceDetector:
    """A detector by name: "haar" (default) or "mtcnn"."""
    if name == "haar":
        return HaarDetector(**kwargs)
    if name == "mtcnn":
        return MTCNNDetector(**kwargs)
    raise ValueError(f"Unknown detector {name!r}; choose 'haar' or 'mtcnn'.")


# the crop around a detected face, as a share of the box's side on each edge: FER2013's own
# framing is the Haar box itself (on PrivateTest faces staged in larger frames the box's side is
# 0.986 of the face's, centred), and PrivateTest accuracy on the faces found falls as the margin
# grows: 0.7388 at 0, 0.7363 at 0.05, 0.7136 at 0.1 (experiments/framing)
CROP_MARGIN = 0.0


def face_crop_box(box: Box, image_shape: tuple[int, ...], margin: float = CROP_MARGIN) -> Box:
    """The detector's box squared on its centre, grown by ``margin`` of its side on each edge,
    clamped to the image."""
    height, width = image_shape[:2]
    side = max(box.w, box.h) * (1 + 2 * margin)
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    x1, y1 = min(width, round(cx + side / 2)), min(height, round(cy + side / 2))
    return Box(x0, y0, x1 - x0, y1 - y0)


def crop(grey: np.ndarray, box: Box) -> np.ndarray:
    return grey[box.y:box.y + box.h, box.x:box.x + box.w]


def find_faces(image, detector: FaceDetector, margin: float = CROP_MARGIN,
               color_order: str = "bgr") -> list[tuple[Box, np.ndarray]]:
    """Every face ``detector`` finds in ``image`` (a path or an array), largest first: its box
    and its (48, 48) uint8 grey crop."""
    if not getattr(detector, "color", True):  # grey-only: never decode or convert colour
        grey = (read_image(image, grey=True) if isinstance(image, (str, os.PathLike))
                else to_grey(image, color_order))
        boxes = detector.detect(grey)
    else:
        bgr = as_bgr(image, color_order)
        grey = to_grey(bgr)
        boxes = detector.detect(bgr)
    boxes = sorted(boxes, key=lambda b: b.area, reverse=True)
    return [(b, to_face(crop(grey, face_crop_box(b, grey.shape, margin)))) for b in boxes]
