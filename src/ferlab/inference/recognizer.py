"""EmotionRecognizer: the shipped (or any trained) model behind one small API."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ferlab import artifacts, priors
from ferlab.data.transforms import TTA_MODES, preprocess, to_face, tta_views
from ferlab.inference.detect import (
    CROP_MARGIN,
    Box,
    FaceDetector,
    HaarDetector,
    find_faces,
)
from ferlab.inference.images import to_grey
from ferlab.inference.runtime import BACKENDS, OnnxNetwork, choose_backend, to_onnx
from ferlab.models import fold_batch_norm
from ferlab.precision import slow_bf16_reason

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")


@dataclass
class LoadedModel:
    """One model of a recognizer: what runs it (``run``: preprocessed batch -> logits), its
    PyTorch network when it has one (None for an ONNX file), the engine, file and metadata."""

    run: Callable[[torch.Tensor], torch.Tensor]
    network: nn.Module | None
    backend: str
    source: Path
    meta: dict[str, Any]
    # target prior / the prior the outputs carry, per class (None: the outputs as they are)
    prior_factor: np.ndarray | None = None


class EmotionRecognizer:
    """Emotion probabilities for face crops (``predict_faces``) or whole images (``analyze``).

    ``model``: None (or "default") for the shipped model, "cpu-trained" for the shipped model
    trained on two CPU cores, "default-int8" / "cpu-trained-int8" for their int8 ONNX files,
    "ensemble" (or "ensemble-int8") for the shipped models averaged, "fast" for the small
    network distilled from them (int8 ONNX, no TTA: the most faces/s), a ferlab model file
    (``.pt``), an ONNX file from ``ferlab.export``, a training checkpoint (``.ckpt``), a run
    directory, or a list of any of these (an ensemble: probabilities averaged with equal
    weights; the models must share their classes). ``tta``: "flip" averages each face with its
    mirror image; None uses the model files' own setting ("none" for checkpoints).
    ``backend``: "torch", "onnxruntime" (the network converted to ONNX in memory at load, or an
    ONNX file as it is) or "auto": ONNX Runtime on a CPU, PyTorch on a GPU or under bf16.
    ``precision`` (PyTorch only): "bf16" runs the network under bfloat16 autocast, about twice
    as fast on CPUs with native bf16 (AVX512-BF16, AMX) and on GPUs, slower on other CPUs (a
    warning says so on a CPU with no oneDNN bf16 kernels at all, where it is an order of
    magnitude slower); "fp32" (the default) gives the same numbers everywhere.
    ``prior``: the class mix the probabilities assume (:mod:`ferlab.priors`). "uniform" gives
    every emotion the same prior: a user's photos do not come in FER2013's mix (happy 25%,
    disgust 1.5%), and a uniform prior is what a class-balanced accuracy rewards
    (docs/inference.md). "train" keeps the mix the model trained on, which reproduces its
    FER2013 figures exactly; a ``{class: frequency}`` mapping names any other mix. None (the
    default): "uniform" for models that record their training prior (the shipped ones, and
    every file ferlab writes), the model as it is for an older file (with a warning).
    """

    def __init__(self, model: str | os.PathLike | Sequence | None = None, device: str = "cpu",
                 tta: str | None = None, detector: FaceDetector | None = None,
                 batch_size: int = 32, margin: float = CROP_MARGIN, precision: str = "fp32",
                 backend: str = "auto", prior: str | Mapping[str, float] | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}.")
        if not (isinstance(batch_size, int) and batch_size >= 1) or not margin >= 0:
            raise ValueError(f"batch_size must be an integer >= 1 and margin >= 0; got "
                             f"{batch_size!r} and {margin!r}.")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}.")
        self.precision = precision
        self.device = _device(device)
        self.models = [self._load(source, backend) for source in
                       artifacts.ensemble_members(model)]
        self.classes = self.models[0].meta["classes"]
        for other in self.models[1:]:
            if other.meta["classes"] != self.classes:
                raise ValueError(f"An ensemble's models must share their classes: "
                                 f"{self.models[0].source} has {list(self.classes)}, "
                                 f"{other.source} has {list(other.meta['classes'])}.")
        if tta is None:
            own = {m.meta.get("tta", "none") for m in self.models}
            if len(own) > 1:
                raise ValueError(f"The ensemble's models were exported with different TTA "
                                 f"settings ({sorted(own)}); pass tta= to choose one.")
            tta = own.pop()
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}; got {tta!r}.")
        self.tta = tta
        self.prior = prior
        if precision == "bf16" and self.device.type == "cpu" and (reason := slow_bf16_reason()):
            log.warning("precision='bf16': %s; precision='fp32' is faster here.", reason)
        self.detector = detector
        self.batch_size = batch_size
        self.margin = margin

    def _load(self, source, backend: str) -> LoadedModel:
        artifact = artifacts.load(source)
        meta = {**artifact.meta, "classes": artifact.classes}
        engine = choose_backend(backend, self.device, self.precision,
                                onnx_file=not isinstance(artifact.network, nn.Module))
        if not isinstance(artifact.network, nn.Module):  # an ONNX file
            return LoadedModel(artifact.network, None, engine, artifact.file, meta)
        # batch norm folded into the convolutions: ~8% more faces/s on CPU, same outputs
        network = fold_batch_norm(artifact.network.eval())
        if engine == "onnxruntime":
            return LoadedModel(OnnxNetwork(to_onnx(network), str(artifact.file)), network,
                               engine, artifact.file, meta)
        # channels_last: measured ~1.7x faster convolutions on CPU (oneDNN), also right on GPU
        network = network.to(self.device).to(memory_format=torch.channels_last)
        return LoadedModel(network, network, engine, artifact.file, meta)

    @property
    def prior(self) -> str | Mapping[str, float]:
        """The class prior the probabilities assume; setting it moves them (no reload)."""
        return self._prior

    @prior.setter
    def prior(self, prior: str | Mapping[str, float] | None) -> None:
        if prior is None:
            unknown = [str(m.source) for m in self.models if m.meta.get("prior") is None]
            if unknown:
                log.warning("%s records no class prior (written before ferlab recorded them): "
                            "its probabilities keep the training mix; export it again to move "
                            "them to a uniform prior.", ", ".join(unknown))
            prior = "train" if unknown else "uniform"
        factors = [priors.target_vector(prior, self.classes, m.meta.get("prior"),
                                        where=str(m.source)) for m in self.models]
        for model, factor in zip(self.models, factors):
            model.prior_factor = factor
        self._prior = prior

    @property
    def source(self) -> Path | list[Path]:
        """The file the weights come from (a list of files for an ensemble)."""
        files = [m.source for m in self.models]
        return files[0] if len(files) == 1 else files

    @property
    def meta(self) -> dict[str, Any]:
        """The model file's metadata (an ensemble: its models' metadata under ``members``)."""
        if len(self.models) == 1:
            return self.models[0].meta
        return {"tta": self.tta, "classes": self.classes,
                "members": [m.meta for m in self.models]}

    @property
    def backend(self) -> str:
        """The engine the models run on ("torch" or "onnxruntime"; "mixed" for an ensemble of
        both)."""
        engines = {m.backend for m in self.models}
        return engines.pop() if len(engines) == 1 else "mixed"

    @property
    def network(self) -> nn.Module:
        """The PyTorch network (batch norms folded) of a single PyTorch model, e.g. for its
        feature maps."""
        if len(self.models) > 1 or self.models[0].network is None:
            what = "an ensemble" if len(self.models) > 1 else f"the ONNX file {self.source}"
            raise ValueError(f"This recognizer runs {what}, which has no single PyTorch network; "
                             "load one .pt/.ckpt model for what needs its layers.")
        return self.models[0].network

    # --- faces -------------------------------------------------------------------------------
    def predict_faces(self, faces: np.ndarray | Sequence[np.ndarray],
                      color_order: str = "bgr") -> np.ndarray:
        """Probabilities (N, len(classes)) for uint8 faces (N, 48, 48) or a list of crops of any
        size, grey or colour (channels in ``color_order``)."""
        batch = self._as_faces(faces, color_order)
        if len(batch) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        out = [self._probabilities(batch[i:i + self.batch_size])
               for i in range(0, len(batch), self.batch_size)]
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _as_faces(self, faces, color_order: str) -> np.ndarray:  # (N, 48, 48) uint8
        if isinstance(faces, np.ndarray) and faces.ndim == 3 and faces.dtype == np.uint8:
            crops = list(faces)
        elif isinstance(faces, np.ndarray) and faces.ndim in (2, 4):
            raise ValueError(f"faces must be a uint8 batch (N, H, W) or a list of crops; got an "
                             f"array of shape {faces.shape} (wrap a single crop in a list).")
        elif isinstance(faces, (str, bytes, os.PathLike)):
            raise ValueError(f"faces must be a uint8 batch (N, H, W) or a list of crops; got the "
                             f"path {str(faces)!r}: pass [path] for a file holding one face crop, "
                             "or analyze(path) to find the faces in a photo.")
        elif not isinstance(faces, Iterable):
            raise TypeError(f"faces must be a uint8 batch (N, H, W) or a list of crops; got "
                            f"{type(faces).__name__}.")
        else:
            crops = list(faces)
        if not crops:
            return np.zeros((0, 48, 48), np.uint8)
        return np.stack([to_face(to_grey(c, color_order)) for c in crops])

    @torch.inference_mode()
    def _probabilities(self, faces: np.ndarray) -> np.ndarray:
        # the one preprocessing, for every engine: as a tensor on the device for PyTorch, as a
        # numpy array for ONNX Runtime (no tensor op on its path: one face at a time, torch's
        # per-op cost was a third of a small int8 network's time)
        on_torch = on_onnx = None
        each = []
        for model in self.models:
            if model.backend == "torch":
                if on_torch is None:
                    on_torch = preprocess(torch.from_numpy(faces).to(self.device))
                    on_torch = on_torch.contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                    enabled=self.precision == "bf16"):
                    probs = predict_probabilities(model.run, on_torch, self.tta).cpu().numpy()
            else:
                if on_onnx is None:
                    on_onnx = preprocess(faces)
                probs = predict_probabilities(model.run, on_onnx, self.tta)
            each.append(priors.adjust(probs, model.prior_factor))
        return each[0] if len(each) == 1 else sum(each) / len(each)

    # --- whole images ------------------------------------------------------------------------
    @property
    def needs_color(self) -> bool:
        """Whether the face detector looks at colour; if not, grey pixels are all it needs (the
        Haar default), so callers can decode images straight to grey."""
        if self.detector is None:
            self.detector = HaarDetector()
        return getattr(self.detector, "color", True)

    def detect_faces(self, image, color_order: str = "bgr") -> list[tuple[Box, np.ndarray]]:
        """Every detected face, largest first: its box and its (48, 48) uint8 grey crop."""
        if self.detector is None:
            self.detector = HaarDetector()
        return find_faces(image, self.detector, self.margin, color_order)

    def describe(self, found: list[tuple[Box, np.ndarray]]) -> list[dict[str, Any]]:
        """Records for faces from :meth:`detect_faces`."""
        if not found:
            return []
        probs = self.predict_faces(np.stack([face for _, face in found]))
        return [self._record(box, p) for (box, _), p in zip(found, probs)]

    def analyze(self, image, color_order: str = "bgr") -> list[dict[str, Any]]:
        """One record per detected face, largest first:
        ``{"box": [x, y, w, h], "label", "score", "probabilities": {class: p}}``."""
        return self.describe(self.detect_faces(image, color_order))

    def _record(self, box, probs: np.ndarray) -> dict[str, Any]:
        best = int(np.argmax(probs))
        return {
            "box": box.as_list(),
            "label": self.classes[best],
            "score": float(probs[best]),
            "probabilities": {c: float(p) for c, p in zip(self.classes, probs)},
        }


def _device(name: str) -> torch.device:
    """The torch device for ``name`` ("auto", "cpu", "cuda", "cuda:1" ...), refused with what to
    pass instead when it is not one or is not usable here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>'; got "
                         f"{name!r}.") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}, but PyTorch sees no CUDA GPU here; use 'cpu', or "
                         "'auto' to take a GPU when there is one.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device={name!r}, but PyTorch sees {torch.cuda.device_count()} CUDA "
                         "GPU(s) here, numbered from 0.")
    return device


