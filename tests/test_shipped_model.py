"""CI guard: the shipped model's PrivateTest accuracy, measured through the public API, may
not fall below the figure in MODEL_CARD.md by more than half a point."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ferlab import EmotionRecognizer
from ferlab.data import load_faces
from ferlab.inference.recognizer import shipped_model_path
from tests.conftest import REAL_DATA, USER_CACHE, requires_real_data

CARD = Path(__file__).resolve().parents[1] / "MODEL_CARD.md"
GUARD = re.compile(r"<!-- guard: privatetest_acc=([0-9.]+) -->")

pytestmark = [
    pytest.mark.data, requires_real_data,
    pytest.mark.skipif(not shipped_model_path().is_file(), reason="no shipped model file"),
]


def test_model_card_states_the_guarded_figure():
    assert GUARD.search(CARD.read_text()), "MODEL_CARD.md lacks its guard marker"


def test_shipped_model_privatetest_accuracy():
    expected = float(GUARD.search(CARD.read_text()).group(1))
    test = load_faces(REAL_DATA, USER_CACHE).select("test")
    recognizer = EmotionRecognizer()  # default settings, as a user gets them
    acc = float(np.mean(recognizer.predict_faces(test.faces).argmax(1) == test.labels))
    assert acc >= expected - 0.005, f"PrivateTest accuracy {acc:.4f} < card {expected:.4f} - 0.005"
