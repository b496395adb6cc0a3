"""How right is the photo pipeline on real photographs, against a naive crop?

    python experiments/benchmark_photos.py [--photos DIR] [--model default] [--repeat 3]

On labelled photographs with one face each (by default the Yale faces of the development photos,
``../shared/data/photos_dev/yalefaces``: happy, normal -> neutral, sad, surprised; the sad photo
that is byte for byte a neutral one is left out, as its MANIFEST says), three pipelines with the
same model and the same class prior:

- ``analyze``: ``EmotionRecognizer(model).analyze(photo)``, the largest face (ferlab's pipeline);
- ``naive``: OpenCV's Haar defaults on the full-size grey photo (``detectMultiScale(grey, 1.1, 5,
  minSize=(30, 30))``), the largest face, ``INTER_AREA`` to 48 px, then the same recognizer's
  ``predict_faces``: the usual hand-written pipeline.

Printed per pipeline: faces found, correct, accuracy, and photos/s (decode, detect, crop,
classify; the median of ``--repeat`` passes, one photo at a time, one thread pool as ferlab's
defaults set it). Nothing is tuned on these photos' labels: they are 59 faces of 15 people.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from ferlab.inference.images import read_image
from ferlab.inference.recognizer import EmotionRecognizer

CONDITIONS = {"happy": "happy", "normal": "neutral", "sad": "sad", "surprised": "surprise"}
DEFAULT_PHOTOS = Path(__file__).resolve().parents[1] / ".." / "shared/data/photos_dev/yalefaces"


def labelled_photos(folder: Path) -> list[tuple[Path, str]]:
    """(photo, class) for the expression conditions, byte-identical duplicates left out."""
    seen, photos = set(), []
    for path in sorted(folder.iterdir()):
        condition = path.name.rsplit(".", 1)[-1]
        if condition not in CONDITIONS:
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        photos.append((path, CONDITIONS[condition]))
    return photos


def naive_face(path: Path, cascade: cv2.CascadeClassifier) -> np.ndarray | None:
    grey = read_image(path, grey=True)
    found = cascade.detectMultiScale(grey, 1.1, 5, minSize=(30, 30))
    if len(found) == 0:
        return None
    x, y, w, h = max(found, key=lambda b: b[2] * b[3])
    return cv2.resize(grey[y:y + h, x:x + w], (48, 48), interpolation=cv2.INTER_AREA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--record", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    photos = labelled_photos(args.photos)
    recognizer = EmotionRecognizer(args.model)
    classes = recognizer.classes
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades)
                                        / "haarcascade_frontalface_default.xml"))

    def by_analyze(path: Path) -> str | None:
        faces = recognizer.analyze(path)
        return faces[0]["label"] if faces else None

    def by_naive(path: Path) -> str | None:
        face = naive_face(path, cascade)
        if face is None:
            return None
        return classes[int(recognizer.predict_faces(face[None]).argmax())]

    results = {}
    for name, pipeline in (("analyze", by_analyze), ("naive", by_naive)):
        times, labels = [], []
        for _ in range(max(1, args.repeat)):
            start = time.perf_counter()
            labels = [pipeline(path) for path, _ in photos]
            times.append(time.perf_counter() - start)
        found = sum(label is not None for label in labels)
        correct = sum(label == truth for label, (_, truth) in zip(labels, photos))
        results[name] = {"photos": len(photos), "found": found, "correct": correct,
                         "accuracy": round(correct / len(photos), 4),
                         "photos_per_s": round(len(photos) / statistics.median(times), 1),
                         "wrong": sorted(p.name for (p, truth), label in zip(photos, labels)
                                         if label != truth)}
        r = results[name]
        print(f"{name:14s} found {found}/{len(photos)}  correct {correct}  acc {r['accuracy']:.4f}"
              f"  {r['photos_per_s']:.1f} photos/s")
    if args.record:
        args.record.write_text(json.dumps({"model": args.model, "prior": recognizer.prior,
                                           "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
