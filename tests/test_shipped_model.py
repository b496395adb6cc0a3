"""CI guard: each shipped model's PrivateTest accuracy, measured through the public API, may
not fall below the figure in its model card by more than half a point."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ferlab import EmotionRecognizer
from ferlab.artifacts import shipped_model_path
from ferlab.data import load_faces
from tests.conftest import REAL_DATA, USER_CACHE, requires_real_data

ROOT = Path(__file__).resolve().parents[1]
CARDS = {"default": ROOT / "MODEL_CARD.md", "cpu-trained": ROOT / "MODEL_CARD_CPU.md"}
GUARD = re.compile(r"<!-- guard: privatetest_acc=([0-9.]+) -->")

pytestmark = [pytest.mark.data, requires_real_data]


def _shipped(name: str) -> Path:
    if not shipped_model_path(name).is_file():
        pytest.skip(f"no shipped model {name!r} in this checkout")
    return CARDS[name]


@pytest.mark.parametrize("name", sorted(CARDS))
def test_model_card_states_the_guarded_figure(name):
    card = _shipped(name)
    assert card.is_file(), f"{name!r} ships without its card {card.name}"
    assert GUARD.search(card.read_text()), f"{card.name} lacks its guard marker"


@pytest.mark.parametrize("name", sorted(CARDS))
def test_shipped_model_privatetest_accuracy(name):
    expected = float(GUARD.search(_shipped(name).read_text()).group(1))
    test = load_faces(REAL_DATA, USER_CACHE).select("test")
    # default settings, as a user gets them
    recognizer = EmotionRecognizer() if name == "default" else EmotionRecognizer(name)
    acc = float(np.mean(recognizer.predict_faces(test.faces).argmax(1) == test.labels))
    assert acc >= expected - 0.005, (f"{name}: PrivateTest accuracy {acc:.4f} < card "
                                     f"{expected:.4f} - 0.005")
