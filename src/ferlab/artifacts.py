"""Model artifacts: every file ferlab turns into a network goes through here, with one allow-list.

A *source* is what the user-facing keys take (``EmotionRecognizer(model)``, ``ferlab.evaluate
ckpt_path=``, ``ferlab.export``, ``ferlab.predict --model``, ``init_from=``, ``resume=``,
``module.teacher=``): a shipped model's name, a ferlab model file (``.pt``), a training
checkpoint (``.ckpt``) or a run directory (its ``checkpoints/last.ckpt``).

Files are read with ``torch.load(weights_only=True)``, so no pickled code runs; and the configs
stored in them choose no code either. Every ``_target_`` in the parts of a stored config that
describe the model, its module and its data, at every depth, must be one of the classes that
ferlab's own configs name (:data:`CONFIG_TARGETS`; not merely any name under ``ferlab.``, which
would let a file call a ferlab function that writes files); the network itself is built only
from the networks of :mod:`ferlab.models`. Anything else is refused, naming the target and the
file, before anything is imported or called. Nothing but the network is ever built from a file.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from ferlab import priors
from ferlab.data.labels import FACE_SIZE, class_names
from ferlab.data.transforms import PIXEL_MEAN, PIXEL_STD

# the models inside the package, by the name EmotionRecognizer(model=...) takes: the default
# (trained on a GPU), the one trained and timed on two CPU cores
# (docs/model_cards/cpu-trained.md), and each
# as the int8 ONNX file that `python -m ferlab.export NAME F.onnx --int8` writes from it
SHIPPED_MODELS = {"default": "ferlab_fer2013.pt", "cpu-trained": "ferlab_fer2013_cpu.pt",
                  "default-int8": "ferlab_fer2013_int8.onnx",
                  "cpu-trained-int8": "ferlab_fer2013_cpu_int8.onnx"}
TORCH_MODELS = tuple(n for n, f in SHIPPED_MODELS.items() if f.endswith(".pt"))
# shipped ensembles: the members' probabilities averaged with equal weights (untuned: the default
# model trained on PublicTest, so no split is left to tune weights on; docs/model_cards/ensemble.md)
SHIPPED_ENSEMBLES = {"ensemble": ("default", "cpu-trained"),
                     "ensemble-int8": ("default-int8", "cpu-trained-int8")}
# PrivateTest accuracy with flip TTA, as each model card states it (a test keeps them equal)
SHIPPED_ACCURACY = {"default": 0.7295, "cpu-trained": 0.7225, "default-int8": 0.7289,
                    "cpu-trained-int8": 0.7208, "ensemble": 0.7442, "ensemble-int8": 0.7423}
# the faces the shipped models trained on, per class: FER2013 Training + PublicTest, as their
# model cards say (a data test counts them again); their recorded class prior (ferlab.priors)
SHIPPED_TRAINING_COUNTS = {"angry": 4462, "disgust": 492, "fear": 4593, "happy": 8110,
                           "sad": 5483, "surprise": 3586, "neutral": 5572}
MODEL_FILE_FORMAT = "ferlab-model/1"
ONNX_FORMAT = "ferlab-onnx/1"
CONFIG_KEY = "ferlab_config"  # a checkpoint's resolved run config (ferlab.checkpoint writes it)

# Exactly the classes that ferlab's own configs (ferlab/conf/) name; a test keeps the two in step.
CONFIG_TARGETS = frozenset({
    "ferlab.callbacks.EMA",
    "ferlab.callbacks.EpochSummary",
    "ferlab.callbacks.ValidateAtFullSize",
    "ferlab.data.BatchAugment",
    "ferlab.data.FER2013DataModule",
    "ferlab.models.VGG",
    "ferlab.module.EmotionModule",
    "lightning.pytorch.Trainer",
    "lightning.pytorch.callbacks.EarlyStopping",
    "lightning.pytorch.callbacks.LearningRateMonitor",
    "lightning.pytorch.callbacks.ModelCheckpoint",
    "lightning.pytorch.callbacks.RichProgressBar",
    "lightning.pytorch.callbacks.Timer",
    "lightning.pytorch.loggers.TensorBoardLogger",
    "torch.optim.AdamW",
    "torch.optim.SGD",
    "torch.optim.lr_scheduler.CosineAnnealingLR",
    "torch.optim.lr_scheduler.OneCycleLR",
    "torch.optim.lr_scheduler.ReduceLROnPlateau",
})
# the parts of a checkpoint's stored config that describe what was trained; the rest (trainer,
# callbacks, logger, paths) is the run's plumbing, which no loader reads back
DESCRIBING_GROUPS = ("model", "module", "data")

# what torch.load raises on a file that is not a PyTorch file (or a truncated one)
UNREADABLE = (RuntimeError, EOFError, OSError, KeyError, ValueError, pickle.UnpicklingError)


class UnsafeArtifactError(ValueError):
    """A file whose stored config names code that ferlab does not run from files."""


@dataclass
class Artifact:
    """A loaded model: the network (eval mode, float32 on the CPU; for an ONNX file, a
    :class:`ferlab.inference.runtime.OnnxNetwork`), its class names, the file it came from and
    the file's metadata (``tta``, ``model`` config, ``recipe``, ``format``, ``prior`` (the
    class prior record of :mod:`ferlab.priors`, None for a file written before them) ...)."""

    network: Any
    classes: tuple[str, ...]
    file: Path
    meta: dict[str, Any] = field(default_factory=dict)


# --- where a source's file is ----------------------------------------------------------------
def shipped_model_path(name: str = "default") -> Path:
    """The file of a model shipped inside the installed package (no download, ever)."""
    if name not in SHIPPED_MODELS:
        raise ValueError(f"No shipped model {name!r}; ferlab ships {sorted(SHIPPED_MODELS)}.")
    return Path(str(resources.files("ferlab") / "weights" / SHIPPED_MODELS[name]))


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint (or model) file, or a run directory's ``checkpoints/last.ckpt``."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidate = path / "checkpoints" / "last.ckpt"
        if not candidate.is_file():
            raise FileNotFoundError(f"{path} is a directory without checkpoints/last.ckpt; pass a "
                                    "run directory written by ferlab.train or a .ckpt file.")
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}; pass a .ckpt file or a run directory.")
    return path


def is_ensemble(source: Any) -> bool:
    """Whether a source names several models: a shipped ensemble or a list of sources."""
    return isinstance(source, (list, tuple)) or (isinstance(source, str)
                                                 and source in SHIPPED_ENSEMBLES)


def ensemble_members(source: Any) -> list[Any]:
    """The sources an ensemble averages (a single source: itself alone). A list needs two or
    more single models."""
    if not is_ensemble(source):
        return [source]
    if isinstance(source, str):
        return list(SHIPPED_ENSEMBLES[source])
    members = list(source)
    nested = [m for m in members if is_ensemble(m)]
    if nested:
        raise ValueError(f"An ensemble lists single models; {nested[0]!r} is itself an ensemble "
                         f"(list its members: {ensemble_members(nested[0])}).")
    if len(members) < 2:
        raise ValueError(f"An ensemble averages two or more models; got {len(members)} "
                         f"({members}). Pass a single model as it is, not in a list.")
    return members


def resolve(source: str | os.PathLike | None) -> Path:
    """The file behind a source: a shipped model's name (None for the default), a model file,
    an ONNX file, a checkpoint, or a run directory (its last.ckpt)."""
    if is_ensemble(source):
        raise ValueError(f"{source!r} is an ensemble of several models, which has no single "
                         "file: load it with EmotionRecognizer, or name one of its models.")
    if source is None or source in SHIPPED_MODELS:
        return shipped_model_path(source or "default")
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"No model file, checkpoint or run directory at {path}; the models shipped with "
            f"ferlab are named {sorted(SHIPPED_MODELS)}.")
    return find_checkpoint(path)


# --- reading -----------------------------------------------------------------------------------
def read_torch_file(file: Path, what: str = "PyTorch file",
                    map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` (no unpickling of code) with a clear error."""
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # torch's own text advises weights_only=False: not here
        raise ValueError(f"{file} is not a readable {what}: it is not a PyTorch file, or it holds "
                         "Python objects besides tensors, which ferlab never unpickles (files "
                         "from ferlab.train and ferlab.export hold none).") from err
    except UNREADABLE as err:
        raise ValueError(f"{file} is not a readable {what} ({type(err).__name__}: {err}).") from err


