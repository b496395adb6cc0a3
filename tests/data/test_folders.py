from pathlib import Path

import cv2
import numpy as np
import pytest

from ferlab.data import class_names, to_face
from ferlab.data.folders import read_labelled_folder


def _write(root: Path, folder: str, n: int, value: int) -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(root / folder / f"{i}.png"), np.full((60, 50), value, np.uint8))


def _load(path):
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"{path}: unreadable")
    return None if image.mean() == 0 else to_face(image)


@pytest.fixture
def ckplus(tmp_path):
    root = tmp_path / "ck"
    _write(root, "anger", 2, 10)
    _write(root, "happiness", 3, 20)
    _write(root, "Surprised", 1, 30)
    _write(root, "disgust", 2, 40)
    _write(root, "contempt", 4, 50)
    _write(root, "sadness", 1, 0)  # "no face found" by the loader above
    (root / "anger" / "broken.png").write_bytes(b"nope")
    return root


def test_mapping_and_exclusions(ckplus):
    data = read_labelled_folder(ckplus, class_names(7), _load)
    names = class_names(7)
    assert sorted(names[i] for i in data.labels) == sorted(
        ["angry"] * 2 + ["happy"] * 3 + ["surprise"] + ["disgust"] * 2)
    assert data.faces.shape == (8, 48, 48) and data.faces.dtype == np.uint8
    assert data.excluded_classes == {"contempt": 4}
    assert len(data.no_face) == 1 and "sadness" in data.no_face[0]
    assert list(data.unreadable) == [str(ckplus / "anger" / "broken.png")]


def test_six_class_model_folds_disgust(ckplus):
    data = read_labelled_folder(ckplus, class_names(6), _load)
    assert (data.labels == 0).sum() == 4  # anger + disgust -> angry


def test_custom_class_map(ckplus):
    (ckplus / "contempt").rename(ckplus / "enojo")
    data = read_labelled_folder(ckplus, class_names(7), _load, class_map={"enojo": "angry"})
    assert (data.labels == 0).sum() == 6 and not data.excluded_classes
    with pytest.raises(ValueError, match="not ferlab classes"):
        read_labelled_folder(ckplus, class_names(7), _load, class_map={"x": "contempt!"})


def test_contempt_counts_in_the_eight_class_view(ckplus):
    seven = read_labelled_folder(ckplus, class_names(7), _load)
    eight = read_labelled_folder(ckplus, class_names(8), _load)
    assert "contempt" in seven.excluded_classes and not eight.excluded_classes
    assert (eight.labels == class_names(8).index("contempt")).sum() == seven.excluded_classes[
        "contempt"]


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="<root>/<class>/<image>"):
        read_labelled_folder(tmp_path / "none", class_names(7), _load)
    with pytest.raises(ValueError, match="no class folders"):
        read_labelled_folder(tmp_path, class_names(7), _load)
