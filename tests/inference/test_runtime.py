"""ONNX export, the ONNX Runtime backend, int8 and ensembles: the same answers as PyTorch, and a
clear refusal for every file or setting that cannot work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ferlab import EmotionRecognizer, artifacts
from ferlab.data import EMOTIONS, load_faces
from ferlab.inference.detect import crop, face_crop_box
from ferlab.inference.images import to_grey
from ferlab.inference.model_file import export_onnx, save_model
from ferlab.inference.runtime import choose_backend, cpu_limit
from ferlab.models import VGG
from tests.conftest import (
    REAL_DATA,
    TINY,
    USER_CACHE,
    doc_commands,
    requires_real_data,
    run_cli,
)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> dict[str, Path]:
    """Both shipped networks exported as fp32 ONNX files, as a user exports them."""
    folder = tmp_path_factory.mktemp("onnx")
    return {name: export_onnx(name, folder / f"{name}.onnx").path
            for name in artifacts.TORCH_MODELS}


def _photo_faces(portrait, count: int = 64) -> np.ndarray:
    """Real faces: the portrait's face, cropped at ``count`` shifts and margins."""
    from ferlab.data import to_face
    from ferlab.inference.detect import HaarDetector

    grey = to_grey(portrait, "rgb")
    box = HaarDetector().detect(grey)[0]
    rng = np.random.default_rng(0)
    faces = []
    for _ in range(count):
        margin = rng.uniform(0.0, 0.3)
        shifted = type(box)(box.x + int(rng.integers(-8, 9)), box.y + int(rng.integers(-8, 9)),
                            box.w, box.h)
        faces.append(to_face(crop(grey, face_crop_box(shifted, grey.shape, margin))))
    return np.stack(faces)


def _agree(onnx_file: Path, name: str, faces: np.ndarray, tta: str, batch: int) -> None:
    torch_run = EmotionRecognizer(name, backend="torch", tta=tta, batch_size=batch)
    onnx_run = EmotionRecognizer(onnx_file, tta=tta, batch_size=batch)
    assert onnx_run.backend == "onnxruntime" and torch_run.backend == "torch"
    expected, got = torch_run.predict_faces(faces), onnx_run.predict_faces(faces)
    assert np.abs(got - expected).max() < 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()


@pytest.mark.parametrize("tta", ["none", "flip"])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("name", ["default", "cpu-trained"])
def test_exported_onnx_agrees_with_pytorch_on_a_photo(onnx_files, portrait, name, batch, tta):
    _agree(onnx_files[name], name, _photo_faces(portrait), tta, batch)


@pytest.mark.data
@requires_real_data
@pytest.mark.parametrize("tta", ["none", "flip"])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("name", ["default", "cpu-trained"])
def test_exported_onnx_agrees_with_pytorch_on_privatetest(onnx_files, name, batch, tta):
    test = load_faces(REAL_DATA, USER_CACHE).select("test")
    faces = test.faces[np.random.default_rng(1).permutation(len(test.labels))[:256]]
    _agree(onnx_files[name], name, faces, tta, batch)


def test_onnx_file_carries_what_is_needed_to_use_it(onnx_files):
    model = onnx.load(str(onnx_files["default"]))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["ferlab.classes"]) == list(EMOTIONS)
    scaling = json.loads(meta["ferlab.input"])
    assert scaling["shape"] == ["batch", 1, 48, 48] and scaling["mean"] == pytest.approx(0.5077)
    assert meta["ferlab.tta"] == "flip" and meta["ferlab.precision"] == "fp32"
    assert meta["ferlab.source"] == "default" and len(meta["ferlab.model_version"]) == 12
    assert json.loads(meta["ferlab.network"])["_target_"] == "ferlab.models.VGG"
    # batch norm folded into the convolutions; the batch dimension is free
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    recognizer = EmotionRecognizer(onnx_files["default"])
    for n in (1, 3, 65):
        assert recognizer.predict_faces(np.zeros((n, 48, 48), np.uint8)).shape == (n, 7)


