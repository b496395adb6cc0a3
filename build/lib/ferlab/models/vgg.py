"""VGG-style networks built from a list of stages; the baseline and vgg9 are two settings of it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ferlab.data.labels import EMOTIONS, FACE_SIZE
from ferlab.models.blocks import conv_bn_relu


class VGG(nn.Module):
    """Stages of 3x3 convolutions, each followed by 2x2 max-pooling, then a dense head.

    ``stages`` lists the output channels of every convolution per stage: ``[[32], [64], [128]]``
    is the original three-conv baseline, ``[[32] * 3, [64] * 3, [128] * 3]`` is vgg9.
    ``head="flatten"`` flattens the last feature map into the dense layers; ``head="gap"``
    averages it globally first (fewer parameters, any input size).
    """

    def __init__(
        self,
        num_classes: int = len(EMOTIONS),
        stages: Sequence[Sequence[int]] = ((32, 32, 32), (64, 64, 64), (128, 128, 128)),
        hidden: Sequence[int] = (256,),
        dropout: float = 0.5,
        stage_dropout: float = 0.0,
        batch_norm: bool = True,
        head: str = "flatten",
        in_channels: int = 1,
        input_size: int = FACE_SIZE,
    ) -> None:
        super().__init__()
        if not stages or any(not stage for stage in stages):
            raise ValueError(f"stages must be a non-empty list of non-empty channel lists; got "
                             f"{stages}.")
        if head not in ("flatten", "gap"):
            raise ValueError(f"head must be 'flatten' or 'gap'; got {head!r}.")
        if not 0.0 <= dropout < 1.0 or not 0.0 <= stage_dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}, {stage_dropout}.")
        feature_size = input_size // 2 ** len(stages)
        if head == "flatten" and feature_size < 1:
            raise ValueError(f"{len(stages)} pooling stages shrink a {input_size}px input to "
                             "nothing; use fewer stages or head='gap'.")

        blocks = []
        channels = in_channels
        for stage in stages:
            layers: list[nn.Module] = []
            for width in stage:
                layers.append(conv_bn_relu(channels, width, batch_norm))
                channels = width
            layers.append(nn.MaxPool2d(2))
            if stage_dropout:
                layers.append(nn.Dropout2d(stage_dropout))
            blocks.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*blocks)  # one child per pooling stage (feature maps)

        if head == "gap":
            self.pool: nn.Module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            width = channels
        else:
            self.pool = nn.Flatten()
            width = channels * feature_size * feature_size
        dense: list[nn.Module] = []
        for units in hidden:
            dense += [nn.Linear(width, units), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = units
        if not hidden and dropout:
            dense.append(nn.Dropout(dropout))
        dense.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*dense)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes) logits
        return self.classifier(self.pool(self.features(x)))
