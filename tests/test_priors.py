"""Class priors: recorded by training and export, chosen at inference, known answers."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from ferlab import artifacts, priors
from ferlab.data import EMOTIONS
from ferlab.inference.model_file import export_model, export_onnx
from ferlab.inference.recognizer import EmotionRecognizer
from ferlab.train import train
from tests.conftest import short_cfg
from tests.fer_fixtures import make_faces, write_fer2013_csv

TWO = ("a", "b")


@pytest.fixture(scope="module")
def skewed_root(tmp_path_factory):
    """Synthetic FER2013 whose Training split holds 7, 6, ... 1 faces of classes 0 .. 6."""
    faces, labels, usages = make_faces({"Training": 7, "PublicTest": 2, "PrivateTest": 2})
    keep = np.ones(len(labels), bool)
    for k in range(len(EMOTIONS)):
        rows = np.flatnonzero((labels == k) & (usages == "Training"))
        keep[rows[7 - k:]] = False
    root = tmp_path_factory.mktemp("skewed")
    write_fer2013_csv(root / "fer2013.csv", faces[keep], labels[keep], usages[keep])
    return root


def test_frequencies_and_the_prior_a_model_learns():
    train_mix = priors.frequencies([8, 2], TWO)
    assert train_mix == {"a": 0.8, "b": 0.2}
    assert priors.output_prior(train_mix) == pytest.approx(train_mix)
    assert priors.output_prior(train_mix, logit_adjust_tau=1.0) == pytest.approx(
        {"a": 0.5, "b": 0.5})
    assert priors.output_prior(train_mix, balanced_sampling=True) == pytest.approx(
        {"a": 0.5, "b": 0.5})
    half = priors.output_prior(train_mix, logit_adjust_tau=0.5)  # sqrt(0.8) : sqrt(0.2) = 2 : 1
    assert half == pytest.approx({"a": 2 / 3, "b": 1 / 3})
    with pytest.raises(ValueError, match="non-negative"):
        priors.frequencies([1, -1], TWO)


def test_moving_probabilities_to_another_prior_known_answers():
    record = {"train": {"a": 0.8, "b": 0.2}, "output": {"a": 0.8, "b": 0.2}}
    probs = np.array([[0.5, 0.5], [0.9, 0.1]], dtype=np.float32)
    assert priors.target_vector("train", TWO, record) is None  # the model's own numbers
    uniform = priors.adjust(probs, priors.target_vector("uniform", TWO, record))
    # 0.5/0.8 : 0.5/0.2 = 1 : 4; 0.9/0.8 : 0.1/0.2 = 9 : 4
    np.testing.assert_allclose(uniform, [[0.2, 0.8], [9 / 13, 4 / 13]], rtol=1e-6)
    assert uniform.dtype == np.float32
    custom = priors.adjust(probs, priors.target_vector({"a": 0.2, "b": 0.8}, TWO, record))
    np.testing.assert_allclose(custom[0], [1 / 17, 16 / 17], rtol=1e-6)
    # a model trained with a flattened output prior: "train" moves it back to the data's mix
    flat = {"train": {"a": 0.8, "b": 0.2}, "output": {"a": 0.5, "b": 0.5}}
    back = priors.adjust(np.array([[0.5, 0.5]]), priors.target_vector("train", TWO, flat))
    np.testing.assert_allclose(back, [[0.8, 0.2]])


def test_bad_priors_are_explained():
    record = {"train": {"a": 0.8, "b": 0.2}, "output": {"a": 0.8, "b": 0.2}}
    with pytest.raises(ValueError, match="one of .*train.*uniform"):
        priors.target_vector("balanced", TWO, record)
    with pytest.raises(ValueError, match=r"classes the model does not have: \['c'\]"):
        priors.target_vector({"a": 1, "c": 1}, TWO, record)
    with pytest.raises(ValueError, match="records no class prior.*prior='train'"):
        priors.target_vector("uniform", TWO, None, where="old.pt")
    assert priors.target_vector("train", TWO, None) is None


def test_shipped_models_carry_their_training_mix():
    record = artifacts.load("default").meta["prior"]
    assert record["faces"] == 32298 and record["splits"] == ["train", "val"]
    assert record["train"]["happy"] == pytest.approx(8110 / 32298)
    assert record["output"] == record["train"]
    for name in ("cpu-trained", "default-int8"):
        assert artifacts.load(name).meta["prior"] == record


def test_the_default_prior_is_uniform_and_train_is_the_network_as_trained():
    faces = np.random.default_rng(0).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    as_trained = EmotionRecognizer("cpu-trained", prior="train")
    uniform = EmotionRecognizer("cpu-trained")
    assert uniform.prior == "uniform"
    factor = np.array([1 / 7 / f for f in artifacts.shipped_prior()["train"].values()])
    expected = as_trained.predict_faces(faces) * factor
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(uniform.predict_faces(faces), expected, rtol=1e-5, atol=1e-6)
    uniform.prior = "train"  # moved back without reloading
    np.testing.assert_array_equal(uniform.predict_faces(faces), as_trained.predict_faces(faces))


def test_a_file_without_a_prior_keeps_its_numbers_by_default_and_refuses_uniform(
        tiny_model_file, caplog):
    with caplog.at_level(logging.WARNING, logger="ferlab.inference.recognizer"):
        recognizer = EmotionRecognizer(tiny_model_file)
    assert recognizer.prior == "train" and "records no class prior" in caplog.text
    with pytest.raises(ValueError, match="records no class prior"):
        EmotionRecognizer(tiny_model_file, prior="uniform")


def test_training_records_the_prior_and_export_carries_it(make_cfg, tmp_path, skewed_root):
    out = tmp_path / "run"
    train(short_cfg(make_cfg, out, ["trainer.max_epochs=1", "test=false",
                                    "module.logit_adjust_tau=1.0", f"data.root={skewed_root}"]))
    ckpt = torch.load(out / "checkpoints/last.ckpt", weights_only=True)
    record = ckpt[priors.PRIOR_KEY]
    counts = np.arange(7, 0, -1)  # the Training split's faces per class
    assert record["faces"] == counts.sum() and record["splits"] == ["train"]
    assert list(record["train"].values()) == pytest.approx(counts / counts.sum())
    assert list(record["output"].values()) == pytest.approx([1 / 7] * 7)  # tau = 1
    pt = export_model(out, tmp_path / "m.pt")
    onnx = export_onnx(out, tmp_path / "m.onnx").path
    for file in (out, pt, onnx):
        assert artifacts.load(file).meta["prior"] == record
    import onnxruntime as ort

    meta = ort.InferenceSession(str(onnx)).get_modelmeta().custom_metadata_map
    assert json.loads(meta["ferlab.prior"]) == record


def test_logit_adjusted_loss_adds_tau_log_prior(make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg(["model=baseline", "module.logit_adjust_tau=1.0", "module.label_smoothing=0"])
    module = instantiate(cfg.module, model=instantiate(cfg.model))
    log_prior = torch.log(torch.tensor([0.4, 0.05, 0.1, 0.2, 0.1, 0.1, 0.05]))
    module.criterion.log_prior.copy_(log_prior)
    module.log = lambda *a, **k: None
    module.log_dict = lambda *a, **k: None
    x, y = torch.randn(4, 1, 48, 48), torch.tensor([0, 1, 2, 3])
    module.eval()  # the same network output both times (no dropout draw)
    loss = module._step((x, y), "train")
    expected = torch.nn.functional.cross_entropy(module(x).float() + log_prior, y)
    torch.testing.assert_close(loss, expected)
    from ferlab.module import EmotionModule

    with pytest.raises(ValueError, match="logit_adjust_tau must be in"):
        EmotionModule(instantiate(cfg.model), logit_adjust_tau=-1)


def test_class_balanced_sampling_draws_every_class_alike(skewed_root, tmp_path):
    from ferlab.data import FER2013DataModule

    dm = FER2013DataModule(skewed_root, batch_size=16, balanced_sampling=True,
                           cache_dir=tmp_path)
    dm.setup("fit")
    assert dm.class_counts("fit").tolist() == [7, 6, 5, 4, 3, 2, 1]
    torch.manual_seed(0)
    drawn = torch.cat([y for _ in range(40) for _, y in dm.train_dataloader()])
    share = torch.bincount(drawn, minlength=7).float() / len(drawn)
    assert share.min() > 0.10 and share.max() < 0.19  # 1/7 = 0.143 each
