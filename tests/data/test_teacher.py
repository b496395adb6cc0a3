"""data.teacher: a teacher's answers on the training faces, computed once and cached, as part
of each training target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ferlab.data import FER2013DataModule, FERPlusDataModule
from ferlab.inference.recognizer import EmotionRecognizer


def _module(root, tmp_path, teacher, num_classes=7, weight=0.7):
    dm = FER2013DataModule(root, num_classes=num_classes, batch_size=8, teacher=teacher,
                           teacher_weight=weight, cache_dir=tmp_path / "cache")
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_training_targets_mix_the_teachers_answers_with_the_labels(csv_root, tmp_path,
                                                                   tiny_model_file):
    plain = _module(csv_root, tmp_path / "plain", None)
    dm = _module(csv_root, tmp_path, str(tiny_model_file))
    train, labels = dm.datasets["fit"], plain.datasets["fit"].labels
    assert train.labels.shape == (len(labels), 7)
    faces = train.faces[:, 0].numpy()
    answers = EmotionRecognizer(str(tiny_model_file), prior="train").predict_faces(faces)
    expected = 0.7 * answers + 0.3 * np.eye(7)[labels.numpy()]
    np.testing.assert_allclose(train.labels.numpy(), expected, atol=1e-5)
    assert torch.allclose(train.labels.sum(1), torch.ones(len(labels)))
    # val and test keep their labels; the answers are computed once (the cache is read)
    assert dm.datasets["val"].labels.ndim == 1
    assert len(list((tmp_path / "cache").glob("teacher-*.npy"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher ran again")

    original = EmotionRecognizer.predict_faces
    EmotionRecognizer.predict_faces = refuse
    try:
        again = _module(csv_root, tmp_path, str(tiny_model_file))
    finally:
        EmotionRecognizer.predict_faces = original
    assert torch.equal(again.datasets["fit"].labels, train.labels)


def test_an_ensemble_teaches_in_the_six_class_view(csv_root, tmp_path, tiny_model_file):
    teacher = [str(tiny_model_file), str(tiny_model_file)]
    seven = _module(csv_root, tmp_path, teacher, weight=1.0).datasets["fit"].labels
    six = _module(csv_root, tmp_path, teacher, num_classes=6, weight=1.0).datasets["fit"].labels
    assert six.shape[1] == 6
    torch.testing.assert_close(six[:, 0], seven[:, 0] + seven[:, 1])  # disgust into angry
    torch.testing.assert_close(six[:, 1:], seven[:, 2:])


def test_a_teacher_is_refused_where_it_cannot_teach(csv_root, tmp_path):
    with pytest.raises(ValueError, match="teacher_weight must be in"):
        FER2013DataModule(csv_root, teacher="default", teacher_weight=0)
    with pytest.raises(ValueError, match="module.teacher"):
        FERPlusDataModule(tmp_path, teacher="default")


def test_the_teacher_answers_once_for_all_the_training_splits(csv_root, tmp_path,
                                                              tiny_model_file, monkeypatch):
    calls = []
    original = EmotionRecognizer.predict_faces

    def counted(self, faces, *args, **kwargs):
        calls.append(len(faces))
        return original(self, faces, *args, **kwargs)

    monkeypatch.setattr(EmotionRecognizer, "predict_faces", counted)
    dm = FER2013DataModule(csv_root, batch_size=8, teacher=str(tiny_model_file),
                           train_splits=["train", "val"], cache_dir=tmp_path / "cache")
    dm.prepare_data()
    dm.setup("fit")
    fit = dm.datasets["fit"]
    assert calls == [len(fit)] and fit.labels.shape == (len(fit), 7)
    assert len(fit) == len(dm.datasets["train"]) + len(dm.datasets["val"])
