"""data=folder and data=mixture: any labelled folder set for training, subject-independent splits
and folds, the memory-mapped cache, several sets at once."""

from __future__ import annotations

import logging
import shutil

import cv2
import numpy as np
import pytest
import torch

from ferlab.data import FolderDataModule, MixtureDataModule
from ferlab.data.folders import FolderSource, assign_splits, subject_groups
from ferlab.data.labels import SPLITS, VOCABULARY
from ferlab.data.sources import DataFormatError, DataNotFoundError

FOLDERS = {"anger": "angry", "Happiness": "happy", "contempt": "contempt", "neutral": "neutral",
           "5": "surprise"}  # "5": a numeric folder, mapped by data.class_map


def write_set(root, subjects=6, colour=True):
    """Images of several sizes (colour or grey), CK+-style names S<subject>_<n>.png."""
    rng = np.random.default_rng(0)
    for i, folder in enumerate(FOLDERS):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for s in range(subjects):
            shape = (40 + 12 * s, 56) + ((3,) if colour else ())
            image = rng.integers(40, 120, size=shape, dtype=np.uint8)
            image[4 + 8 * i:8 + 8 * i] = 230
            cv2.imwrite(str(root / folder / f"S{s:03d}_{i:03d}.png"), image)
    return root


@pytest.fixture
def ck(tmp_path):
    return write_set(tmp_path / "ck")


def module(root, tmp_path, **kwargs):
    kwargs.setdefault("class_map", {"5": "surprise"})
    return FolderDataModule(root, cache_dir=tmp_path / "cache", batch_size=4, **kwargs)


def test_any_image_size_and_colour_becomes_a_48px_grey_face(ck, tmp_path):
    data = module(ck, tmp_path, num_classes=8, val_fraction=0.2)
    data.setup()
    assert isinstance(data.datasets["fit"].faces, np.memmap)  # read memory-mapped
    faces, labels = data.datasets["fit"][[0, 1, 2]]
    assert faces.shape == (3, 1, 48, 48) and faces.dtype == torch.uint8
    every = torch.cat([data.datasets[s].labels for s in SPLITS])
    assert sorted({VOCABULARY[i] for i in every.tolist()}) == sorted(FOLDERS.values())
    assert sum(len(data.datasets[s]) for s in SPLITS) == 30
    # the seven-class view leaves contempt's faces out
    seven = module(ck, tmp_path, num_classes=7, val_fraction=0.2)
    seven.setup()
    assert sum(len(seven.datasets[s]) for s in SPLITS) == 24


@pytest.mark.parametrize("change, error, message", [
    (lambda r: (r / "joy!").mkdir(), DataFormatError, r"data.class_map=\{joy!: <class>\}"),
    (lambda r: (r / "train").mkdir(), DataFormatError, "mixes split folders"),
])
def test_a_set_ferlab_cannot_read_is_refused_with_the_fix(ck, tmp_path, change, error, message):
    change(ck)
    (ck / "joy!" if (ck / "joy!").exists() else ck / "train").joinpath("x.png").write_bytes(b"")
    with pytest.raises(error, match=message):
        module(ck, tmp_path).setup()


def test_bad_settings_are_refused(ck, tmp_path):
    with pytest.raises(DataNotFoundError, match="No folder set at"):
        module(tmp_path / "nowhere", tmp_path).check_source()
    with pytest.raises(ValueError, match="data.detect='dlib'"):
        module(ck, tmp_path, detect="dlib").check_source()
    with pytest.raises(ValueError, match="has no group"):
        module(ck, tmp_path, group=r"S\d+")
    with pytest.raises(ValueError, match="k-fold needs folds >= 2"):
        module(ck, tmp_path, folds=5, fold=5)
    with pytest.raises(ValueError, match="finds no subject id in"):
        subject_groups(np.array(["anger/S001_0.png", "anger/x.png"]), r"^(S\d+)_")


def test_an_unreadable_image_names_the_file(ck, tmp_path):
    (ck / "anger" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataFormatError, match="broken.png: cannot be read as an image"):
        module(ck, tmp_path).setup()


