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


def test_eight_classes_add_contempt_after_fer2013s_seven():
    assert class_names(8) == (*EMOTIONS, "contempt")
    np.testing.assert_array_equal(remap_labels(np.arange(8), 8), np.arange(8))
    # contempt has no place in the seven- or six-class view
    assert remap_labels(np.array([7]), 7)[0] == -1 and remap_labels(np.array([7]), 6)[0] == -1


@pytest.mark.parametrize("n", [0, 5, 9])
def test_unsupported_class_count(n):
    with pytest.raises(ValueError, match="fer2013_6class.*ferplus"):
        class_names(n)


def test_fer2013_has_no_eight_class_view(tmp_path):
    from ferlab.data import FER2013DataModule

    with pytest.raises(ValueError, match="contempt, the eighth, is FER\\+'s: data=ferplus"):
        FER2013DataModule(tmp_path, num_classes=8)
