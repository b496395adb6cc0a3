"""Writing the exported model file: network config + weights + class names, no optimiser.

A ferlab model file is a ``torch.save``d dict of plain types and tensors (format
:data:`ferlab.artifacts.MODEL_FILE_FORMAT`), read back by :func:`ferlab.artifacts.load`.
Floating-point weights may be stored as float16 (``half=True``: half the file size); they are
loaded back into the float32 network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ferlab import artifacts
from ferlab.data.labels import FACE_SIZE
from ferlab.files import atomic_write


def export_model(source: str | os.PathLike, output: str | os.PathLike,
                 tta: str = "flip", half: bool = False) -> Path:
    """Write the network of a checkpoint, run directory or model file as a ferlab model file; a
    model file is written again, e.g. to store it in float16 or change its TTA."""
    artifact = artifacts.load(source)
    return save_model(artifact.network, artifact.meta["model"], artifact.classes, output,
                      tta=tta, recipe=artifact.meta.get("recipe"), half=half)


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
        "format": artifacts.MODEL_FILE_FORMAT,
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
