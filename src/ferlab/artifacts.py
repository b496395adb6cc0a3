"""Model artifacts: every file ferlab turns into a network goes through here.

A *source* is what the user-facing keys take (``EmotionRecognizer(model)``, ``ferlab.evaluate
ckpt_path=``, ``ferlab.export``, ``ferlab.predict --model``, ``init_from=``, ``resume=``,
``module.teacher=``): a shipped model's name, a ferlab model file (``.pt``), a training
checkpoint (``.ckpt``), a run directory (its ``checkpoints/last.ckpt``) or an ONNX file.

What a file holds is plain data, checked before use: files are read with
``torch.load(weights_only=True)`` (no pickled code runs); everything besides the weights must be
dicts, lists, strings, numbers, booleans and None of bounded size and depth, with no OmegaConf
interpolation (``${``) anywhere; the network is a description validated against its family's
schema (:mod:`ferlab.models.schema`: known fields, types, bounds) and built by ferlab's own code;
class lists and class prior records are checked for what they are. Nothing read from a file
reaches ``hydra.utils.instantiate``, a resolver or an import, and nothing but the network is ever
built from a file (a checkpoint's trainer, module and data configs are only read as values).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferlab import priors
from ferlab.data.labels import FACE_SIZE, SUPPORTED_NUM_CLASSES, class_names
from ferlab.data.transforms import PIXEL_MEAN, PIXEL_STD, TTA_MODES
from ferlab.models import schema

# the models inside the package, by the name EmotionRecognizer(model=...) takes: the default
# (trained on a GPU), the one trained and timed on two CPU cores
# (docs/model_cards/cpu-trained.md), and each
# as the int8 ONNX file that `python -m ferlab.export NAME F.onnx --int8` writes from it; and
# the fast model, a small network distilled from the ensemble, shipped as its int8 ONNX file
# alone (docs/model_cards/fast.md)
SHIPPED_MODELS = {"default": "ferlab_fer2013.pt", "cpu-trained": "ferlab_fer2013_cpu.pt",
                  "default-int8": "ferlab_fer2013_int8.onnx",
                  "cpu-trained-int8": "ferlab_fer2013_cpu_int8.onnx",
                  "fast": "ferlab_fer2013_fast_int8.onnx"}
TORCH_MODELS = tuple(n for n, f in SHIPPED_MODELS.items() if f.endswith(".pt"))
# shipped ensembles: the members' probabilities averaged with equal weights (untuned: the default
# model trained on PublicTest, so no split is left to tune weights on; docs/model_cards/ensemble.md)
SHIPPED_ENSEMBLES = {"ensemble": ("default", "cpu-trained"),
                     "ensemble-int8": ("default-int8", "cpu-trained-int8")}
# PrivateTest accuracy with each model's own TTA (flip; none for fast), as each model card
# states it (a test keeps them equal)
SHIPPED_ACCURACY = {"default": 0.7295, "cpu-trained": 0.7225, "default-int8": 0.7289,
                    "cpu-trained-int8": 0.7208, "ensemble": 0.7442, "ensemble-int8": 0.7423,
                    "fast": 0.7027}
# the faces the shipped models trained on, per class: FER2013 Training + PublicTest, as their
# model cards say (a data test counts them again); their recorded class prior (ferlab.priors)
SHIPPED_TRAINING_COUNTS = {"angry": 4462, "disgust": 492, "fear": 4593, "happy": 8110,
                           "sad": 5483, "surprise": 3586, "neutral": 5572}
MODEL_FILE_FORMAT = "ferlab-model/1"
ONNX_FORMAT = "ferlab-onnx/1"
CONFIG_KEY = "ferlab_config"  # a checkpoint's resolved run config (ferlab.checkpoint writes it)

# bounds on the plain data a file may hold besides its weights: ferlab's own checkpoints hold a
# config of a few hundred values at depth 5
MAX_DEPTH, MAX_VALUES, MAX_TEXT = 32, 100_000, 100_000

# what torch.load raises on a file that is not a PyTorch file (or a truncated one)
UNREADABLE = (RuntimeError, EOFError, OSError, KeyError, ValueError, pickle.UnpicklingError)


class UnsafeArtifactError(ValueError):
    """A file holding what ferlab never reads from a file: an interpolation, an object that is
    not plain data, or data beyond the bounds."""


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


def check_plain(tree: Any, file: str | os.PathLike, where: str) -> Any:
    """``tree`` itself when it is plain data (dicts with string keys, lists, strings, numbers,
    booleans, None) of bounded size and depth with no interpolation (``${``) in any string;
    otherwise UnsafeArtifactError naming the file and the field."""
    count = 0

    def refuse(path: str, why: str) -> UnsafeArtifactError:
        return UnsafeArtifactError(
            f"{file}: {path} {why}. ferlab reads files as plain data only and resolves nothing "
            "in them; nothing was loaded. Use files written by ferlab.train or ferlab.export "
            "that you trust.")

    def walk(node: Any, path: str, depth: int) -> None:
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            raise refuse(where, f"holds more than {MAX_VALUES:,} values")
        if depth > MAX_DEPTH:
            raise refuse(path, f"is nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, str):
            if len(node) > MAX_TEXT:
                raise refuse(path, f"is a text of {len(node):,} characters")
            if "${" in node:
                raise refuse(path, f"holds an interpolation ({node[:60]!r})")
        elif isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise refuse(path, f"has a key that is not a string ({key!r:.60})")
                walk(key, f"{path}.<key>", depth + 1)
                walk(value, f"{path}.{key}", depth + 1)
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]", depth + 1)
        elif node is not None and not isinstance(node, (bool, int, float)):
            raise refuse(path, f"is a {type(node).__name__}, not plain data")

    walk(tree, where, 0)
    return tree


def network_description(description: Any, file: str | os.PathLike, where: str = "model",
                        num_classes: int | None = None) -> dict[str, Any]:
    """A file's network description, validated (:mod:`ferlab.models.schema`) and normalised:
    what ferlab builds and what it writes into the files it makes from this one."""
    check_plain(description, file, where)
    described = schema.normalised(_without_start(description),
                                  f"{file}: its network ({where})")
    if num_classes is not None and described.get("num_classes", num_classes) != num_classes:
        raise ValueError(f"{file}: its network ({where}) predicts {described['num_classes']} "
                         f"classes but the file names {num_classes}; it is damaged or was not "
                         "written by ferlab.")
    return described


def build_network(description: Mapping[str, Any],
                  file: str | os.PathLike = "the config") -> nn.Module:
    """The network a description names, built by ferlab's own code from validated fields."""
    return schema.build(_without_start(check_plain(description, file, "model")),
                        f"{file}: its network")


def _without_start(description: Any) -> Any:
    """A model config without ``weights`` (the file a training run started from: where the run
    began, not part of the network)."""
    if isinstance(description, Mapping) and "weights" in description:
        return {k: v for k, v in description.items() if k != "weights"}
    return description


def read_network_weights(source: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """The network weights, the (validated) network description and the file of a checkpoint,
    run directory or model file, checked but not built (a new run loads the weights into its
    own network)."""
    file = resolve(source)
    if file.suffix == ".onnx":
        raise ValueError(f"{file} is an ONNX file, which holds a graph for inference, not "
                         "weights to train from: pass the .pt, .ckpt or run directory it was "
                         "exported from.")
    payload = read_torch_file(file)
    if isinstance(payload, dict) and CONFIG_KEY in payload:  # a training checkpoint
        checked = checked_checkpoint(payload, file)
        return checked["weights"], checked["model"], file
    if isinstance(payload, dict) and str(payload.get("format", "")).startswith("ferlab-model/"):
        checked = _checked_model_file(payload, file)
        return payload["state_dict"], checked["model"], file
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
        checked = checked_checkpoint(payload, file)
        config = checked["config"]
        trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
        meta = {"source": str(file), "tta": "none", "model": checked["model"],
                "recipe": {"name": config.get("name"), "seed": config.get("seed"),
                           "max_epochs": trainer.get("max_epochs"), "checkpoint": file.name},
                "config": config, "prior": checked["prior"]}
        return Artifact(_network(checked["model"], checked["weights"], file), checked["classes"],
                        file, meta)
    payload = read_torch_file(file, "ferlab model file")
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FILE_FORMAT:
        raise ValueError(f"{file} is not a ferlab model file (expected format "
                         f"{MODEL_FILE_FORMAT!r}); export one with python -m ferlab.export "
                         "<checkpoint> <file>.pt")
    checked = _checked_model_file(payload, file)
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta.update(model=checked["model"], classes=checked["classes"], prior=checked["prior"])
    return Artifact(_network(checked["model"], payload["state_dict"], file), checked["classes"],
                    file, meta)


def _network(description: dict, weights: dict[str, torch.Tensor], file: Path) -> nn.Module:
    network = schema.build(description, f"{file}: its network")
    try:
        network.load_state_dict(weights)  # copies (and so casts float16) into float32
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{file}: its weights do not fit the network its config describes "
                         f"({type(network).__name__}); the file is damaged or was not written "
                         f"by ferlab.\n  ({str(err)[:500]})") from None
    return network.eval()


def _weights(state: Any, file: Path, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"{file}: its {where} is not a dict of named tensors; it was not written "
                         "by ferlab.")
    return state


def checked_checkpoint(payload: dict, file: Path) -> dict[str, Any]:
    """What ferlab reads from a training checkpoint, each part checked: the run config (plain
    data), the network description, the class count, the weights and the class prior."""
    config = check_plain(payload[CONFIG_KEY], file, CONFIG_KEY)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError(f"{file}: its {CONFIG_KEY!r} is not a run config with a model; it was "
                         "not written by ferlab.train.")
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    num_classes = data.get("num_classes")
    is_int = isinstance(num_classes, int) and not isinstance(num_classes, bool)
    if not is_int or num_classes not in SUPPORTED_NUM_CLASSES:
        raise ValueError(f"{file}: its config gives no usable data.num_classes ({num_classes!r}; "
                         f"ferlab's class views have {sorted(SUPPORTED_NUM_CLASSES)} classes); "
                         "it was not written by ferlab.train.")
    classes = class_names(num_classes)
    state = _weights(payload.get("state_dict"), file, "state_dict")
    return {"config": config, "classes": classes,
            "model": network_description(config["model"], file, f"{CONFIG_KEY}.model",
                                         num_classes),
            "weights": {k.removeprefix("model."): v for k, v in state.items()
                        if k.startswith("model.")},
            "prior": _checked_prior(payload.get(priors.PRIOR_KEY), classes, file,
                                    priors.PRIOR_KEY)}


def _checked_model_file(payload: dict, file: Path) -> dict[str, Any]:
    """The parts of a ferlab model file, checked: plain data, the network description, the
    class list, TTA, the class prior and the weights."""
    check_plain({k: v for k, v in payload.items() if k != "state_dict"}, file, "the file")
    _weights(payload.get("state_dict"), file, "state_dict")
    classes = _checked_classes(payload.get("classes"), file, "classes")
    if payload.get("tta", "none") not in TTA_MODES:
        raise ValueError(f"{file}: its tta {payload.get('tta')!r} is not one of {TTA_MODES}; "
                         "export the model again.")
    return {"classes": classes,
            "model": network_description(payload.get("model"), file, "model", len(classes)),
            "prior": _checked_prior(payload.get("prior"), classes, file, "prior")}


def _checked_classes(classes: Any, file: Path, where: str) -> tuple[str, ...]:
    """A file's class list: ferlab's names for a six- or seven-class view, in order."""
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes) \
            or len(classes) not in SUPPORTED_NUM_CLASSES:
        raise ValueError(f"{file}: its {where} must be a list of class names; got "
                         f"{classes!r:.80}. Export the model again.")
    if tuple(classes) != class_names(len(classes)):
        raise ValueError(f"{file}: its {where} {list(classes)} are not ferlab's "
                         f"{len(classes)}-class view {list(class_names(len(classes)))}.")
    return tuple(classes)


