"""Residual networks built from a list of stages; resnet18 and resnet18_slim are two settings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ferlab.data.labels import EMOTIONS, FACE_SIZE
from ferlab.models.blocks import conv_bn_relu


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity shortcut (He et al. 2016); a 1x1
    convolution on the shortcut where the block changes width or stride."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        # (B, C_in, H, W) -> (B, C_out, H / stride, W / stride); Sequentials, so that inference
        # can fold each batch norm into its convolution (ferlab.models.fold_batch_norm)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """A stem, stages of basic blocks, global average pooling and a linear head.

    ``stages`` lists the width of every block per stage: ``[[64, 64], [128, 128], [256, 256],
    [512, 512]]`` is ResNet-18 (eight blocks of two 3x3 convolutions, with the stem and the head
    18 layers). For 48 px faces the stem is one 3x3 convolution at stride 1 with no pooling
    (ImageNet's 7x7 stride-2 stem and max-pool would leave 12 px before the first block), and
    each stage after the first halves the size with its first block's stride: 48 -> 48, 24, 12,
    6 px, then global average pooling (any input size works).
    """

    def __init__(
        self,
        num_classes: int = len(EMOTIONS),
        stages: Sequence[Sequence[int]] = ((64, 64), (128, 128), (256, 256), (512, 512)),
        stem: int = 64,
        dropout: float = 0.0,
        in_channels: int = 1,
        input_size: int = FACE_SIZE,
    ) -> None:
        super().__init__()
        if not stages or any(not stage for stage in stages):
            raise ValueError(f"stages must be a non-empty list of non-empty width lists; got "
                             f"{stages}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}.")
        if input_size // 2 ** (len(stages) - 1) < 1:
            raise ValueError(f"{len(stages)} stages halve a {input_size}px input to nothing; "
                             "use fewer stages.")
        blocks: list[nn.Module] = []
        channels = stem
        for i, stage in enumerate(stages):
            layers = []
            for j, width in enumerate(stage):
                layers.append(BasicBlock(channels, width, stride=2 if i and not j else 1))
                channels = width
            blocks.append(nn.Sequential(*layers))
        blocks[0] = nn.Sequential(conv_bn_relu(in_channels, stem), *blocks[0])
        self.features = nn.Sequential(*blocks)  # one child per stage (feature maps)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes) logits
        return self.classifier(self.pool(self.features(x)))
