from __future__ import annotations

import logging
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from ferlab import EmotionRecognizer, artifacts
from ferlab.artifacts import SHIPPED_MODELS, shipped_model_path
from ferlab.data import EMOTIONS, class_names
from ferlab.inference.model_file import save_model
from ferlab.models import VGG
from tests.conftest import TINY


@pytest.fixture(scope="module")
def model_file(tiny_model_file):
    return tiny_model_file


def _faces(n=5, size=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def test_predict_faces_batch(model_file):
    r = EmotionRecognizer(model_file)
    assert r.classes == EMOTIONS
    probs = r.predict_faces(_faces())
    assert probs.shape == (5, 7) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (probs >= 0).all()


def test_crops_of_any_size_and_colour(model_file):
    r = EmotionRecognizer(model_file)
    grey = _faces(1, 96)[0]
    crops = [grey, np.stack([grey] * 3, -1), np.dstack([grey] * 3 + [np.full_like(grey, 255)]),
             grey[..., None], _faces(1, 48)[0][:40, :30]]
    probs = r.predict_faces(crops)
    assert probs.shape == (5, 7)
    # a grey picture gives the same answer in every colour layout
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-5)
    np.testing.assert_allclose(probs[0], probs[2], atol=1e-5)
    np.testing.assert_allclose(probs[0], probs[3], atol=1e-6)


def test_bf16_on_a_cpu_without_bf16_kernels_warns(model_file, monkeypatch, caplog):
    monkeypatch.setattr("ferlab.inference.recognizer.slow_bf16_reason",
                        lambda: "no bf16 kernels here")
    with caplog.at_level(logging.WARNING, logger="ferlab.inference.recognizer"):
        EmotionRecognizer(model_file, prior="train")
        assert not caplog.records  # fp32 is never warned about
        EmotionRecognizer(model_file, precision="bf16", prior="train")
    assert "no bf16 kernels here" in caplog.text and "precision='fp32'" in caplog.text
    monkeypatch.setattr("ferlab.inference.recognizer.slow_bf16_reason", lambda: None)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ferlab.inference.recognizer"):
        EmotionRecognizer(model_file, precision="bf16", prior="train")
    assert not caplog.records


