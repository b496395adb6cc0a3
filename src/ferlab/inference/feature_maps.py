"""Seeing inside: the activations of a face after each pooling stage of a network."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: the user's backend stays as it is
from torch import nn
from torchvision.utils import make_grid

from ferlab.data.transforms import preprocess


@torch.inference_mode()
def stage_outputs(network: nn.Module, face: np.ndarray) -> list[torch.Tensor]:
    """Feature maps (C, H, W) after each pooling stage, for a uint8 face (48, 48)."""
    stages = getattr(network, "features", None)
    if not isinstance(stages, nn.Sequential):
        raise ValueError(f"{type(network).__name__} has no `features` stages to look inside; "
                         "feature maps need a ferlab VGG-style network.")
    device = next(network.parameters()).device
    x = preprocess(torch.from_numpy(np.ascontiguousarray(face))[None].to(device))
    outputs = []
    for stage in stages:
        x = stage(x)
        outputs.append(x[0].float().cpu())
    return outputs


def save_feature_maps(network: nn.Module, face: np.ndarray, path: str | os.PathLike,
                      max_channels: int = 32) -> Path:
    """A figure with the face and one grid of channel maps per pooling stage."""
    maps = stage_outputs(network, face)
    fig = Figure(figsize=(3.2 * (len(maps) + 1), 3.4))
    axes = fig.subplots(1, len(maps) + 1)
    axes[0].imshow(face, cmap="gray")
    axes[0].set_title("face")
    for ax, (i, fmap) in zip(axes[1:], enumerate(maps, 1)):
        channels = fmap[:max_channels, None]  # (C, 1, H, W)
        lo = channels.amin(dim=(2, 3), keepdim=True)
        hi = channels.amax(dim=(2, 3), keepdim=True)
        grid = make_grid((channels - lo) / (hi - lo).clamp_min(1e-6), nrow=8, padding=1,
                         pad_value=1.0)
        ax.imshow(grid[0].numpy(), cmap="viridis")
        ax.set_title(f"after pooling {i}: {fmap.shape[0]}x{fmap.shape[1]}x{fmap.shape[2]}")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
