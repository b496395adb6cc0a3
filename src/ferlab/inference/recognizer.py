"""EmotionRecognizer: the shipped (or any trained) model behind one small API."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ferlab import artifacts
from ferlab.data.transforms import TTA_MODES, preprocess, to_face, tta_views
from ferlab.inference.detect import Box, FaceDetector, HaarDetector, crop, face_crop_box
from ferlab.inference.images import as_bgr, read_image, to_grey
from ferlab.models import fold_batch_norm
from ferlab.precision import slow_bf16_reason

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")


class EmotionRecognizer:
    """Emotion probabilities for face crops (``predict_faces``) or whole images (``analyze``).

    ``model``: None (or "default") for the shipped model, "cpu-trained" for the shipped model
    trained on two CPU cores, a ferlab model file (``.pt``), a training checkpoint (``.ckpt``)
    or a run directory. ``tta``: "flip" averages each face with its mirror image;
    None uses the model file's own setting ("none" for checkpoints). ``precision``: "bf16"
    runs the network under bfloat16 autocast, about twice as fast on CPUs with native bf16
    (AVX512-BF16, AMX) and on GPUs, slower on other CPUs (a warning says so on a CPU with no
    oneDNN bf16 kernels at all, where it is an order of magnitude slower); "fp32" (the default)
    gives the same numbers everywhere.
    """

    def __init__(self, model: str | os.PathLike | None = None, device: str = "cpu",
                 tta: str | None = None, detector: FaceDetector | None = None,
                 batch_size: int = 32, margin: float = 0.1, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}.")
        if not (isinstance(batch_size, int) and batch_size >= 1) or not margin >= 0:
            raise ValueError(f"batch_size must be an integer >= 1 and margin >= 0; got "
                             f"{batch_size!r} and {margin!r}.")
        self.precision = precision
        artifact = artifacts.load(model)
        self.source = artifact.file  # the file the weights come from
        network, self.classes, self.meta = artifact.network, artifact.classes, artifact.meta
        self.tta = tta if tta is not None else self.meta.get("tta", "none")
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}; got {self.tta!r}.")
        self.device = _device(device)
        if precision == "bf16" and self.device.type == "cpu" and (reason := slow_bf16_reason()):
            log.warning("precision='bf16': %s; precision='fp32' is faster here.", reason)
        # batch norm folded into the convolutions: ~8% more faces/s on CPU, same outputs;
        # channels_last: measured ~1.7x faster convolutions on CPU (oneDNN), also right on GPU
        self.network = fold_batch_norm(network.eval()).to(self.device).to(
            memory_format=torch.channels_last)
        self.detector = detector
        self.batch_size = batch_size
        self.margin = margin

    # --- faces -------------------------------------------------------------------------------
    def predict_faces(self, faces: np.ndarray | Sequence[np.ndarray],
                      color_order: str = "bgr") -> np.ndarray:
        """Probabilities (N, len(classes)) for uint8 faces (N, 48, 48) or a list of crops of any
        size, grey or colour (channels in ``color_order``)."""
        batch = self._as_faces(faces, color_order)
        if len(batch) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        out = [self._probabilities(torch.from_numpy(batch[i:i + self.batch_size]))
               for i in range(0, len(batch), self.batch_size)]
        return np.concatenate(out)

    def _as_faces(self, faces, color_order: str) -> np.ndarray:  # (N, 48, 48) uint8
        if isinstance(faces, np.ndarray) and faces.ndim == 3 and faces.dtype == np.uint8:
            crops = list(faces)
        elif isinstance(faces, np.ndarray) and faces.ndim in (2, 4):
            raise ValueError(f"faces must be a uint8 batch (N, H, W) or a list of crops; got an "
                             f"array of shape {faces.shape} (wrap a single crop in a list).")
        elif isinstance(faces, (str, bytes, os.PathLike)):
            raise ValueError(f"faces must be a uint8 batch (N, H, W) or a list of crops; got the "
                             f"path {str(faces)!r}: pass [path] for a file holding one face crop, "
                             "or analyze(path) to find the faces in a photo.")
        elif not isinstance(faces, Iterable):
            raise TypeError(f"faces must be a uint8 batch (N, H, W) or a list of crops; got "
                            f"{type(faces).__name__}.")
        else:
            crops = list(faces)
        if not crops:
            return np.zeros((0, 48, 48), np.uint8)
        return np.stack([to_face(to_grey(c, color_order)) for c in crops])

    @torch.inference_mode()
    def _probabilities(self, faces: torch.Tensor) -> np.ndarray:
        x = preprocess(faces.to(self.device)).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.precision == "bf16"):
            return predict_probabilities(self.network, x, self.tta).cpu().numpy()

    # --- whole images ------------------------------------------------------------------------
    @property
    def needs_color(self) -> bool:
        """Whether the face detector looks at colour; if not, grey pixels are all it needs (the
        Haar default), so callers can decode images straight to grey."""
        if self.detector is None:
            self.detector = HaarDetector()
        return getattr(self.detector, "color", True)

    def detect_faces(self, image, color_order: str = "bgr") -> list[tuple[Box, np.ndarray]]:
        """Every detected face, largest first: its box and its (48, 48) uint8 grey crop."""
        if not self.needs_color:  # a grey-only detector: never decode or convert colour
            grey = (read_image(image, grey=True) if isinstance(image, (str, os.PathLike))
                    else to_grey(image, color_order))
            boxes = self.detector.detect(grey)
        else:
            bgr = as_bgr(image, color_order)
            grey = to_grey(bgr)
            boxes = self.detector.detect(bgr)
        boxes = sorted(boxes, key=lambda b: b.area, reverse=True)
        return [(b, to_face(crop(grey, face_crop_box(b, grey.shape, self.margin))))
                for b in boxes]

    def describe(self, found: list[tuple[Box, np.ndarray]]) -> list[dict[str, Any]]:
        """Records for faces from :meth:`detect_faces`."""
        if not found:
            return []
        probs = self.predict_faces(np.stack([face for _, face in found]))
        return [self._record(box, p) for (box, _), p in zip(found, probs)]

    def analyze(self, image, color_order: str = "bgr") -> list[dict[str, Any]]:
        """One record per detected face, largest first:
        ``{"box": [x, y, w, h], "label", "score", "probabilities": {class: p}}``."""
        return self.describe(self.detect_faces(image, color_order))

    def _record(self, box, probs: np.ndarray) -> dict[str, Any]:
        best = int(np.argmax(probs))
        return {
            "box": box.as_list(),
            "label": self.classes[best],
            "score": float(probs[best]),
            "probabilities": {c: float(p) for c, p in zip(self.classes, probs)},
        }


def _device(name: str) -> torch.device:
    """The torch device for ``name`` ("auto", "cpu", "cuda", "cuda:1" ...), refused with what to
    pass instead when it is not one or is not usable here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>'; got "
                         f"{name!r}.") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}, but PyTorch sees no CUDA GPU here; use 'cpu', or "
                         "'auto' to take a GPU when there is one.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device={name!r}, but PyTorch sees {torch.cuda.device_count()} CUDA "
                         "GPU(s) here, numbered from 0.")
    return device


def predict_probabilities(network: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                          tta: str = "none") -> torch.Tensor:
    """Softmax probabilities (B, C) of a preprocessed batch, averaged over test-time views.
    Views go through the network as one batch while that stays small (one call is much
    cheaper than several for the few faces of a photo)."""
    views = tta_views(x, tta)
    if len(views) > 1 and len(x) * len(views) <= 1024:
        logits = network(torch.cat(views)).float().view(len(views), len(x), -1)
        return torch.softmax(logits, dim=2).mean(0)
    return sum(torch.softmax(network(v).float(), dim=1) for v in views) / len(views)