def targets(tree: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``_target_`` in a nested config of dicts and lists: (its key path, its value)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                yield path, value
            else:
                yield from targets(value, path)
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from targets(value, f"{where}[{i}]")


def is_allowed_target(target: Any) -> bool:
    """Whether a config read from a file may name ``target``: one of the classes that ferlab's
    own configs name, or a network of ferlab.models."""
    return isinstance(target, str) and (target in CONFIG_TARGETS or target in network_targets())


def network_targets() -> frozenset[str]:
    """The names a network config may give: the networks of ferlab.models, by their short
    (``ferlab.models.VGG``) and full (``ferlab.models.vgg.VGG``) names."""
    import ferlab.models

    classes = [getattr(ferlab.models, n) for n in ferlab.models.__all__]
    classes = [c for c in classes if isinstance(c, type) and issubclass(c, nn.Module)]
    return frozenset({f"ferlab.models.{c.__name__}" for c in classes}
                     | {f"{c.__module__}.{c.__qualname__}" for c in classes})


def check_targets(tree: Any, file: str | os.PathLike, where: str = "",
                  allowed=is_allowed_target, allowed_text: str | None = None) -> None:
    """Refuse a stored config that names any target ``allowed`` rejects, at any depth."""
    allowed_text = allowed_text or "the classes its own configs name"
    for path, target in targets(tree, where):
        if not allowed(target):
            raise UnsafeArtifactError(
                f"{file} names {target!r} at {path}, and ferlab only builds {allowed_text} from "
                "a file: anything else would run code chosen by the file. Nothing was loaded; "
                "use files written by ferlab.train or ferlab.export that you trust.")


def build_network(model_cfg: dict[str, Any], file: str | os.PathLike = "the config") -> nn.Module:
    """Instantiate a network config whose every target, at any depth, is in ferlab.models."""
    if not isinstance(model_cfg, dict) or "_target_" not in model_cfg:
        raise ValueError(f"{file}: its network config is not a config with a _target_ "
                         f"({type(model_cfg).__name__}); it was not written by ferlab.")
    networks = network_targets()
    check_targets(model_cfg, file, "model", allowed=networks.__contains__,
                  allowed_text=f"the networks of ferlab.models ({', '.join(sorted(networks))})")
    return instantiate(OmegaConf.create(model_cfg))


def read_network_weights(source: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """The network weights, the network config and the file of a checkpoint, run directory or
    model file, checked but not built (a new run loads the weights into its own network)."""
    file = resolve(source)
    if file.suffix == ".onnx":
        raise ValueError(f"{file} is an ONNX file, which holds a graph for inference, not "
                         "weights to train from: pass the .pt, .ckpt or run directory it was "
                         "exported from.")
    payload = read_torch_file(file)
    if isinstance(payload, dict) and CONFIG_KEY in payload:  # a training checkpoint
        config = _checked_run_config(payload, file)
        weights = {k.removeprefix("model."): v for k, v in payload["state_dict"].items()
                   if k.startswith("model.")}
        return weights, config["model"], file
    if isinstance(payload, dict) and str(payload.get("format", "")).startswith("ferlab-model/"):
        _check_model_file(payload, file)
        return payload["state_dict"], payload["model"], file
    raise ValueError(f"{file} is neither a ferlab checkpoint nor a ferlab model file; pass a .ckpt "
                     "or run directory written by ferlab.train, or a file from ferlab.export.")


def shipped_prior() -> dict[str, Any]:
    """The class prior record of the shipped models (all trained on the same faces)."""
    counts = list(SHIPPED_TRAINING_COUNTS.values())
    train = priors.frequencies(counts, list(SHIPPED_TRAINING_COUNTS))
    return {"train": train, "output": dict(train), "faces": sum(counts),
            "splits": ["train", "val"]}


def load(source: str | os.PathLike | None) -> Artifact:
    """The network (eval mode), classes and metadata of any source (see the module's text)."""
    artifact = _load(source)
    if artifact.meta.get("prior") is None and (source is None or source in SHIPPED_MODELS):
        artifact.meta["prior"] = shipped_prior()
    prior = artifact.meta.get("prior")
    if prior is not None and not (isinstance(prior, dict) and isinstance(prior.get("train"), dict)
                                  and isinstance(prior.get("output"), dict)):
        raise ValueError(f"{artifact.file}: its class prior record is damaged ({prior!r}); "
                         "export the model again.")
    return artifact


def _load(source: str | os.PathLike | None) -> Artifact:
    file = resolve(source)
    if file.suffix == ".onnx":
        return _load_onnx(file)
    if file.suffix == ".ckpt":
        payload = read_torch_file(file, "PyTorch checkpoint")
        if not isinstance(payload, dict) or CONFIG_KEY not in payload:
            raise ValueError(f"{file} holds no ferlab config (key {CONFIG_KEY!r}); it was not "
                             "written by ferlab.train.")
        config = _checked_run_config(payload, file)
        weights = {k.removeprefix("model."): v for k, v in payload["state_dict"].items()
                   if k.startswith("model.")}
        num_classes = config.get("data", {}).get("num_classes")
        if not isinstance(num_classes, int):
            raise ValueError(f"{file}: its config gives no integer data.num_classes "
                             f"({num_classes!r}); it was not written by ferlab.train.")
        meta = {"source": str(file), "tta": "none", "model": config["model"],
                "recipe": {"name": config.get("name"), "seed": config.get("seed"),
                           "max_epochs": config.get("trainer", {}).get("max_epochs"),
                           "checkpoint": file.name},
                "config": config, "prior": payload.get(priors.PRIOR_KEY)}
        return Artifact(_network(config["model"], weights, file), class_names(num_classes),
                        file, meta)
    payload = read_torch_file(file, "ferlab model file")
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FILE_FORMAT:
        raise ValueError(f"{file} is not a ferlab model file (expected format "
                         f"{MODEL_FILE_FORMAT!r}); export one with python -m ferlab.export "
                         "<checkpoint> <file>.pt")
    _check_model_file(payload, file)
    classes = tuple(payload.get("classes", ()))
    if not classes or classes != class_names(len(classes)):
        raise ValueError(f"{file}: unexpected class list {classes}.")
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta["classes"] = classes
    return Artifact(_network(payload["model"], payload["state_dict"], file), classes, file, meta)


def _network(model_cfg: dict, weights: dict[str, torch.Tensor], file: Path) -> nn.Module:
    network = build_network(model_cfg, file)
    try:
        network.load_state_dict(weights)  # copies (and so casts float16) into float32
    except RuntimeError as err:
        raise ValueError(f"{file}: its weights do not fit the network its config describes "
                         f"({type(network).__name__}); the file is damaged or was not written "
                         f"by ferlab.\n  ({err})") from None
    return network.eval()


def _checked_run_config(payload: dict, file: Path) -> dict:
    config = payload[CONFIG_KEY]
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError(f"{file}: its {CONFIG_KEY!r} is not a run config with a model; it was "
                         "not written by ferlab.train.")
    for group in DESCRIBING_GROUPS:
        check_targets(config.get(group), file, group)
    if not isinstance(payload.get("state_dict"), dict):
        raise ValueError(f"{file} holds no state_dict; it was not written by ferlab.train.")
    return config


def _check_model_file(payload: dict, file: Path) -> None:
    check_targets({k: v for k, v in payload.items() if k != "state_dict"}, file)
    if not isinstance(payload.get("model"), dict) or not isinstance(payload.get("state_dict"),
                                                                    dict):
        raise ValueError(f"{file}: a ferlab model file holds a model config and a state_dict; "
                         "this one does not (it was not written by ferlab.export).")


# --- ONNX files --------------------------------------------------------------------------------
def onnx_metadata(classes: tuple[str, ...], tta: str, precision: str, source: str,
                  model_version: str, network: dict, recipe: dict,
                  prior: dict | None = None) -> dict[str, str]:
    """The metadata a ferlab ONNX file carries (strings, as ONNX stores them): all a user of the
    file needs besides the graph, in any runtime."""
    from ferlab import __version__

    return {
        "ferlab.format": ONNX_FORMAT,
        "ferlab.classes": json.dumps(list(classes)),
        "ferlab.input": json.dumps({
            "name": "faces", "shape": ["batch", 1, FACE_SIZE, FACE_SIZE], "layout": "NCHW",
            "colour": "grey", "scaling": "(pixel / 255 - mean) / std", "mean": PIXEL_MEAN,
            "std": PIXEL_STD}),
        "ferlab.output": json.dumps({"name": "logits", "probabilities": "softmax over classes"}),
        "ferlab.tta": tta,
        "ferlab.precision": precision,
        "ferlab.source": source,
        "ferlab.model_version": model_version,
        "ferlab.version": __version__,
        "ferlab.network": json.dumps(network),
        "ferlab.recipe": json.dumps(recipe, default=str),
        **({"ferlab.prior": json.dumps(prior)} if prior is not None else {}),
    }


def _load_onnx(file: Path) -> Artifact:
    """An ONNX file written by ferlab.export, on ONNX Runtime, checked against its metadata."""
    from ferlab.inference.runtime import OnnxNetwork

    network = OnnxNetwork(file.read_bytes(), name=str(file))
    meta = network.metadata
    if meta.get("ferlab.format") != ONNX_FORMAT:
        raise ValueError(f"{file} is an ONNX model without ferlab's metadata (ferlab.format "
                         f"{ONNX_FORMAT!r}), so its classes and input scaling are unknown; "
                         "export one with python -m ferlab.export SOURCE model.onnx")
    try:
        classes = tuple(json.loads(meta["ferlab.classes"]))
        given = json.loads(meta["ferlab.input"])
        shape, scaling = given["shape"][1:], (given["mean"], given["std"])
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ValueError(f"{file}: its ferlab metadata is damaged ({type(err).__name__}: "
                         f"{err}); export the model again.") from err
    if not classes or classes != class_names(len(classes)):
        raise ValueError(f"{file}: unexpected class list {classes}.")
    if shape != [1, FACE_SIZE, FACE_SIZE] or scaling != (PIXEL_MEAN, PIXEL_STD):
        raise ValueError(f"{file} takes faces of shape {shape} scaled with mean/std {scaling}; "
                         f"this ferlab prepares [1, {FACE_SIZE}, {FACE_SIZE}] with "
                         f"({PIXEL_MEAN}, {PIXEL_STD}). Export it again with this ferlab.")
    info = {k.removeprefix("ferlab."): v for k, v in meta.items() if k.startswith("ferlab.")}
    info["model"] = json.loads(info.pop("network", "{}"))
    info["recipe"] = json.loads(info.get("recipe", "{}"))
    info["prior"] = json.loads(info["prior"]) if "prior" in info else None
    info["classes"] = classes
    return Artifact(network, classes, file, info)
