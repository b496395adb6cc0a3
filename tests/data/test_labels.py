import numpy as np
import pytest

from ferlab.data import EMOTIONS, class_names, remap_labels


def test_seven_classes_in_fer2013_order():
    assert EMOTIONS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert class_names(7) == EMOTIONS


def test_six_class_remap_merges_disgust_into_angry():
    assert class_names(6) == ("angry", "fear", "happy", "sad", "surprise", "neutral")
    np.testing.assert_array_equal(remap_labels(np.arange(7), 6), [0, 0, 1, 2, 3, 4, 5])
    names = class_names(6)
    for fer_id, emotion in enumerate(EMOTIONS):
        expected = "angry" if emotion == "disgust" else emotion
        assert names[remap_labels(np.array([fer_id]), 6)[0]] == expected


def test_seven_class_remap_is_identity():
    np.testing.assert_array_equal(remap_labels(np.arange(7), 7), np.arange(7))


@pytest.mark.parametrize("n", [0, 5, 8])
def test_unsupported_class_count(n):
    with pytest.raises(ValueError, match="fer2013_6class"):
        class_names(n)