def test_bf16_precision_is_close_to_fp32(model_file):
    faces = _faces(16)
    exact = EmotionRecognizer(model_file).predict_faces(faces)
    fast = EmotionRecognizer(model_file, precision="bf16").predict_faces(faces)
    assert fast.dtype == np.float32 and fast.shape == exact.shape
    np.testing.assert_allclose(fast.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(fast, exact, atol=0.02)
    assert not np.array_equal(fast, exact)  # the network really ran in bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        EmotionRecognizer(model_file, precision="fp16")


def test_bad_batch_size_or_margin_is_explained(model_file):
    for kwargs in ({"batch_size": 0}, {"batch_size": 2.5}, {"margin": -0.1}):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1 and margin"):
            EmotionRecognizer(model_file, **kwargs)


def test_bad_device_is_explained(model_file):
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu'"):
        EmotionRecognizer(model_file, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU here"):
            EmotionRecognizer(model_file, device="cuda")
    assert EmotionRecognizer(model_file, device="auto").device.type in ("cpu", "cuda")


def test_empty_input(model_file):
    assert EmotionRecognizer(model_file).predict_faces([]).shape == (0, 7)


def test_bad_face_input_is_explained(model_file):
    r = EmotionRecognizer(model_file)
    with pytest.raises(ValueError, match="wrap a single crop in a list"):
        r.predict_faces(_faces(1)[0])
    with pytest.raises(ValueError, match="uint8"):
        r.predict_faces([np.zeros((48, 48), np.float32)])
    with pytest.raises(ValueError, match=r"pass \[path\]"):
        r.predict_faces("face.png")
    with pytest.raises(TypeError, match="got NoneType"):
        r.predict_faces(None)


def test_flip_tta_is_mirror_invariant(model_file):
    r = EmotionRecognizer(model_file, tta="flip")
    faces = _faces()
    np.testing.assert_allclose(r.predict_faces(faces), r.predict_faces(faces[:, :, ::-1].copy()),
                               atol=1e-6)
    plain = EmotionRecognizer(model_file, tta="none").predict_faces(faces)
    assert not np.allclose(plain, r.predict_faces(faces))


def test_batching_does_not_change_results(model_file):
    faces = _faces(9)
    a = EmotionRecognizer(model_file, batch_size=2).predict_faces(faces)
    b = EmotionRecognizer(model_file, batch_size=64).predict_faces(faces)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_model_file_refuses_foreign_code(tmp_path):
    torch.save({"format": "ferlab-model/1", "model": {"_target_": "os.system", "command": "x"},
                "state_dict": {}, "classes": list(EMOTIONS)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="names the network 'os.system'"):
        artifacts.load(tmp_path / "evil.pt")


def test_not_a_model_file(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable ferlab model file"):
        artifacts.load(tmp_path / "x.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "y.pt")
    with pytest.raises(ValueError, match="not a ferlab model file"):
        artifacts.load(tmp_path / "y.pt")
    with pytest.raises(FileNotFoundError):
        EmotionRecognizer(tmp_path / "missing.pt")


def test_six_class_model_file(tmp_path):
    cfg = {**TINY, "num_classes": 6}
    net = VGG(stages=[[4], [8]], hidden=[16], num_classes=6)
    path = save_model(net, cfg, class_names(6), tmp_path / "six.pt")
    r = EmotionRecognizer(path)
    assert r.classes == class_names(6) and r.predict_faces(_faces(2)).shape == (2, 6)


def test_analyze_without_faces_is_empty(model_file):
    r = EmotionRecognizer(model_file)
    assert r.analyze(np.full((200, 300, 3), 127, np.uint8)) == []


def test_analyze_real_photo_in_every_layout(model_file, portrait, tmp_path):
    import cv2

    r = EmotionRecognizer(model_file)
    bgr = cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR)
    path = tmp_path / "hopper.png"
    cv2.imwrite(str(path), bgr)
    inputs = {
        "bgr": (bgr, "bgr"), "rgb": (portrait, "rgb"),
        "grey": (cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), "bgr"),
        "rgba": (np.dstack([portrait, np.full(portrait.shape[:2], 255, np.uint8)]), "rgb"),
        "pil": (Image.fromarray(portrait), "bgr"), "path": (path, "bgr"), "str": (str(path), "bgr"),
    }
    results = {name: r.analyze(image, color_order=order) for name, (image, order) in inputs.items()}
    h, w = portrait.shape[:2]
    for name, faces in results.items():
        assert len(faces) == 1, name
        face = faces[0]
        x, y, bw, bh = face["box"]
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h and bw >= 40
        assert face["label"] in EMOTIONS
        assert face["score"] == max(face["probabilities"].values())
        assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert results["bgr"][0]["box"] == results["rgb"][0]["box"] == results["path"][0]["box"]


def test_recognizer_from_checkpoint_matches_exported_file(make_cfg, tmp_path):
    from ferlab.export import main as export_main
    from ferlab.train import train

    out = tmp_path / "run"
    train(make_cfg(["model=baseline", "trainer.max_epochs=1", "test=false",
                    "module/scheduler=none"], output_dir=out))
    assert export_main([str(out), str(tmp_path / "m.pt"), "--tta", "none"]) == 0
    faces = _faces(6)
    from_ckpt = EmotionRecognizer(out).predict_faces(faces)
    from_file = EmotionRecognizer(tmp_path / "m.pt").predict_faces(faces)
    np.testing.assert_allclose(from_ckpt, from_file, atol=1e-6)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert not any("optimizer" in k for k in payload) and payload["tta"] == "none"
    # an existing model file is replaced only on request
    assert export_main([str(out), str(tmp_path / "m.pt")]) == 2
    assert torch.load(tmp_path / "m.pt", weights_only=True)["tta"] == "none"
    assert export_main([str(out), str(tmp_path / "m.pt"), "--overwrite"]) == 0
    assert torch.load(tmp_path / "m.pt", weights_only=True)["tta"] == "flip"


def test_half_export_of_a_model_file(tmp_path):
    """--half stores float16 weights (half the bytes), loads back into the float32 network and
    keeps the predictions and the file's recipe; integer buffers stay integers."""
    from ferlab.export import main as export_main

    torch.manual_seed(0)
    cfg = {**TINY, "stages": [[16, 16], [32]], "hidden": [64]}
    net = VGG(**{k: v for k, v in cfg.items() if k != "_target_"})
    full = save_model(net, cfg, EMOTIONS, tmp_path / "full.pt", recipe={"name": "tiny"})
    assert export_main([str(full), str(tmp_path / "half.pt"), "--half", "--tta", "none"]) == 0
    payload = torch.load(tmp_path / "half.pt", weights_only=True)
    weights = payload["state_dict"]
    assert {v.dtype for k, v in weights.items() if "num_batches" not in k} == {torch.float16}
    assert all(v.dtype == torch.int64 for k, v in weights.items() if "num_batches" in k)
    assert payload["recipe"] == {"name": "tiny"} and payload["tta"] == "none"
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * full.stat().st_size
    network = artifacts.load(tmp_path / "half.pt").network
    assert all(p.dtype == torch.float32 for p in network.parameters())
    faces = _faces(8)
    expected = EmotionRecognizer(full, tta="none").predict_faces(faces)
    got = EmotionRecognizer(tmp_path / "half.pt").predict_faces(faces)
    np.testing.assert_allclose(got, expected, atol=2e-3)
    assert not np.array_equal(got, expected)  # the weights really were rounded


def test_recognizer_agrees_with_the_training_path(make_cfg, tmp_path, csv_root):
    """Inference and validation share one preprocessing: same faces, same probabilities."""
    from ferlab.data import FER2013DataModule
    from ferlab.train import train
    from tests.conftest import trained_module

    out = tmp_path / "run"
    train(make_cfg(["model=baseline", "trainer.max_epochs=1", "test=false",
                    "module/scheduler=none"], output_dir=out))
    module, _ = trained_module(out)
    dm = FER2013DataModule(csv_root, eval_batch_size=16)
    dm.setup("test")
    with torch.no_grad():  # the batches as validation and test see them, through the module
        probs = torch.cat([torch.softmax(module(dm.on_after_batch_transfer(batch, 0)[0]), 1)
                           for batch in dm.test_dataloader()])
    faces = dm.datasets["test"].faces[:, 0].numpy()
    recognizer = EmotionRecognizer(out, tta="none")
    np.testing.assert_allclose(recognizer.predict_faces(faces), probs.numpy(), atol=1e-5)


@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_shipped_model_loads_without_network(monkeypatch, name):
    if not shipped_model_path(name).is_file():
        pytest.skip(f"no shipped model {name!r} in this checkout")

    def no_network(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    r = EmotionRecognizer() if name == "default" else EmotionRecognizer(name)
    assert r.classes == EMOTIONS
    assert r.predict_faces(_faces(2)).shape == (2, 7)
    assert shipped_model_path(name).stat().st_size < 10_000_000


def test_an_unknown_model_name_says_what_ships(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="cpu-trained"):
        EmotionRecognizer("cpu")
    with pytest.raises(ValueError, match="ships"):
        shipped_model_path("cpu")
