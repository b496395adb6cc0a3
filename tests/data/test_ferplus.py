"""FER+: both layouts, the paper's four label modes, the seven- and eight-class views, training."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ferlab import artifacts
from ferlab.data import FERPlusDataModule
from ferlab.data.cache import load_cached
from ferlab.data.ferplus import (
    LABEL_MODES,
    VoteTable,
    locate_ferplus,
    majority_labels,
    read_folders,
    read_votes_csv,
    vote_targets,
)
from ferlab.data.labels import VOCABULARY
from ferlab.data.sources import DataFormatError, DataNotFoundError
from ferlab.losses import ClassificationLoss
from ferlab.training import train
from tests.fer_fixtures import (
    make_faces,
    make_votes,
    write_fer2013_csv,
    write_ferplus_folders,
    write_ferplus_votes_csv,
)

ANGRY, NEUTRAL, HAPPY, CONTEMPT = (VOCABULARY.index(c) for c in
                                   ("angry", "neutral", "happy", "contempt"))
# FER+'s vote order: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt,
# unknown, NF
SPLIT_VOTES = [4, 0, 0, 1, 3, 2, 0, 0, 0, 0]  # sadness' single vote is an outlier
CLEAR = [6, 0, 1, 1, 0, 0, 0, 0, 2, 0]
TIE = [5, 5, 0, 0, 0, 0, 0, 0, 0, 0]
UNKNOWN = [2, 0, 0, 0, 0, 0, 0, 0, 8, 0]
CONTEMPTUOUS = [2, 0, 0, 0, 0, 0, 0, 8, 0, 0]


@pytest.fixture(scope="module")
def ferplus():
    faces, labels, usages = make_faces()
    return faces, make_votes(labels), usages, labels


@pytest.fixture(scope="module")
def folders_root(tmp_path_factory, ferplus):
    faces, votes, usages, _ = ferplus
    return write_ferplus_folders(tmp_path_factory.mktemp("ferplus"), faces, votes, usages)


@pytest.fixture(scope="module")
def csv_layout(tmp_path_factory, ferplus):
    """fer2013.csv beside fer2013new.csv, with one not-a-face row FER+ left unnamed."""
    faces, votes, usages, labels = ferplus
    root = tmp_path_factory.mktemp("ferplus_csv")
    write_fer2013_csv(root / "fer2013.csv", faces, labels, usages)
    names = [f"fer{i:07d}.png" for i in range(len(votes))]
    names[3] = ""
    write_ferplus_votes_csv(root / "fer2013new.csv", votes, usages, names)
    return root


# --- votes -> targets: the reference code's rules, by hand -------------------------------------
def test_majority_needs_more_than_half_of_the_votes_after_outliers():
    labels, keep = majority_labels(np.array([SPLIT_VOTES, CLEAR, TIE, UNKNOWN, CONTEMPTUOUS]))
    # SPLIT_VOTES: 4 of 9 (the single vote dropped) is no majority; a tie none; unknown dropped
    np.testing.assert_array_equal(keep, [False, True, False, False, True])
    np.testing.assert_array_equal(labels, [NEUTRAL, CONTEMPT])


def test_crossentropy_and_probability_keep_the_top_emotions_up_to_75_percent():
    for mode in ("crossentropy", "probability"):
        targets, keep = vote_targets(np.array([SPLIT_VOTES, CLEAR, TIE, UNKNOWN]), mode)
        np.testing.assert_array_equal(keep, [True, True, True, False])
        expected = np.zeros((3, 8), np.float32)
        expected[0, [NEUTRAL, ANGRY]] = [4 / 7, 3 / 7]  # disgust's 2 come after 75% is reached
        expected[1, NEUTRAL] = 1.0  # 6 of 8 is 75%: unknown's 2 are never reached
        expected[2, [NEUTRAL, HAPPY]] = 0.5
        np.testing.assert_allclose(targets, expected, atol=1e-6)


def test_multilabel_accepts_every_emotion_with_30_percent():
    targets, keep = vote_targets(np.array([SPLIT_VOTES, [3, 3, 0, 0, 3, 0, 0, 0, 1, 0]]),
                                 "multilabel")
    np.testing.assert_array_equal(keep, [True, True])
    np.testing.assert_allclose(targets[0, [NEUTRAL, ANGRY]], [4 / 7, 3 / 7], atol=1e-6)
    np.testing.assert_allclose(targets[1, [NEUTRAL, HAPPY, ANGRY]], [1 / 3] * 3, atol=1e-6)


def test_seven_classes_drop_contempt():
    votes = np.array([CONTEMPTUOUS, [4, 0, 0, 0, 0, 0, 0, 3, 0, 0]])
    labels, keep = majority_labels(votes, num_classes=7)
    np.testing.assert_array_equal(keep, [False, True])
    targets, keep = vote_targets(votes, "crossentropy", num_classes=7)
    assert targets.shape == (1, 7) and keep.tolist() == [False, True]
    assert targets[0, NEUTRAL] == pytest.approx(1.0)  # contempt's share removed, renormalised


@pytest.mark.parametrize("bad, message", [
    ({"mode": "soft"}, "data.labels=.soft. is not one of"),
    ({"num_classes": 6}, r"FER\+ trains 8 classes"),
])
def test_bad_mode_or_class_view(bad, message):
    with pytest.raises(ValueError, match=message):
        vote_targets(np.array([CLEAR]), bad.get("mode", "majority"), bad.get("num_classes", 8))


# --- layouts --------------------------------------------------------------------------------------
def test_both_layouts_read_the_same_faces_and_votes(folders_root, csv_layout, ferplus):
    faces, votes, usages, _ = ferplus
    folders = read_folders(folders_root)
    csv = read_votes_csv(csv_layout)
    assert len(folders) == len(faces) and len(csv) == len(faces) - 1  # the unnamed row
    assert (locate_ferplus(folders_root).kind, locate_ferplus(csv_layout).kind) == (
        "folders", "csv")
    keep = np.arange(len(faces)) != 3
    for table in (csv, VoteTable(folders.faces[keep], folders.votes[keep], folders.splits[keep],
                                 folders.sources[keep])):
        np.testing.assert_array_equal(table.faces, faces[keep])
        np.testing.assert_array_equal(table.votes, votes[keep])
    assert len(folders.select("train")) == (usages == "Training").sum()
    assert folders.sources[0] == "FER2013Train/fer0000000.png"


def test_votes_from_fer2013new_instead_of_label_csv(folders_root, tmp_path, ferplus):
    faces, votes, usages, _ = ferplus
    root = shutil.copytree(folders_root, tmp_path / "ferplus")
    revised = votes.copy()
    revised[5] = TIE
    write_ferplus_votes_csv(root / "fer2013new.csv", revised, usages)
    np.testing.assert_array_equal(read_folders(root).votes[5], votes[5])
    np.testing.assert_array_equal(read_folders(root, "fer2013new.csv").votes[5], TIE)
    # the cache keeps the two apart
    for name, expected in (("label.csv", votes[5]), ("fer2013new.csv", TIE)):
        table = load_cached(locate_ferplus(root, name), VoteTable, "ferplus", "FER+",
                            tmp_path / "cache")
        np.testing.assert_array_equal(table.votes[5], expected)


def test_missing_or_unknown_layout(tmp_path, folders_root):
    with pytest.raises(DataNotFoundError, match="FERPlus.*label.csv"):
        locate_ferplus(tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match="No FER\\+ layout"):
        locate_ferplus(tmp_path)
    with pytest.raises(DataNotFoundError, match="fer2013new.csv does not exist"):
        locate_ferplus(folders_root, "fer2013new.csv")
    with pytest.raises(ValueError, match="data.votes='votes.csv'"):
        locate_ferplus(folders_root, "votes.csv")


@pytest.mark.parametrize("line, message", [
    ('fer0000000.png,"(0, 0, 48, 48)",4,0,0', "rows have 5 fields"),
    ('fer0000000.png,"(0, 0, 48, 48)",4,0,0,1,3,x,0,0,0,0', "not all non-negative integers"),
    ('fer0000000.png,"(0, 0, 48, 48)",4,0,0,1,3,-2,0,0,0,0', "not all non-negative integers"),
    ('../fer0000000.png,"(0, 0, 48, 48)",4,0,0,1,3,2,0,0,0,0', "not a file in"),
    ('fer9999999.png,"(0, 0, 48, 48)",4,0,0,1,3,2,0,0,0,0', "not a file in"),
])
def test_damaged_label_csv_names_the_file(folders_root, tmp_path, line, message):
    root = shutil.copytree(folders_root, tmp_path / "ferplus")
    (root / "FER2013Train" / "label.csv").write_text(line + "\n")
    with pytest.raises(DataFormatError, match=message):
        read_folders(root)


def test_csv_votes_must_follow_fer2013_csv(csv_layout, tmp_path, ferplus):
    faces, votes, usages, labels = ferplus
    root = shutil.copytree(csv_layout, tmp_path / "ferplus")
    write_ferplus_votes_csv(root / "fer2013new.csv", votes[:-1], usages[:-1])
    with pytest.raises(DataFormatError, match="follow fer2013.csv row for row"):
        read_votes_csv(root)
    write_ferplus_votes_csv(root / "fer2013new.csv", votes, usages[::-1])
    with pytest.raises(DataFormatError, match="do not belong together"):
        read_votes_csv(root)


# --- the data module and the loss -----------------------------------------------------------------
@pytest.mark.parametrize("mode", LABEL_MODES)
def test_datamodule_targets_per_mode(folders_root, tmp_path, mode):
    data = FERPlusDataModule(folders_root, labels=mode, cache_dir=tmp_path, batch_size=8)
    data.setup()
    fit = data.datasets["fit"].labels
    assert fit.shape[1:] == (() if mode == "majority" else (8,))
    for split in ("val", "test"):  # always the majority label
        assert data.datasets[split].labels.ndim == 1
    counts = data.class_counts("fit")
    assert counts.sum() == pytest.approx(len(fit)) and counts[CONTEMPT] > 0
    batch = fit[:16]
    drawn = data.training_targets(batch)
    if mode == "probability":  # one class per face, drawn among the target's classes
        assert drawn.shape == (16,) and (batch.gather(1, drawn[:, None]) > 0).all()
    else:
        assert drawn is batch
    assert data.label_set == (mode == "multilabel")


def test_multilabel_loss_is_the_best_accepted_class():
    loss = ClassificationLoss(3)
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    accepted = torch.tensor([[0.0, 0.5, 0.5]])
    # as a distribution: cross-entropy 0.5 * (-log 0.3) + 0.5 * (-log 0.1)
    assert loss(logits, accepted).item() == pytest.approx(-0.5 * np.log(0.03), abs=1e-5)
    loss.label_set = True
    assert loss(logits, accepted).item() == pytest.approx(-np.log(0.3), abs=1e-5)
    smoothed = ClassificationLoss(3, label_smoothing=0.3)
    smoothed.label_set = True
    expected = -(0.7 * np.log(0.3) + 0.3 * np.mean(np.log([0.6, 0.3, 0.1])))
    assert smoothed(logits, accepted).item() == pytest.approx(expected, abs=1e-5)


def _evaluate(tmp_path, run, *overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ferlab.config import CONFIG_DIR
    from ferlab.evaluate import evaluate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={run}", "device=cpu", "splits=[test]",
                                         f"output_dir={tmp_path / 'eval'}", *overrides])
    return evaluate(cfg)["datasets"]["test"]


def test_trains_on_ferplus_in_eight_classes_and_evaluates_on_both_label_sets(
        make_cfg, folders_root, csv_root, tmp_path, ferplus):
    cfg = make_cfg(["data=ferplus", f"data.root={folders_root}", "data.labels=crossentropy",
                    "model=baseline", "trainer.max_epochs=2", "data.batch_size=4"])
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and "test/recall/contempt" in metrics
    run = cfg.paths.output_dir
    trained = artifacts.load(run)
    assert trained.classes == VOCABULARY
    assert trained.network(torch.zeros(1, 1, 48, 48)).shape == (1, 8)
    # FER+'s test faces, counted against their majority label (contempt among them)
    _, votes, usages, _ = ferplus
    expected = majority_labels(votes[usages == "PrivateTest"])[0]
    on_ferplus = _evaluate(tmp_path, run, "dataset=ferplus", f"ferplus_root={folders_root}")
    assert on_ferplus["n"] == len(expected) and on_ferplus["per_class"]["contempt"][
        "support"] == (expected == CONTEMPT).sum() > 0
    assert on_ferplus["seven_class"]["n"] == (expected != CONTEMPT).sum()
    # FER2013's PrivateTest labels of the same kind of faces: eight outputs, seven labels
    on_fer2013 = _evaluate(tmp_path, run, f"data_root={csv_root}")
    assert on_fer2013["n"] == 14 and on_fer2013["per_class"]["contempt"]["support"] == 0
    assert on_fer2013["seven_class"]["n"] == 14 and "six_class" in on_fer2013
    assert on_fer2013["seven_class"]["acc"] >= on_fer2013["acc"]  # contempt no longer counts


@pytest.mark.parametrize("mode, classes, extra", [
    ("multilabel", 7, []),
    ("probability", 8, []),
    ("crossentropy", 8, ["module.mixup_alpha=0.2", "module.cutmix_alpha=1.0"]),  # mixed soft
])
def test_trains_in_every_mode(make_cfg, folders_root, mode, classes, extra):
    cfg = make_cfg(["data=ferplus", f"data.root={folders_root}", f"data.labels={mode}",
                    f"data.num_classes={classes}", "model=baseline", "trainer.max_epochs=1",
                    *extra])
    metrics = train(cfg)
    assert ("test/recall/contempt" in metrics) == (classes == 8)
    assert "test/recall/neutral" in metrics and np.isfinite(metrics["train/loss_epoch"])


def test_multilabel_refuses_mixup(make_cfg, folders_root):
    cfg = make_cfg(["data=ferplus", f"data.root={folders_root}", "data.labels=multilabel",
                    "model=baseline", "trainer.max_epochs=1", "module.mixup_alpha=0.2"])
    with pytest.raises(ValueError, match="mixup / cutmix would blur"):
        train(cfg)


# --- the real FER+ ------------------------------------------------------------------------------
REAL = Path(os.environ.get("FERLAB_FERPLUS",
                           Path(__file__).resolve().parents[3] / "shared" / "data" / "ferplus"))


@pytest.mark.data
@pytest.mark.skipif(not (REAL / "FER2013Train" / "label.csv").is_file(),
                    reason=f"FER+ not found at {REAL}")
def test_real_ferplus_votes_and_majorities():
    """The copy beside the project: its MANIFEST's counts, and the two vote files' disagreement
    (read without decoding a face)."""
    from ferlab.data.ferplus import FOLDERS, _read_label_csv, _read_votes_csv

    new = _read_votes_csv(REAL / "fer2013new.csv")
    revised = {(usage, name): row for usage, name, row in zip(
        new["Usage"], new["Image name"], new[list(new.columns[2:])].to_numpy(dtype=int))}
    usages = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
    for split, faces, differ in [("train", 28_558, 1_073), ("val", 3_579, 246),
                                 ("test", 3_573, 283)]:
        names, votes = _read_label_csv(REAL / FOLDERS[split] / "label.csv")
        assert len(names) == faces == len(list((REAL / FOLDERS[split]).glob("*.png")))
        assert sum((votes[i] != revised[(usages[split], n)]).any()
                   for i, n in enumerate(names)) == differ
        if split == "test":
            assert majority_labels(votes)[1].sum() == 3_137
