"""Images and videos as users have them: deep and float pixels, huge files, pipes, bytes,
empty arrays, truncated videos."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from ferlab.inference.images import ImageError, decode_image, read_image
from ferlab.inference.inputs import read_video
from ferlab.inference.recognizer import EmotionRecognizer


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(ramp.astype(np.float32), mode="F").save(tmp_path / "float.tif")
    expected = np.rint(ramp * 255)
    for name in ("deep.png", "float.tif"):
        grey = read_image(tmp_path / name, grey=True)
        assert grey.dtype == np.uint8 and np.abs(grey - expected).max() <= 1, name
        assert read_image(tmp_path / name).shape == (64, 64, 3)
    Image.fromarray((ramp * 1000 - 500).astype(np.float32), mode="F").save(tmp_path / "odd.tif")
    with pytest.raises(ImageError, match=r"odd.tif: its F pixels run from -500 to 500"):
        read_image(tmp_path / "odd.tif")


def test_a_deep_pil_image_gives_the_pixels_of_its_file(tmp_path, portrait):
    """analyze(PIL image) of a 16-bit or float image sees what the same pixels as a file give
    (Pillow's own convert clips them: no face at all)."""
    from ferlab.inference.images import as_bgr

    grey = np.asarray(Image.fromarray(portrait).convert("L"))
    deep = Image.fromarray(grey.astype(np.uint16) * 257)
    flat = Image.fromarray(grey.astype(np.float32) / 255)
    deep.save(tmp_path / "deep.png")
    from_file = read_image(tmp_path / "deep.png")
    for image in (deep, flat):
        assert np.abs(as_bgr(image).astype(int) - from_file).max() <= 1, image.mode
    recognizer = EmotionRecognizer()
    expected = recognizer.analyze(tmp_path / "deep.png")
    assert expected and [f["box"] for f in recognizer.analyze(deep)] == [
        f["box"] for f in expected]


def test_max_pixels_can_go_above_pillows_own_limit(tmp_path):
    side = 9500  # 90.25 MP: over Pillow's 89.5 MP bomb limit, under ferlab's default 100 MP
    Image.new("L", (side, side)).save(tmp_path / "big.png")
    assert read_image(tmp_path / "big.png", grey=True).shape == (side, side)
    with pytest.raises(ImageError, match=r"9500x9500 pixels is over the limit of 90,000,000"):
        read_image(tmp_path / "big.png", max_pixels=90_000_000)
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's limit is back for everyone else


def test_bytes_empty_arrays_and_other_objects(portrait):
    buffer = io.BytesIO()
    Image.fromarray(portrait).save(buffer, format="JPEG")
    recognizer = EmotionRecognizer()
    faces = recognizer.analyze(buffer.getvalue())  # the bytes of a JPEG file
    assert len(faces) == 1 and faces == recognizer.analyze(decode_image(buffer.getvalue()))
    for bad, message in [(np.zeros((0, 0), np.uint8), "must be non-empty"),
                         (b"", "bytes are empty"),
                         (b"GIF89a but not really", "not an image in a format Pillow reads"),
                         (np.zeros((8, 8), np.float32), "must be uint8"),
                         (3, "a path, the bytes of an image file, a PIL image")]:
        with pytest.raises(ImageError, match=message):
            recognizer.analyze(bad)


def test_pipes_in_a_folder_are_reported_and_skipped(tmp_path, portrait, tiny_model_file):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(portrait).save(folder / "photo.jpg")
    os.mkfifo(folder / "x.mp4")  # reading either would block for ever
    os.mkfifo(folder / "y.jpg")
    result = subprocess.run([sys.executable, "-m", "ferlab.predict", str(folder), "--model",
                             str(tiny_model_file)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1  # something failed: the two pipes
    assert result.stderr.count("not a regular file") == 2
    records = [r for r in result.stdout.splitlines() if r.strip()]
    assert any("photo.jpg" in r and '"box"' in r for r in records)


def test_a_truncated_video_says_how_many_frames_it_read(tmp_path, caplog):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(3):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    frames, _ = read_video(path, sample_fps=10)
    assert len(list(frames)) == 3
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * 0.75)])  # cut inside the last frame
    caplog.set_level(logging.WARNING, logger="ferlab")
    frames, _ = read_video(path, sample_fps=10)
    read = len(list(frames))
    assert read < 3
    assert f"read {read} of the 3 frames" in caplog.text
