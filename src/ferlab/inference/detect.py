"""Face detection: a small interface, OpenCV's Haar cascade, and FER2013-style cropping."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np


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
    """Anything that finds faces in a grey image (H, W) uint8."""

    def detect(self, grey: np.ndarray) -> list[Box]: ...


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (shipped with opencv-python-headless < 5)."""

    def __init__(self, cascade: str = "haarcascade_frontalface_default.xml",
                 scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 40) -> None:
        if scale_factor <= 1.0 or min_neighbors < 0 or min_size < 1:
            raise ValueError(f"Need scale_factor > 1, min_neighbors >= 0, min_size >= 1; got "
                             f"{scale_factor}, {min_neighbors}, {min_size}.")
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

    def detect(self, grey: np.ndarray) -> list[Box]:
        found = self.classifier.detectMultiScale(
            cv2.equalizeHist(grey), scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors, minSize=(self.min_size, self.min_size))
        return [Box(int(x), int(y), int(w), int(h)) for x, y, w, h in found]


def face_crop_box(box: Box, image_shape: tuple[int, ...], margin: float = 0.1) -> Box:
    """The detector's box squared on its centre, grown by ``margin`` of its side on each edge
    (FER2013 crops show a little around the face), clamped to the image."""
    height, width = image_shape[:2]
    side = max(box.w, box.h) * (1 + 2 * margin)
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    x1, y1 = min(width, round(cx + side / 2)), min(height, round(cy + side / 2))
    return Box(x0, y0, x1 - x0, y1 - y0)


def crop(grey: np.ndarray, box: Box) -> np.ndarray:
    return grey[box.y:box.y + box.h, box.x:box.x + box.w]
