"""Does the face crop ferlab takes from a detection match FER2013's framing?

    python experiments/benchmark_framing.py [--faces 3589] [--model default] [--record F.json]

Figures of 2026-12-04: experiments/framing/README.md.

FER2013's faces are registered tightly; a Haar box is not the same box. Each PrivateTest face is
staged as the inference benchmark stages it (enlarged 3x, inside a frame twice its size, as a
JPEG), found with ferlab's default detector, and cropped from the detector's box with several
margins (``EmotionRecognizer(margin=)``: the box squared and grown by that share of its side on
each edge) and vertical offsets (the crop moved by that share of its side, + is down). Printed:
where the detector's box lies against the true face (side ratio, centre offset), and for each
crop the accuracy on the faces found (the model as trained, flip TTA), beside the accuracy on
the 48x48 faces themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from benchmark_inference import stage_faces  # experiments/benchmark_inference.py, beside this

from ferlab.data import load_faces, to_face
from ferlab.inference.detect import Box, crop, face_crop_box, make_detector
from ferlab.inference.recognizer import EmotionRecognizer

MARGINS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
OFFSETS = (-0.1, -0.05, 0.05, 0.1)  # at the default margin


def shifted(box: Box, offset: float) -> Box:
    """The box moved down by ``offset`` of its side (up when negative)."""
    return Box(box.x, box.y + round(offset * box.h), box.w, box.h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=3589, help="PrivateTest faces to stage")
    parser.add_argument("--model", default="default")
    parser.add_argument("--record", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    test = load_faces(os.environ.get("FERLAB_DATA", "data/fer2013")).select("test")
    pick = np.random.default_rng(0).permutation(len(test.labels))[:args.faces]
    faces, labels = test.faces[pick], test.labels[pick]
    recognizer = EmotionRecognizer(args.model, tta="flip", prior="train", batch_size=64)
    detector = make_detector("haar")  # EmotionRecognizer's and ferlab.predict's default

    def accuracy(crops: list[np.ndarray], truth: np.ndarray) -> float:
        probs = recognizer.predict_faces(np.stack([to_face(c) for c in crops]))
        return float((probs.argmax(1) == truth).mean())

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        paths = stage_faces(Path(folder), faces)
        greys = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    found, boxes = [], []
    for i, grey in enumerate(greys):
        detected = sorted(detector.detect(grey), key=lambda b: b.area, reverse=True)
        if detected:
            found.append(i)
            boxes.append(detected[0])
    found = np.array(found)
    truth_side, truth_centre = 3 * 48, 1.5 * 48 + 3 * 48 / 2  # the staged face's own square
    sides = np.array([max(b.w, b.h) for b in boxes]) / truth_side
    dx = np.array([(b.x + b.w / 2 - truth_centre) for b in boxes]) / truth_side
    dy = np.array([(b.y + b.h / 2 - truth_centre) for b in boxes]) / truth_side
    record = {"faces": len(faces), "found": len(found), "model": args.model,
              "box_side_over_face": float(np.median(sides)),
              "box_centre_offset": [float(np.median(dx)), float(np.median(dy))],
              "acc_48px_faces_found": accuracy(list(faces[found]), labels[found]),
              "acc_48px_all": accuracy(list(faces), labels), "crops": []}
    print(f"{len(found)} of {len(faces)} staged PrivateTest faces found "
          f"({time.perf_counter() - start:.0f} s to stage and detect)")
    print(f"detector box vs the true face: side x{record['box_side_over_face']:.3f} (median), "
          f"centre offset x {np.median(dx):+.3f}, y {np.median(dy):+.3f} of the face's side")
    print(f"accuracy on the 48x48 faces themselves: {record['acc_48px_faces_found']:.4f} "
          f"(the found ones), {record['acc_48px_all']:.4f} (all)")
    variants = [(m, 0.0) for m in MARGINS] + [(0.1, o) for o in OFFSETS]
    print(f"{'margin':>7} {'offset':>7} {'crop side / face':>17} {'accuracy':>9}")
    for margin, offset in variants:
        crops, ratio = [], []
        for i, box in zip(found, boxes):
            square = face_crop_box(shifted(box, offset), greys[i].shape, margin)
            crops.append(crop(greys[i], square))
            ratio.append(square.w / truth_side)
        acc = accuracy(crops, labels[found])
        record["crops"].append({"margin": margin, "offset": offset, "acc": acc,
                                "crop_side_over_face": float(np.median(ratio))})
        print(f"{margin:7.2f} {offset:+7.2f} {np.median(ratio):17.3f} {acc:9.4f}")
    if args.record:
        args.record.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
