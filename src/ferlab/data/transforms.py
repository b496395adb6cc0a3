"""The one definition of preprocessing (shared by training, evaluation and inference) and the
batched training augmentation, both as tensor ops on whole batches."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ferlab.data.labels import FACE_SIZE

# Pixel statistics of the FER2013 training split (uint8 scale / 255).
PIXEL_MEAN = 0.5077
PIXEL_STD = 0.2550


def to_face(grey: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """A grey uint8 crop of any size (H, W) as a (size, size) FER2013-style face."""
    grey = np.asarray(grey)
    if grey.ndim == 3 and grey.shape[2] == 1:
        grey = grey[..., 0]
    if grey.ndim != 2 or min(grey.shape) == 0:
        raise ValueError(f"A face crop must be a non-empty grey (H, W) array; got shape "
                         f"{grey.shape} (convert colour crops with ferlab.inference.to_grey).")
    if grey.dtype != np.uint8:
        raise ValueError(f"A face crop must be uint8 (0..255); got {grey.dtype}.")
    if grey.shape != (size, size):
        # INTER_AREA for shrinking (the usual case for photo crops) avoids aliasing.
        shrink = grey.shape[0] > size or grey.shape[1] > size
        grey = cv2.resize(grey, (size, size),
                          interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return grey


def preprocess(faces: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """uint8 faces (B, H, W) or (B, 1, H, W) -> standardised float32 input (B, 1, H, W), a
    tensor from a tensor, a numpy array from an array (the ONNX Runtime path stays in numpy:
    one face at a time, a tensor op costs about what a small int8 network's layer does)."""
    if faces.dtype not in (torch.uint8, np.uint8):
        raise TypeError(f"preprocess expects uint8 faces; got {faces.dtype}.")
    if faces.ndim == 3:
        faces = faces[:, None]
    if isinstance(faces, np.ndarray):
        return (faces.astype(np.float32) / np.float32(255.0) - np.float32(PIXEL_MEAN)) \
            / np.float32(PIXEL_STD)
    return (faces.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD


def to_network_input(x: torch.Tensor, scale: float = 1.0, channels: int = 1) -> torch.Tensor:
    """Preprocessed faces (B, 1, H, W) as a network that wants other input takes them: resized
    by ``scale`` (a timm network at 96 px sees a 48 px face at scale 2, a 24 px training face of
    progressive resizing at 48) and the grey channel repeated to ``channels``."""
    if scale != 1.0:  # plain bilinear both ways: ONNX has no antialiased resize
        x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    if channels > 1:  # (B, 1, H, W) -> (B, channels, H, W), a view
        x = x.expand(-1, channels, -1, -1)
    return x


class BatchAugment(nn.Module):
    """Random flip, shift, rotation, scale and erasing of a whole batch (B, 1, H, W) at once.

    One affine ``grid_sample`` covers flip/shift/rotation/scale; erasing is a broadcast mask.
    Setting a strength to 0 switches that augmentation off.
    """

    def __init__(
        self,
        flip: float = 0.5,
        shift: float = 0.1,
        rotate: float = 10.0,
        scale: float = 0.1,
        erase: float = 0.5,
        erase_area: tuple[float, float] = (0.02, 0.15),
    ) -> None:
        super().__init__()
        if not 0.0 <= flip <= 1.0 or not 0.0 <= erase <= 1.0:
            raise ValueError(f"flip and erase are probabilities in [0, 1]; got {flip}, {erase}.")
        if shift < 0 or rotate < 0 or not 0 <= scale < 1:
            raise ValueError(f"shift, rotate >= 0 and 0 <= scale < 1 expected; got shift={shift}, "
                             f"rotate={rotate}, scale={scale}.")
        self.flip, self.shift, self.rotate, self.scale = flip, shift, rotate, scale
        self.erase, self.erase_area = erase, tuple(erase_area)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        if self.shift or self.rotate or self.scale:
            x = self._affine(x)
        elif self.flip:
            flip = torch.rand(x.shape[0], device=x.device) < self.flip
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.erase:
            x = self._erase(x)
        return x

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        b, device = x.shape[0], x.device

        def uniform(bound: float) -> torch.Tensor:
            return (torch.rand(b, device=device) * 2 - 1) * bound

        angle = uniform(math.radians(self.rotate))
        zoom = 1 + uniform(self.scale)
        sign = torch.where(torch.rand(b, device=device) < self.flip, -1.0, 1.0)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # affine_grid maps output to input coordinates in [-1, 1]; a shift of f of the width is 2f.
        theta = torch.stack([
            torch.stack([cos * sign, -sin, uniform(2 * self.shift)], dim=1),
            torch.stack([sin * sign, cos, uniform(2 * self.shift)], dim=1),
        ], dim=1)  # (B, 2, 3)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        # zeros padding is the mean grey after standardisation
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        device = x.device
        lo, hi = self.erase_area
        area = lo + torch.rand(b, device=device) * (hi - lo)
        aspect = torch.exp((torch.rand(b, device=device) * 2 - 1) * math.log(3.0))
        eh = (torch.sqrt(area * aspect) * h).clamp(1, h)
        ew = (torch.sqrt(area / aspect) * w).clamp(1, w)
        y0 = torch.rand(b, device=device) * (h - eh)
        x0 = torch.rand(b, device=device) * (w - ew)
        ys = torch.arange(h, device=device)[None, :, None]
        xs = torch.arange(w, device=device)[None, None, :]
        inside = ((ys >= y0[:, None, None]) & (ys < (y0 + eh)[:, None, None])
                  & (xs >= x0[:, None, None]) & (xs < (x0 + ew)[:, None, None]))
        apply = (torch.rand(b, device=device) < self.erase)[:, None, None]
        return x.masked_fill((inside & apply)[:, None], 0.0)

    def extra_repr(self) -> str:
        return (f"flip={self.flip}, shift={self.shift}, rotate={self.rotate}, scale={self.scale}, "
                f"erase={self.erase}, erase_area={self.erase_area}")


TTA_MODES = ("none", "flip", "tencrop")


def tta_views(x: torch.Tensor | np.ndarray, mode: str = "none",
              crop: float = 0.875) -> list[torch.Tensor] | list[np.ndarray]:
    """Test-time views of a preprocessed batch (B, C, H, W), tensors or numpy arrays as ``x``
    is; predictions average over them.

    "flip": the batch and its mirror. "tencrop": four corner crops and the centre crop of
    ``crop`` of the side, each resized back to (H, W), and their mirrors.
    """
    if mode == "none":
        return [x]
    if isinstance(x, np.ndarray):
        if mode == "flip":
            return [x, x[..., ::-1]]
        return [view.numpy() for view in tta_views(torch.from_numpy(x), mode, crop)]
    if mode == "flip":
        return [x, x.flip(-1)]
    if mode == "tencrop":
        from torchvision.transforms.v2.functional import ten_crop

        size = [round(x.shape[-2] * crop), round(x.shape[-1] * crop)]
        return [F.interpolate(view, size=x.shape[-2:], mode="bilinear", align_corners=False)
                for view in ten_crop(x, size)]
    raise ValueError(f"Unknown test-time augmentation {mode!r}; choose one of {TTA_MODES}.")