Batch = TypeVar("Batch", torch.Tensor, np.ndarray)


def predict_probabilities(network: Callable[[Batch], Batch], x: Batch,
                          tta: str = "none") -> Batch:
    """Softmax probabilities (B, C) of a preprocessed batch, averaged over test-time views: a
    tensor for a PyTorch network, a numpy array for ONNX Runtime (float32 either way).
    Views go through the network as one batch while that stays small (one call is much
    cheaper than several for the few faces of a photo)."""
    views = tta_views(x, tta)
    if len(views) == 1:
        return _softmax(network(x))
    if len(x) * len(views) <= 1024:
        joined = np.concatenate(views) if isinstance(x, np.ndarray) else torch.cat(views)
        return _softmax(network(joined).reshape(len(views), len(x), -1)).mean(0)
    return sum(_softmax(network(v)) for v in views) / len(views)


def _softmax(logits: Batch) -> Batch:
    """Softmax over the last dimension in float32, from elementwise ops and reductions.
    torch.softmax runs even a (2, 7) tensor in a parallel region, whose threads wake and wait
    for cores that other engines' threads (ONNX Runtime's, OpenCV's) still hold: one face at a
    time with flip, the default int8 model classified 317 faces/s that way and 378 this way
    (150 and 438 while ONNX Runtime's threads spin)."""
    if isinstance(logits, np.ndarray):
        exp = np.exp(logits - logits.max(-1, keepdims=True), dtype=np.float32)
        return exp / exp.sum(-1, keepdims=True)
    logits = logits.float()
    exp = (logits - logits.amax(-1, keepdim=True)).exp()
    return exp / exp.sum(-1, keepdim=True)
