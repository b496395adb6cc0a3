"""Drawing results: labels sized to the face, on photos of any size."""

from __future__ import annotations

import cv2
import numpy as np

from ferlab.data import EMOTIONS
from ferlab.inference.annotate import BOX_COLOUR, annotate


def _face(box):
    probabilities = {name: 1.0 / len(EMOTIONS) for name in EMOTIONS} | {"happy": 0.4}
    return {"box": box, "label": "happy", "score": 0.4, "probabilities": probabilities}


def _label_height(image: np.ndarray, box) -> int:
    """Rows above the box holding the label's colour: how tall the label was drawn."""
    x, y, w, _ = box
    above = image[:y, x:x + 2 * w]
    rows = np.nonzero((np.abs(above.astype(int) - BOX_COLOUR).sum(axis=2) < 60).any(axis=1))[0]
    return int(rows.max() - rows.min() + 1) if len(rows) else 0


def test_the_label_grows_with_the_face_not_with_a_fixed_size():
    small_box, big_box = (40, 60, 48, 48), (400, 600, 480, 480)
    small = annotate(np.zeros((240, 240, 3), np.uint8), [_face(small_box)])
    big = annotate(np.zeros((2400, 2400, 3), np.uint8), [_face(big_box)])
    h_small, h_big = _label_height(small, small_box), _label_height(big, big_box)
    assert 5 <= h_small <= 30  # readable on a 48 px face, not taller than it
    assert 6 * h_small <= h_big <= 14 * h_small  # ten times the face, about ten times the label


def test_a_grey_image_gets_colour_drawings_and_the_input_is_left_alone():
    grey = np.full((200, 200), 90, np.uint8)
    out = annotate(grey, [_face((50, 50, 80, 80))])
    assert out.shape == (200, 200, 3) and grey.max() == grey.min() == 90
    assert (np.abs(out.astype(int) - BOX_COLOUR).sum(axis=2) < 60).any()
    assert not np.array_equal(out, cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
