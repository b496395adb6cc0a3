"""CI guard: each shipped model's PrivateTest accuracy (the PyTorch models, their int8 ONNX files
and the ensembles), measured through the public API, may not fall below the figure in its model
card by more than half a point."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest

from ferlab import EmotionRecognizer
from ferlab.artifacts import (
    SHIPPED_ACCURACY,
    SHIPPED_ENSEMBLES,
    SHIPPED_MODELS,
    shipped_model_path,
)
from ferlab.data import EMOTIONS, load_faces
from tests.conftest import REAL_DATA, USER_CACHE, requires_real_data

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted((ROOT / "docs/model_cards").glob("*.md"))
GUARD = re.compile(r"<!-- guard: ([\w-]+) privatetest_acc=([0-9.]+) -->")
SHIPPED = sorted([*SHIPPED_MODELS, *SHIPPED_ENSEMBLES])


def _guards() -> dict[str, float]:
    found: dict[str, float] = {}
    for card in CARDS:
        for name, figure in GUARD.findall(card.read_text()):
            assert name not in found, f"{name} is guarded twice"
            found[name] = float(figure)
    return found


def test_every_shipped_model_has_one_guarded_figure_in_a_card():
    assert sorted(_guards()) == SHIPPED
    assert _guards() == SHIPPED_ACCURACY  # what ferlab.serve's /v1/model reports
    for name in SHIPPED_MODELS:
        assert shipped_model_path(name).is_file(), f"{name} is not in the package"


@functools.cache
def _test_faces():
    return load_faces(REAL_DATA, USER_CACHE).select("test")


@functools.cache
def _as_trained(name: str) -> np.ndarray:
    """A single shipped model's PrivateTest probabilities with the prior it trained with (kept,
    so that an ensemble's figure reuses its members' passes instead of running them again)."""
    recognizer = EmotionRecognizer() if name == "default" else EmotionRecognizer(name)
    recognizer.prior = "train"
    return recognizer.predict_faces(_test_faces().faces)


@pytest.mark.data
@requires_real_data
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_privatetest_accuracy(name):
    expected = _guards()[name]
    test = _test_faces()
    # default settings as a user gets them (a uniform class prior), and the model as trained
    recognizer = EmotionRecognizer() if name == "default" else EmotionRecognizer(name)
    # the uniform prior raises the rarest class most: disgust (1.5% of the training faces); its
    # recall needs the disgust faces alone, so the default's pass runs on those (55 faces)
    disgust = EMOTIONS.index("disgust")
    rare = test.faces[test.labels == disgust]
    uniform = np.mean(recognizer.predict_faces(rare).argmax(1) == disgust)
    recognizer.prior = "train"
    if name in SHIPPED_ENSEMBLES:
        # an ensemble averages its members' probabilities: the public API must give exactly that
        # (checked on 512 faces), so the whole set's figure comes from the members' kept passes
        members = [_as_trained(member) for member in SHIPPED_ENSEMBLES[name]]
        probs = np.mean(members, axis=0)
        np.testing.assert_allclose(recognizer.predict_faces(test.faces[:512]), probs[:512],
                                   rtol=1e-4, atol=1e-5)
    else:
        probs = _as_trained(name)
    as_trained = probs.argmax(1)
    acc = float(np.mean(as_trained == test.labels))
    assert acc >= expected - 0.005, (f"{name}: PrivateTest accuracy {acc:.4f} < card "
                                     f"{expected:.4f} - 0.005")
    assert uniform > np.mean(as_trained[test.labels == disgust] == disgust) + 0.05