def test_split_folders_without_val_get_a_val_split(tmp_path):
    root = tmp_path / "raf"
    write_set(root / "train", subjects=5)
    write_set(root / "test", subjects=2)
    data = module(root, tmp_path, val_fraction=0.25, num_classes=8)
    data.setup()
    assert len(data.datasets["test"]) == 10
    assert len(data.datasets["val"]) + len(data.datasets["train"]) == 25
    assert len(data.datasets["val"]) > 0


def test_subject_independent_folds(ck, tmp_path):
    groups = subject_groups(np.array([f"{c}/S{s:03d}_{c}.png" for c in "ab" for s in range(7)]),
                            r"^(S\d+)_")
    tested = []
    for fold in range(3):
        splits = assign_splits(groups, np.full(len(groups), -1), 0.2, 0.0, folds=3, fold=fold)
        subjects = {s: set(groups[splits == SPLITS.index(s)]) for s in SPLITS}
        assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"]
                    or subjects["val"] & subjects["test"])  # no subject in two splits
        assert subjects["val"] and subjects["train"]
        tested.append(subjects["test"])
    assert set.union(*tested) == set(groups) and sum(map(len, tested)) == 7  # each once
    data = module(ck, tmp_path, group=r"^(S\d+)_", folds=3, fold=1, num_classes=8)
    data.setup()
    names = np.asarray(data._load().sources)
    split_subjects = [{n.split("/")[1][:4] for n in names[data.datasets[s].rows]}
                      for s in SPLITS]
    assert not (split_subjects[0] & split_subjects[2]) and len(split_subjects[2]) == 2


def test_the_cache_is_read_again_until_the_set_changes(ck, tmp_path, monkeypatch, caplog):
    module(ck, tmp_path).setup()
    monkeypatch.setattr(FolderSource, "read_into", lambda *a: pytest.fail("decoded again"))
    module(ck, tmp_path).setup()  # from the cache
    monkeypatch.undo()
    shutil.copy(ck / "anger" / "S000_000.png", ck / "anger" / "S009_000.png")
    with caplog.at_level(logging.INFO, logger="ferlab.data.cache"):
        data = module(ck, tmp_path, val_fraction=0.2)
        data.setup()
    assert "Decoding" in caplog.text and "Removed the stale" in caplog.text
    assert sum(len(data.datasets[s]) for s in SPLITS) == 25  # 31 images less contempt's 6
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_a_damaged_cache_is_decoded_again(ck, tmp_path, caplog):
    module(ck, tmp_path).setup()
    [cache] = (tmp_path / "cache").iterdir()
    (cache / "labels.npy").write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING):
        data = module(ck, tmp_path)
        data.setup()
    assert "Ignoring the damaged cache" in caplog.text and len(data.datasets["fit"]) > 0


def test_faces_are_detected_and_cropped_once(tmp_path, portrait, caplog):
    root = tmp_path / "jaffe"
    for folder in ("happy", "sad"):
        (root / folder).mkdir(parents=True)
        cv2.imwrite(str(root / folder / "photo.jpg"), cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "sad" / "blank.jpg"), np.full((200, 200, 3), 128, np.uint8))
    with caplog.at_level(logging.WARNING):
        data = module(root, tmp_path, detect="haar", val_fraction=0.34, test_fraction=0.0)
        data.setup()
    assert "No face found in 1 of 3 images" in caplog.text and "blank.jpg" in caplog.text
    assert sum(len(data.datasets[s]) for s in SPLITS) == 2


def test_a_mixture_draws_by_weight(ck, tmp_path):
    """(Training on a mixture, with each set's test figures: tests/test_docs_data.py.)"""
    data = MixtureDataModule({"a": module(ck, tmp_path), "b": module(ck, tmp_path)},
                             weights={"a": 1, "b": 3})
    data.setup()
    weights = data.draw_weights(data.datasets["fit"])
    part = torch.from_numpy(data.datasets["fit"].part_of)
    assert weights[part == 1].sum() / weights[part == 0].sum() == pytest.approx(3.0)
    faces, labels = data.datasets["fit"][[0, len(data.datasets["fit"]) - 1]]  # one from each
    assert faces.shape == (2, 1, 48, 48) and labels.shape == (2,)
    with pytest.raises(ValueError, match="weigh every set or none"):
        MixtureDataModule({"a": module(ck, tmp_path), "b": module(ck, tmp_path)},
                          weights={"a": 1})
