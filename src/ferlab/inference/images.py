"""Turning what users pass (paths, arrays in any colour layout, PIL images) into images."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse images above this many pixels before decoding them (decompression bombs).
MAX_PIXELS = 100_000_000


class ImageError(ValueError):
    """An input that is not a usable image; the message names the input."""


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS,
               grey: bool = False) -> np.ndarray:
    """Decode an image file as BGR uint8 (H, W, 3), or grey (H, W) with ``grey`` (a JPEG is
    then decoded straight to grey, skipping colour: about twice as fast), honouring EXIF
    orientation."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file.")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image.")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > max_pixels:
                    raise ImageError(f"{path}: {image.width}x{image.height} pixels is over the "
                                     f"limit of {max_pixels:,} (a decompression bomb?).")
                if grey:
                    image.draft("L", image.size)  # JPEG: decode the luma channel only
                image = ImageOps.exif_transpose(image)
                pixels = np.asarray(image.convert("L" if grey else "RGB"))
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:
        raise ImageError(f"{path}: not a supported image ({err}).") from err
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise ImageError(f"{path}: the image data is corrupt or truncated ({err}).") from err
    return pixels if grey else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)


def as_bgr(image, color_order: str = "bgr") -> np.ndarray:
    """BGR uint8 (H, W, 3) from a path, a PIL image, or an array: grey (H, W) / (H, W, 1),
    colour (H, W, 3) or with alpha (H, W, 4), channels in ``color_order`` ("bgr" or "rgb")."""
    if color_order not in ("bgr", "rgb"):
        raise ValueError(f"color_order must be 'bgr' or 'rgb'; got {color_order!r}.")
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ImageError(f"An image array must be uint8; got {array.dtype} (scale floats in "
                         "0..1 by 255 and convert with .astype(np.uint8)).")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2 and min(array.shape) > 0:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    if array.ndim == 3 and array.shape[2] in (3, 4) and min(array.shape[:2]) > 0:
        rgb = color_order == "rgb"
        code = {(3, True): cv2.COLOR_RGB2BGR, (4, False): cv2.COLOR_BGRA2BGR,
                (4, True): cv2.COLOR_RGBA2BGR}.get((array.shape[2], rgb))
        return np.ascontiguousarray(array) if code is None else cv2.cvtColor(array, code)
    raise ImageError(f"An image array must be non-empty (H, W), (H, W, 1), (H, W, 3) or "
                     f"(H, W, 4); got shape {array.shape}.")


def to_grey(image, color_order: str = "bgr") -> np.ndarray:
    """Grey uint8 (H, W) from anything :func:`as_bgr` accepts."""
    array = image if isinstance(image, np.ndarray) else None
    if array is not None and array.dtype == np.uint8 and (
            array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1)):
        return array.reshape(array.shape[:2])  # already grey: no round trip through colour
    return cv2.cvtColor(as_bgr(image, color_order), cv2.COLOR_BGR2GRAY)
