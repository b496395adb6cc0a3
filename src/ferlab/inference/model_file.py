"""Writing model files: a ferlab model file (``.pt``) or an ONNX file (``.onnx``, fp32 or int8).

A ferlab model file is a ``torch.save``d dict of plain types and tensors (format
:data:`ferlab.artifacts.MODEL_FILE_FORMAT`); floating-point weights may be stored as float16
(``half=True``: half the file size) and are loaded back into the float32 network. An ONNX file
holds the network with its batch norms folded, a dynamic batch dimension, and as metadata
(:func:`ferlab.artifacts.onnx_metadata`) everything needed to use it: class names, input size
and scaling, TTA, source and version. Both are read back by :func:`ferlab.artifacts.load`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ferlab import __version__, artifacts
from ferlab.data.labels import FACE_SIZE
from ferlab.data.transforms import PIXEL_MEAN, PIXEL_STD, preprocess
from ferlab.files import atomic_write
from ferlab.inference.runtime import ONNX_INPUT, to_onnx
from ferlab.models import fold_batch_norm

# int8 calibration: this many training faces (seeded draw); 2048 kept the shipped models within
# 0.1 point of fp32 on PrivateTest with flip (MinMax ranges, per-channel weights)
CALIBRATION_FACES = 2048
MAX_INT8_DROP = 0.01  # the most PrivateTest accuracy an int8 export may lose unless told


def export_model(source: str | os.PathLike, output: str | os.PathLike,
                 tta: str = "flip", half: bool = False) -> Path:
    """Write the network of a checkpoint, run directory or model file as a ferlab model file; a
    model file is written again, e.g. to store it in float16 or change its TTA."""
    artifact = _torch_artifact(source)
    return save_model(artifact.network, artifact.meta["model"], artifact.classes, output,
                      tta=tta, recipe=artifact.meta.get("recipe"), half=half,
                      prior=artifact.meta.get("prior"))


def save_model(network: nn.Module, model_cfg: dict[str, Any], classes: tuple[str, ...],
               output: str | os.PathLike, tta: str = "none",
               recipe: dict[str, Any] | None = None, half: bool = False,
               prior: dict[str, Any] | None = None) -> Path:
    """Save a network with the config that builds it (atomically: never a half-written file).
    ``half`` stores floating-point weights as float16; ``prior`` is the class prior record
    (:mod:`ferlab.priors`) of the faces it trained on."""

    def stored(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().cpu()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        return tensor.clone().contiguous()

    payload = {
        "format": artifacts.MODEL_FILE_FORMAT,
        "model": model_cfg,
        "state_dict": {k: stored(v) for k, v in network.state_dict().items()},
        "classes": list(classes),
        "face_size": FACE_SIZE,
        "tta": tta,
        "recipe": recipe or {},
        **({"prior": prior} if prior is not None else {}),
    }
    return _write(output, lambda handle: torch.save(payload, handle))


# --- ONNX ------------------------------------------------------------------------------------
@dataclass
class OnnxExport:
    """What ``export_onnx`` wrote, and the PrivateTest accuracy of fp32 and int8 when measured."""

    path: Path
    precision: str
    accuracy: dict[str, float]  # {"fp32": ..., "int8": ...} on PrivateTest, with the file's TTA
    faces: int  # PrivateTest faces measured (0: no data)


def export_onnx(source: str | os.PathLike, output: str | os.PathLike, tta: str = "flip",
                int8: bool = False, calibration: str | os.PathLike | None = None,
                max_drop: float | None = MAX_INT8_DROP) -> OnnxExport:
    """Write ``source`` (a shipped model's name, model file, checkpoint or run directory) as an
    ONNX file. ``int8``: static QDQ quantisation (per-channel int8 weights, uint8 activations)
    calibrated on FER2013 training faces under ``calibration`` (a data root); the fp32 and int8
    models are then measured on PrivateTest and the file is refused (ValueError) when int8 loses
    more than ``max_drop`` (None: no limit)."""
    artifact = _torch_artifact(source)
    model = onnx_model(artifact, tta, source)
    if not int8:
        return OnnxExport(_write(output, lambda handle: handle.write(model)), "fp32", {}, 0)
    from ferlab.data import load_faces

    root = Path(calibration if calibration is not None
                else os.environ.get("FERLAB_DATA", "data/fer2013")).expanduser()
    try:
        table = load_faces(root)
    except FileNotFoundError as err:
        raise ValueError(f"int8 calibration needs FER2013 training faces, and there is no FER2013 "
                         f"at {root}: pass --calibration <data root> (or set FERLAB_DATA), or "
                         f"export without --int8.\n  ({err})") from err
    train, test = table.select("train"), table.select("test")
    pick = np.random.default_rng(0).permutation(len(train.labels))[:CALIBRATION_FACES]
    quantised = quantize_int8(model, train.faces[pick])
    accuracy = {name: _accuracy(data, test.faces, test.labels, tta)
                for name, data in (("fp32", model), ("int8", quantised))}
    drop = accuracy["fp32"] - accuracy["int8"]
    if max_drop is not None and drop > max_drop:
        raise ValueError(f"int8 loses {drop * 100:.2f} points of PrivateTest accuracy "
                         f"({accuracy['fp32']:.4f} -> {accuracy['int8']:.4f}), more than "
                         f"{max_drop * 100:g}; nothing was written. Keep fp32 (no --int8), or "
                         "pass --max-int8-drop to accept it.")
    path = _write(output, lambda handle: handle.write(quantised))
    return OnnxExport(path, "int8", accuracy, len(test.labels))


def onnx_model(artifact: artifacts.Artifact, tta: str, source: str | os.PathLike) -> bytes:
    """The artifact's network (batch norms folded) as ONNX bytes carrying ferlab's metadata."""
    import onnx

    model = onnx.load_from_string(to_onnx(fold_batch_norm(artifact.network.eval())))
    model.producer_name, model.producer_version = "ferlab", __version__
    model.doc_string = ("Facial expression classifier from ferlab: input 'faces' (batch, 1, "
                        f"{FACE_SIZE}, {FACE_SIZE}) grey faces as (pixel / 255 - {PIXEL_MEAN}) / "
                        f"{PIXEL_STD}; output 'logits' (batch, classes); softmax gives the "
                        "probabilities of the classes in metadata 'ferlab.classes'.")
    shipped = isinstance(source, str) and source in artifacts.SHIPPED_MODELS
    metadata = artifacts.onnx_metadata(
        classes=artifact.classes, tta=tta, precision="fp32",
        source=source if shipped else artifact.file.name,  # a name, never a machine's path
        model_version=hashlib.sha256(artifact.file.read_bytes()).hexdigest()[:12],
        network=artifact.meta.get("model", {}), recipe=artifact.meta.get("recipe") or {},
        prior=artifact.meta.get("prior"))
    onnx.helper.set_model_props(model, metadata)
    return model.SerializeToString()


def quantize_int8(model: bytes, faces: np.ndarray) -> bytes:
    """Static int8 quantisation of a ferlab ONNX model with ONNX Runtime's tools (QDQ format,
    per-channel int8 weights, uint8 activations), calibrated on uint8 faces (N, H, W)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [preprocess(faces[i:i + 64])
               for i in range(0, len(faces), 64)]

    class Faces(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {ONNX_INPUT: batch}

    metadata = {p.key: p.value for p in onnx.load_from_string(model).metadata_props}
    with tempfile.TemporaryDirectory(prefix="ferlab-int8-") as tmp:
        fp32, prepared, int8 = (Path(tmp) / n for n in ("fp32.onnx", "prep.onnx", "int8.onnx"))
        fp32.write_bytes(model)
        quant_pre_process(str(fp32), str(prepared))  # shape inference and graph clean-up
        quantize_static(str(prepared), str(int8), Faces(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        quantised = onnx.load(str(int8))
    metadata["ferlab.precision"] = "int8"
    metadata["ferlab.calibration"] = json.dumps(
        {"faces": len(faces), "split": "train", "method": "MinMax", "format": "QDQ"})
    del quantised.metadata_props[:]
    onnx.helper.set_model_props(quantised, metadata)
    return quantised.SerializeToString()


def _accuracy(model: bytes, faces: np.ndarray, labels: np.ndarray, tta: str) -> float:
    """PrivateTest accuracy of ONNX bytes through the recognizer (the file as users load it)."""
    from ferlab.inference.recognizer import EmotionRecognizer

    with tempfile.TemporaryDirectory(prefix="ferlab-check-") as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model)
        recognizer = EmotionRecognizer(path, tta=tta, batch_size=256)
        return float(np.mean(recognizer.predict_faces(faces).argmax(1) == labels))


def _torch_artifact(source: str | os.PathLike) -> artifacts.Artifact:
    if artifacts.is_ensemble(source):
        raise ValueError(f"{source!r} is an ensemble of several models; export each model "
                         f"({', '.join(map(str, artifacts.ensemble_members(source)))}) on its "
                         "own: EmotionRecognizer([...]) averages them.")
    shipped_onnx = artifacts.SHIPPED_MODELS.get(str(source), "").endswith(".onnx")
    if shipped_onnx or Path(str(source)).suffix == ".onnx":
        raise ValueError(f"{source} is already an ONNX file; export from the .pt, .ckpt or run "
                         "directory it came from (or a shipped model's name: "
                         f"{', '.join(artifacts.TORCH_MODELS)}).")
    return artifacts.load(source)


def _write(output: str | os.PathLike, write) -> Path:
    output = Path(output)
    with atomic_write(output, "wb") as handle:
        write(handle)
    return output
