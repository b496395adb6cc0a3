"""model=timm and model.weights=: any timm network by name, loadable for inference, ONNX, int8
and ensembles through the schema; weights from a state dict or safetensors file a user has."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from ferlab import artifacts
from ferlab.artifacts import CONFIG_KEY
from ferlab.data import EMOTIONS
from ferlab.inference.model_file import onnx_model, quantize_int8, save_model
from ferlab.inference.recognizer import EmotionRecognizer
from ferlab.models import VGG, TimmNetwork
from ferlab.models.schema import SchemaError
from ferlab.models.weights import load_weights

SMALL = {"_target_": "ferlab.models.TimmNetwork", "name": "resnet10t", "num_classes": 7,
         "in_chans": 1, "input_size": 32, "dropout": 0.0, "drop_path": 0.0}


def test_a_timm_network_takes_faces_at_its_input_size_and_channels():
    grey = TimmNetwork("resnet10t", num_classes=6, input_size=64).eval()
    seen = {}
    grey.body.conv1[0].register_forward_pre_hook(lambda m, i: seen.update(shape=i[0].shape))
    assert grey(torch.randn(2, 1, 48, 48)).shape == (2, 6)
    assert seen["shape"] == (2, 1, 64, 64)  # 48 px faces upsampled by the one preprocessing
    colour = TimmNetwork("resnet10t", in_chans=3, input_size=48).eval()
    assert colour.body.conv1[0].in_channels == 3 and colour(torch.randn(2, 1, 48, 48)).shape == (
        2, 7)
    with pytest.raises(ValueError, match=r"timm has no network 'resnet_nothing'.*list_models"):
        TimmNetwork("resnet_nothing")


def test_a_timm_network_loads_runs_on_onnx_runtime_int8_and_joins_an_ensemble(tmp_path):
    torch.manual_seed(0)
    network = artifacts.build_network(SMALL, "timm.pt").eval()
    assert isinstance(network, TimmNetwork)
    network(torch.randn(8, 1, 48, 48) * 2)  # (eval: statistics stay) exercise it once
    path = save_model(network, dict(SMALL), EMOTIONS, tmp_path / "timm.pt")
    faces = (torch.rand(6, 48, 48) * 255).to(torch.uint8).numpy()
    on_torch = EmotionRecognizer(path, backend="torch", prior="train").predict_faces(faces)
    on_onnx = EmotionRecognizer(path, backend="onnxruntime", prior="train").predict_faces(faces)
    np.testing.assert_allclose(on_onnx, on_torch, atol=1e-5)
    # int8: the same graph quantised, calibrated on faces; its predictions stay close
    graph = onnx_model(artifacts.load(path), "none", path)
    int8 = tmp_path / "timm_int8.onnx"
    int8.write_bytes(quantize_int8(graph, (np.random.default_rng(0).random((64, 48, 48)) * 255)
                                   .astype(np.uint8)))
    quantised = EmotionRecognizer(int8, prior="train").predict_faces(faces)
    assert np.abs(quantised - on_torch).max() < 0.15
    vgg = VGG(stages=[[4], [8]], hidden=[8]).eval()
    vgg_path = save_model(vgg, {"_target_": "ferlab.models.VGG", "stages": [[4], [8]],
                                "hidden": [8]}, EMOTIONS, tmp_path / "vgg.pt")
    both = EmotionRecognizer([path, vgg_path], backend="torch", prior="train").predict_faces(faces)
    alone = EmotionRecognizer(vgg_path, backend="torch", prior="train").predict_faces(faces)
    np.testing.assert_allclose(both, (on_torch + alone) / 2, atol=1e-6)


@pytest.mark.parametrize("change, said", [
    ({"name": "resnet_nothing"}, r"name 'resnet_nothing' is not a network of timm"),
    ({"name": "os.system"}, r"name 'os.system' is not a network of timm"),
    ({"in_chans": 2}, r"in_chans: Input should be 1 or 3"),
    ({"input_size": 4096}, r"input_size: Input should be less than or equal to 512"),
    ({"pretrained": True}, r"pretrained: Extra inputs are not permitted"),
    ({"name": "vit_huge_patch14_224"}, r"over ferlab's bound of 64,000,000"),
])
def test_a_file_describing_a_timm_network_is_checked(change, said):
    with pytest.raises(SchemaError, match=said):
        artifacts.build_network({**SMALL, **change}, "timm.pt")


def test_torchvision_weights_load_into_timm_with_the_stem_summed_for_grey(tmp_path, caplog):
    """An ImageNet-shaped torchvision resnet18 state dict (RGB stem, 1000 classes) starts a grey
    seven-class timm resnet18: every tensor but the classifier loads, the stem summed."""
    torch.manual_seed(0)
    source = torchvision.models.resnet18()  # random weights with ImageNet's shapes
    file = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), file)
    network = TimmNetwork("resnet18", num_classes=7, in_chans=1)
    with caplog.at_level(logging.INFO, logger="ferlab.models.weights"):
        report = load_weights(network, file)
    body = network.body.state_dict()
    assert report.mismatched == ["body.fc.bias (1000 -> 7)", "body.fc.weight (1000x512 -> 7x512)"]
    assert report.adapted == ["body.conv1.weight (3 -> 1)"] and not report.unused
    torch.testing.assert_close(body["conv1.weight"], source.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(body["layer4.1.conv2.weight"], source.layer4[1].conv2.weight)
    assert len(report.loaded) == len(body) - 2
    assert "loaded 120 of 122 tensors" in caplog.text and "body.fc.weight" in caplog.text


def test_safetensors_weights_with_a_wrapper_prefix_load_into_a_ferlab_network(tmp_path):
    torch.manual_seed(0)
    source = VGG(stages=[[4], [8]], hidden=[8])
    file = tmp_path / "vgg.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(file))
    target = VGG(stages=[[4], [8]], hidden=[8])
    report = load_weights(target, file)
    assert not report.mismatched and not report.missing and not report.unused
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)


@pytest.mark.parametrize("content, said", [
    (None, r"no such file.*ferlab never downloads"),
    ({"something.else": torch.zeros(3)}, r"none of its 1 tensors fits this network"),
    ([1, 2, 3], r"holds a list, not a state dict"),
    (b"not a tensor file", r"not a readable weights file"),
])
def test_a_weights_file_that_does_not_fit_is_refused(tmp_path, content, said):
    file = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        file.write_bytes(content)
    elif content is not None:
        torch.save(content, file)
    with pytest.raises((ValueError, FileNotFoundError), match=said):
        load_weights(VGG(stages=[[4]], hidden=[4]), file)


def test_model_weights_starts_a_run_and_stays_out_of_its_files(make_cfg, tmp_path, caplog):
    """model=timm model.weights=<file> trains from the file's weights; the checkpoint's network
    description has no weights field (the run's files do not point at the download)."""
    from ferlab.train import train

    torch.manual_seed(0)
    source = TimmNetwork("resnet10t", num_classes=7, input_size=32)
    file = tmp_path / "start.pth"
    torch.save({"state_dict": source.body.state_dict()}, file)
    cfg = make_cfg(["model=timm", "model.name=resnet10t", "model.input_size=32",
                    f"model.weights={file}", "trainer.max_epochs=1", "test=false",
                    "+trainer.limit_train_batches=1"], output_dir=tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="ferlab.models.weights"):
        train(cfg)
    assert f"model.weights={file}: loaded {len(source.body.state_dict())} of" in caplog.text
    checkpoint = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint[CONFIG_KEY]["model"]["weights"] == str(file)  # the run's own record
    loaded = artifacts.load(tmp_path / "run/checkpoints/last.ckpt")
    assert "weights" not in loaded.meta["model"] and loaded.meta["model"]["name"] == "resnet10t"
    both = make_cfg(["model=timm", f"model.weights={file}", f"init_from={file}"],
                    output_dir=tmp_path / "both")
    with pytest.raises(ValueError, match=r"model.weights .* or init_from .*, not both"):
        train(both)