def _checked_prior(record: Any, classes: tuple[str, ...], file: Path,
                   where: str) -> dict[str, Any] | None:
    """A file's class prior record (:mod:`ferlab.priors`), None when it has none."""
    if record is None:
        return None
    try:
        return priors.check_record(record, classes)
    except ValueError as err:
        raise ValueError(f"{file}: its class prior record ({where}) is damaged: {err} Export "
                         "the model again.") from None


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
    info = {k.removeprefix("ferlab."): check_plain(v, file, k) for k, v in meta.items()
            if k.startswith("ferlab.")}
    for key in ("classes", "input", "network", "recipe", "prior"):
        if key in info:
            info[key] = _json_field(info[key], file, f"ferlab.{key}")
    classes = _checked_classes(info.get("classes"), file, "metadata ferlab.classes")
    given = info.get("input")
    try:
        shape, scaling = given["shape"][1:], (given["mean"], given["std"])
    except (KeyError, TypeError, IndexError) as err:
        raise ValueError(f"{file}: its metadata ferlab.input is damaged ({type(err).__name__}: "
                         f"{err}); export the model again.") from None
    if shape != [1, FACE_SIZE, FACE_SIZE] or scaling != (PIXEL_MEAN, PIXEL_STD):
        raise ValueError(f"{file} takes faces of shape {shape} scaled with mean/std {scaling}; "
                         f"this ferlab prepares [1, {FACE_SIZE}, {FACE_SIZE}] with "
                         f"({PIXEL_MEAN}, {PIXEL_STD}). Export it again with this ferlab.")
    if info.get("tta", "none") not in TTA_MODES:
        raise ValueError(f"{file}: its metadata ferlab.tta {info.get('tta')!r} is not one of "
                         f"{TTA_MODES}; export the model again.")
    if info.get("network") is not None:
        info["model"] = network_description(info.pop("network"), file, "metadata ferlab.network",
                                            len(classes))
    else:
        info["model"] = {}
    info["recipe"] = info.get("recipe") if isinstance(info.get("recipe"), dict) else {}
    info["prior"] = _checked_prior(info.get("prior"), classes, file, "metadata ferlab.prior")
    info["classes"] = classes
    return Artifact(network, classes, file, info)


def _json_field(text: str, file: Path, key: str) -> Any:
    try:
        return check_plain(json.loads(text), file, key)
    except (ValueError, RecursionError) as err:
        if isinstance(err, UnsafeArtifactError):
            raise
        raise ValueError(f"{file}: its metadata {key} is not valid JSON ({type(err).__name__}: "
                         f"{str(err)[:120]}); export the model again.") from None
