"""The exported model file: network config + weights + class names, loadable without unpickling.

A ferlab model file is a ``torch.save``d dict of plain types and tensors, read back with
``torch.load(weights_only=True)``. Its network is rebuilt from the stored ``model`` config,
whose ``_target_`` must be a class in :mod:`ferlab.models` (a file cannot name arbitrary code).
Floating-point weights may be stored as float16 (``half=True``: half the file size); they are
loaded back into the float32 network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ferlab.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    load_network_weights,
    read_torch_file,
)
from ferlab.data.labels import FACE_SIZE, class_names
from ferlab.files import atomic_write

FORMAT = "ferlab-model/1"


def export_model(ckpt_path: str | os.PathLike, output: str | os.PathLike,
                 tta: str = "flip", half: bool = False) -> Path:
    """Write a checkpoint's network (no optimiser state) as a ferlab model file. A model file
    (any file but a ``.ckpt``) is written again, e.g. to store it in float16 or change its TTA."""
    source = find_checkpoint(ckpt_path)
    if source.suffix != ".ckpt":
        network, meta = load_model(source)
        return save_model(network, meta["model"], meta["classes"], output, tta=tta,
                          recipe=meta.get("recipe"), half=half)
    module, cfg = load_checkpoint(source)
    recipe = {"name": cfg.get("name"), "seed": cfg.get("seed"),
              "max_epochs": cfg.trainer.max_epochs, "checkpoint": Path(ckpt_path).name}
    return save_model(module.model, OmegaConf.to_container(cfg.model, resolve=True),
                      module.class_names, output, tta=tta, recipe=recipe, half=half)


def save_model(network: nn.Module, model_cfg: dict[str, Any], classes: tuple[str, ...],
               output: str | os.PathLike, tta: str = "none",
               recipe: dict[str, Any] | None = None, half: bool = False) -> Path:
    """Save a network with the config that builds it (atomically: never a half-written file).
    ``half`` stores floating-point weights as float16."""

    def stored(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().cpu()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        return tensor.clone().contiguous()

    payload = {
        "format": FORMAT,
        "model": model_cfg,
        "state_dict": {k: stored(v) for k, v in network.state_dict().items()},
        "classes": list(classes),
        "face_size": FACE_SIZE,
        "tta": tta,
        "recipe": recipe or {},
    }
    output = Path(output)
    with atomic_write(output, "wb") as handle:
        torch.save(payload, handle)
    return output


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The network (in eval mode) and the file's metadata (classes, tta, metrics ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No ferlab model file at {path}.")
    payload = read_torch_file(path, "ferlab model file")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a ferlab model file (expected format {FORMAT!r}); "
                         "export one with python -m ferlab.export ckpt_path=...")
    model = build_network(OmegaConf.create(payload["model"]))
    model.load_state_dict(payload["state_dict"])  # copies (and so casts float16) into float32
    classes = tuple(payload["classes"])
    if classes != class_names(len(classes)):
        raise ValueError(f"{path}: unexpected class list {classes}.")
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta["classes"] = classes
    return model.eval(), meta


def load_network(path: str | os.PathLike) -> nn.Module:
    """The network (eval mode) of a ferlab model file, checkpoint or run directory."""
    weights, model_cfg = load_network_weights(path)
    network = build_network(OmegaConf.create(model_cfg))
    network.load_state_dict(weights)
    return network.eval()


def build_network(model_cfg: DictConfig) -> nn.Module:
    """Instantiate a network config, allowing only classes of ferlab.models."""
    target = str(model_cfg.get("_target_", ""))
    if not target.startswith("ferlab.models."):
        raise ValueError(f"Refusing to build {target!r}: a model file may only name classes in "
                         "ferlab.models.")
    return instantiate(model_cfg)
