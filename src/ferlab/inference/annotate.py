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
    scale = max(0.35, min(out.shape[:2]) / 900)
    thickness = max(1, round(scale * 2))
    for face in faces:
        x, y, w, h = face["box"]
        cv2.rectangle(out, (x, y), (x + w, y + h), BOX_COLOUR, thickness)
        text = f"{face['label']} {face['score']:.2f}"
        cv2.putText(out, text, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    BOX_COLOUR, thickness, cv2.LINE_AA)
        _bars(out, face["probabilities"], x, y + h + 4, max(w, 60), scale)
    return out


def _bars(image: np.ndarray, probabilities: dict[str, float], x: int, y: int, width: int,
          scale: float) -> None:
    row = max(8, round(14 * scale))
    label_width = round(70 * scale)
    for i, (name, p) in enumerate(probabilities.items()):
        top = y + i * row
        if top + row > image.shape[0]:
            break
        cv2.putText(image, name[:8], (x, top + row - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
        bar = round((width - label_width) * float(p))
        cv2.rectangle(image, (x + label_width, top + 2), (x + label_width + bar, top + row - 2),
                      BAR_COLOUR, -1)