def test_onnx_file_runs_on_plain_onnxruntime(onnx_files, portrait):
    """Nothing but the file and its metadata: ONNX Runtime alone gives ferlab's answer."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_files["cpu-trained"]))
    meta = session.get_modelmeta().custom_metadata_map
    scaling = json.loads(meta["ferlab.input"])
    faces = _photo_faces(portrait, 4)
    x = ((faces[:, None].astype(np.float32) / 255 - scaling["mean"]) / scaling["std"])
    logits = session.run(None, {"faces": x.astype(np.float32)})[0]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    # the network's own probabilities: the prior it trained with (the default moves them)
    expected = EmotionRecognizer("cpu-trained", backend="torch", tta="none",
                                 prior="train").predict_faces(faces)
    assert np.abs(probs - expected).max() < 1e-4


def test_shipped_int8_files_load_with_their_metadata():
    for name in ("default-int8", "cpu-trained-int8"):
        recognizer = EmotionRecognizer(name)
        assert recognizer.backend == "onnxruntime" and recognizer.tta == "flip"
        assert recognizer.meta["precision"] == "int8"
        assert json.loads(recognizer.meta["calibration"])["split"] == "train"
        assert recognizer.classes == EMOTIONS


def test_auto_backend_is_onnxruntime_on_a_cpu_and_torch_where_it_must_be(tiny_model_file):
    cpu = torch.device("cpu")
    assert choose_backend("auto", cpu) == "onnxruntime"
    assert choose_backend("auto", cpu, precision="bf16") == "torch"
    assert choose_backend("auto", torch.device("cuda")) == "torch"
    assert choose_backend("auto", cpu, onnx_file=True) == "onnxruntime"
    assert EmotionRecognizer(tiny_model_file).backend == "onnxruntime"
    assert EmotionRecognizer(tiny_model_file, backend="torch").backend == "torch"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"backend": "torch"}, "runs on ONNX Runtime, not PyTorch"),
    ({"precision": "bf16"}, "precision='bf16' is PyTorch's autocast"),
    ({"backend": "tensorrt"}, "backend must be one of"),
])
def test_onnx_file_refuses_settings_it_cannot_honour(onnx_files, kwargs, message):
    with pytest.raises(ValueError, match=message):
        EmotionRecognizer(onnx_files["cpu-trained"], **kwargs)


def test_feature_maps_need_a_pytorch_network(onnx_files):
    with pytest.raises(ValueError, match="no single PyTorch network"):
        EmotionRecognizer(onnx_files["cpu-trained"]).network  # noqa: B018
    with pytest.raises(ValueError, match="no single PyTorch network"):
        EmotionRecognizer("ensemble").network  # noqa: B018
    assert isinstance(EmotionRecognizer("cpu-trained").network, VGG)  # also under ONNX Runtime


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("these are not the weights you are looking for\n")
    with pytest.raises(ValueError, match="is not an ONNX model ONNX Runtime can run"):
        EmotionRecognizer(bad)


def test_an_onnx_model_without_ferlab_metadata_is_refused(onnx_files, tmp_path):
    model = onnx.load(str(onnx_files["cpu-trained"]))
    del model.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    with pytest.raises(ValueError, match="without ferlab's metadata"):
        EmotionRecognizer(plain)
    other = onnx.load(str(onnx_files["cpu-trained"]))
    props = {p.key: p.value for p in other.metadata_props}
    props["ferlab.input"] = json.dumps({**json.loads(props["ferlab.input"]), "mean": 0.5})
    del other.metadata_props[:]
    onnx.helper.set_model_props(other, props)
    onnx.save(other, str(plain))
    with pytest.raises(ValueError, match="Export it again"):
        EmotionRecognizer(plain)


def test_onnx_file_is_no_training_source(onnx_files):
    with pytest.raises(ValueError, match="not weights to train from"):
        artifacts.read_network_weights(onnx_files["cpu-trained"])


# --- ensembles ---------------------------------------------------------------------------------
def test_ensemble_averages_its_models(onnx_files, portrait, tiny_model_file):
    faces = _photo_faces(portrait, 8)
    members = ["cpu-trained", onnx_files["default"], tiny_model_file]
    alone = [EmotionRecognizer(m, tta="flip", prior="train").predict_faces(faces)
             for m in members]
    together = EmotionRecognizer(members, tta="flip", prior="train")
    assert together.backend == "onnxruntime" and len(together.models) == 3
    np.testing.assert_allclose(together.predict_faces(faces), np.mean(alone, axis=0), atol=1e-6)
    shipped = EmotionRecognizer("ensemble")
    assert [m.source.name for m in shipped.models] == [
        artifacts.SHIPPED_MODELS[n] for n in artifacts.SHIPPED_ENSEMBLES["ensemble"]]
    assert shipped.analyze(portrait, "rgb")[0]["label"] in EMOTIONS


def test_ensemble_of_one_or_of_ensembles_is_refused():
    with pytest.raises(ValueError, match="two or more models; got 1"):
        EmotionRecognizer(["default"])
    with pytest.raises(ValueError, match="itself an ensemble"):
        EmotionRecognizer(["ensemble", "default"])
    with pytest.raises(ValueError, match="ensemble of several models"):
        artifacts.resolve("ensemble")


def test_ensemble_of_models_with_different_classes_is_refused(tmp_path, tiny_model_file):
    six = save_model(VGG(stages=[[4], [8]], hidden=[16], num_classes=6),
                     {**TINY, "num_classes": 6}, EMOTIONS[:1] + EMOTIONS[2:],
                     tmp_path / "six.pt")
    with pytest.raises(ValueError, match="must share their classes"):
        EmotionRecognizer([tiny_model_file, six])


# --- export ------------------------------------------------------------------------------------
def test_export_cli_writes_onnx_from_a_shipped_name(tmp_path):
    from ferlab.export import main as export_main

    out = tmp_path / "m.onnx"
    assert export_main(["cpu-trained", str(out), "--tta", "none"]) == 0
    assert EmotionRecognizer(out).tta == "none"


@pytest.mark.parametrize(("args", "message"), [
    (["ensemble", "{tmp}/e.onnx"], "ensemble of several models; export each model"),
    (["cpu-trained-int8", "{tmp}/x.onnx"], "already an ONNX file"),
    (["cpu-trained", "{tmp}/x.onnx", "--int8", "--calibration", "{tmp}/nowhere"],
     "int8 calibration needs FER2013 training faces, and there is no FER2013"),
])
def test_export_cli_refuses_with_a_clear_message(tmp_path, capsys, args, message):
    from ferlab.export import main as export_main

    assert export_main([a.format(tmp=tmp_path) for a in args]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.parametrize("args", [["--half"], ["--calibration", "x"]])
def test_export_cli_refuses_options_of_another_format(tmp_path, args):
    from ferlab.export import main as export_main

    with pytest.raises(SystemExit) as stop:
        export_main(["cpu-trained", str(tmp_path / "m.onnx"), *args])
    assert stop.value.code == 2


def test_int8_export_calibrates_measures_and_refuses_a_loss(tmp_path, csv_root):
    """On a synthetic FER2013: calibrated on its training faces, measured on its PrivateTest;
    a limit no model can meet refuses the file and writes nothing."""
    done = export_onnx("cpu-trained", tmp_path / "q.onnx", int8=True, calibration=csv_root)
    assert done.precision == "int8" and done.faces > 0
    assert set(done.accuracy) == {"fp32", "int8"}
    recognizer = EmotionRecognizer(done.path)
    assert recognizer.meta["precision"] == "int8"
    model = onnx.load(str(done.path))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    with pytest.raises(ValueError, match="nothing was written"):
        export_onnx("cpu-trained", tmp_path / "r.onnx", int8=True, calibration=csv_root,
                    max_drop=-1.01)
    assert not (tmp_path / "r.onnx").exists()


def test_int8_export_through_the_cli_prints_both_accuracies(tmp_path, csv_root):
    result = run_cli(["cpu-trained", "q.onnx", "--int8", "--calibration", str(csv_root)],
                     tmp_path, module="ferlab.export")
    assert result.returncode == 0, result.stderr
    assert "PrivateTest accuracy (tta=flip" in result.stdout and "int8 0." in result.stdout


def test_evaluate_takes_an_ensemble(tmp_path, csv_root, tiny_model_file, onnx_files):
    result = run_cli([f"ckpt_path=[{tiny_model_file},{onnx_files['cpu-trained']}]", "tta=flip",
                      "splits=[test]", "hydra.run.dir=out"], tmp_path, data=csv_root,
                     module="ferlab.evaluate")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["model"]["source"] == [str(tiny_model_file), str(onnx_files["cpu-trained"])]
    assert report["model"]["network"] == ["VGG", "onnx (fp32)"]
    assert "(probabilities averaged)" in (tmp_path / "out" / "report.md").read_text()


def test_cpu_limit_follows_the_affinity_mask(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert cpu_limit() == 1


def test_readme_deployment_commands_as_written(tmp_path, csv_root, portrait):
    """Every command of the deployment guide, exactly as written, in order, in one
    folder (FERLAB_DATA: the synthetic FER2013; photo.jpg: a real portrait)."""
    import shlex

    from PIL import Image

    Image.fromarray(portrait).save(tmp_path / "photo.jpg")
    commands = doc_commands("docs/deployment.md")
    assert len(commands) >= 4
    for command in commands:
        words = shlex.split(command)
        assert words[:2] == ["python", "-m"], command
        result = run_cli(words[3:], tmp_path, data=csv_root, module=words[2])
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    assert EmotionRecognizer(tmp_path / "model_int8.onnx").meta["precision"] == "int8"
    records = [json.loads(line) for line in (tmp_path / "faces.jsonl").read_text().splitlines()]
    assert records[0]["label"] in EMOTIONS


def test_predict_cli_averages_models_given_twice(tmp_path, portrait, onnx_files):
    from PIL import Image

    Image.fromarray(portrait).save(tmp_path / "photo.png")  # lossless: the same pixels
    result = run_cli(["photo.png", "--model", "cpu-trained", "--model",
                      str(onnx_files["default"]), "--no-progress"], tmp_path,
                     module="ferlab.predict")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.splitlines()[0])
    expected = EmotionRecognizer(["cpu-trained", onnx_files["default"]]).analyze(
        portrait, "rgb")[0]
    assert record["label"] == expected["label"]
    assert record["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-4)
    refused = run_cli(["photo.png", "--model", "ensemble", "--feature-maps", "maps"], tmp_path,
                      module="ferlab.predict")
    assert refused.returncode == 2 and "no single PyTorch network" in refused.stderr


@pytest.mark.parametrize("tta", ["none", "flip", "tencrop"])
@pytest.mark.parametrize("n", [2, 600])  # views in one batch, and (600 x views) in a loop
def test_onnx_runtime_path_in_numpy_gives_what_pytorch_gives(tta, n):
    """ONNX Runtime's path stays in numpy (faces, views, logits, probabilities): the same
    probabilities as the PyTorch network's tensors, however the views are batched."""
    from ferlab.data import preprocess
    from ferlab.inference.recognizer import predict_probabilities
    from ferlab.inference.runtime import OnnxNetwork, to_onnx

    torch.manual_seed(0)
    net = VGG(stages=[[4], [8]], hidden=[8]).eval()
    faces = np.random.default_rng(0).integers(0, 256, (n, 48, 48), dtype=np.uint8)
    on_onnx = predict_probabilities(OnnxNetwork(to_onnx(net)), preprocess(faces), tta)
    with torch.no_grad():
        on_torch = predict_probabilities(net, preprocess(torch.from_numpy(faces)), tta)
    assert isinstance(on_onnx, np.ndarray) and on_onnx.dtype == np.float32
    np.testing.assert_allclose(on_onnx, on_torch.numpy(), atol=1e-5)
    np.testing.assert_allclose(on_onnx.sum(1), 1.0, atol=1e-5)


def test_onnx_runtime_threads_leave_the_cores_when_a_run_ends():
    """ONNX Runtime's threads spin while a run lasts and stop with it: no CPU is burnt after a
    face is classified, when a photo's detection and decoding need the cores."""
    import time

    recognizer = EmotionRecognizer("cpu-trained-int8", tta="none")
    faces = np.full((1, 48, 48), 128, np.uint8)
    for _ in range(20):
        recognizer.predict_faces(faces)
    start = time.process_time()
    time.sleep(0.3)
    assert time.process_time() - start < 0.01
