"""Drawing results on images: a box, the label and a small probability bar per face."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

BOX_COLOUR = (60, 200, 60)  # BGR
BAR_COLOUR = (230, 160, 40)


def annotate(image: np.ndarray, faces: Sequence[dict[str, Any]]) -> np.ndarray:
    """A copy of a BGR image with every face's box, label and class-probability bars."""
    out = image.copy() if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    for face in faces:
        x, y, w, h = face["box"]
        text = f"{face['label']} {face['score']:.2f}"
        scale = _text_scale(text, w, out.shape[:2])
        thickness = max(1, round(scale * 2))
        cv2.rectangle(out, (x, y), (x + w, y + h), BOX_COLOUR, thickness)
        cv2.putText(out, text, (x, max(round(22 * scale), y - round(8 * scale))),
                    cv2.FONT_HERSHEY_SIMPLEX, scale, BOX_COLOUR, thickness, cv2.LINE_AA)
        _bars(out, face["probabilities"], x, y + h + round(6 * scale), w, scale)
    return out


def _text_scale(text: str, box_width: int, image_size: tuple[int, int]) -> float:
    """A font scale that makes the label about as wide as the face's box: readable on a 48 px
    face and on a 4000 px photo alike (never below 0.35, never wider than a third of the image)."""
    (width_at_1, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 2)
    target = min(max(box_width, 60), max(image_size[1] / 3, 60))
    return max(0.35, target / width_at_1)


def _bars(image: np.ndarray, probabilities: dict[str, float], x: int, y: int, width: int,
          scale: float) -> None:
    row = max(8, round(18 * scale))
    label_width = round(75 * scale)
    width = max(width, label_width + 20)
    for i, (name, p) in enumerate(probabilities.items()):
        top = y + i * row
        if top + row > image.shape[0]:
            break
        cv2.putText(image, name[:8], (x, top + row - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale,
                    (255, 255, 255), max(1, round(scale)), cv2.LINE_AA)
        bar = round((width - label_width) * float(p))
        cv2.rectangle(image, (x + label_width, top + 2), (x + label_width + bar, top + row - 2),
                      BAR_COLOUR, -1)
