"""Turning what users pass (paths, arrays in any colour layout, PIL images) into images."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse images above this many pixels before decoding them (decompression bombs).
MAX_PIXELS = 100_000_000
# Pillow's own bomb limit (89.5 MP) is lifted while ferlab opens a file: ferlab checks the size
# against max_pixels itself, before decoding, so that a larger limit can be asked for
_PIL_LIMIT = threading.Lock()


class ImageError(ValueError):
    """An input that is not a usable image; the message names the input."""


class ImageTooLargeError(ImageError):
    """An image with more pixels than the limit (a decompression bomb, or a limit to raise)."""


def read_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS,
               grey: bool = False) -> np.ndarray:
    """Decode an image file as BGR uint8 (H, W, 3), or grey (H, W) with ``grey`` (a JPEG is
    then decoded straight to grey, skipping colour: about twice as fast), honouring EXIF
    orientation. 16-bit and floating-point images are scaled to 0..255."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file.")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image.")
    if not path.is_file():  # a named pipe or a device would block or never end
        raise ImageError(f"{path}: not a regular file (a pipe, socket or device); not read.")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty.")
    return _decode(path, str(path), max_pixels, grey)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, grey: bool = False) -> np.ndarray:
    """An encoded image (the bytes of a JPEG, PNG ... file) decoded as :func:`read_image` does."""
    if len(data) == 0:
        raise ImageError("The image bytes are empty.")
    return _decode(io.BytesIO(data), "the image bytes", max_pixels, grey)


def _decode(source, name: str, max_pixels: int, grey: bool) -> np.ndarray:
    try:
        with _PIL_LIMIT:
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(source)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
        with image:
            if image.width * image.height > max_pixels:
                raise ImageTooLargeError(f"{name}: {image.width}x{image.height} pixels is over the "
                                 f"limit of {max_pixels:,} (a decompression bomb?); a larger "
                                 "limit is --max-pixels / max_pixels.")
            if grey:
                image.draft("L", image.size)  # JPEG: decode the luma channel only
            return _pil_pixels(image, name, grey)
    except ImageError:
        raise
    except UnidentifiedImageError as err:
        raise ImageError(f"{name}: not an image in a format Pillow reads (JPEG, PNG, BMP, "
                         "TIFF, WebP ...).") from err
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise ImageError(f"{name}: the image data is corrupt or truncated ({err}).") from err


def _pil_pixels(image: Image.Image, name: str, grey: bool = False) -> np.ndarray:
    """A PIL image (files and callers' images alike) as BGR uint8 (H, W, 3), or grey (H, W),
    upright by its EXIF orientation; 16-bit, 32-bit and float pixels scaled, not clipped."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        pixels = _to_uint8(np.asarray(image), image.mode, name)
        return pixels if grey else cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    pixels = np.asarray(image.convert("L" if grey else "RGB"))
    return pixels if grey else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)


def _to_uint8(pixels: np.ndarray, mode: str, name: str) -> np.ndarray:
    """Grey 16-bit, 32-bit and floating-point pixels scaled to uint8 (Pillow's own conversion
    clips them: a 16-bit photo turned white, a 0..1 float one black)."""
    pixels = pixels.astype(np.float64)
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if mode == "F" and low >= 0 and high <= 1:
        scale = 255.0
    elif mode.startswith("I;16") or (low >= 0 and high <= 65535 and high > 255):
        scale = 255.0 / 65535.0
    elif low >= 0 and high <= 255:
        scale = 1.0
    else:
        raise ImageError(f"{name}: its {mode} pixels run from {low:g} to {high:g}, outside "
                         "0..1, 0..255 and 0..65535; convert it to an 8-bit image first.")
    return np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8)


def as_bgr(image, color_order: str = "bgr") -> np.ndarray:
    """BGR uint8 (H, W, 3) from a path, a PIL image, or an array: grey (H, W) / (H, W, 1),
    colour (H, W, 3) or with alpha (H, W, 4), channels in ``color_order`` ("bgr" or "rgb")."""
    if color_order not in ("bgr", "rgb"):
        raise ValueError(f"color_order must be 'bgr' or 'rgb'; got {color_order!r}.")
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image))
    if isinstance(image, Image.Image):
        return _pil_pixels(image, f"the PIL image ({image.mode}, {image.width}x{image.height})")
    if not isinstance(image, np.ndarray):
        raise ImageError(f"An image is a path, the bytes of an image file, a PIL image or a "
                         f"uint8 array; got {type(image).__name__}.")
    array = image
    if array.dtype != np.uint8:
        raise ImageError(f"An image array must be uint8; got {array.dtype} (scale floats in "
                         "0..1 by 255 and convert with .astype(np.uint8)); or pass a path, the "
                         "bytes of an image file or a PIL image.")
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
    if array is not None and array.dtype == np.uint8 and array.size and (
            array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1)):
        return array.reshape(array.shape[:2])  # already grey: no round trip through colour
    return cv2.cvtColor(as_bgr(image, color_order), cv2.COLOR_BGR2GRAY)
