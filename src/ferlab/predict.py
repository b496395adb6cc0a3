"""Emotions of the faces in photos and videos:

    python -m ferlab.predict photos/ 'shots/**/*.jpg' clip.mp4 --annotate out/ > faces.jsonl

One record per face (JSON lines or CSV) with the source, frame/time for videos, the box, the
label and every class probability. Bad inputs get an error record and never stop the batch;
the exit status is 1 when any input failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

import cv2
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ferlab.artifacts import SHIPPED_ENSEMBLES, SHIPPED_MODELS
from ferlab.data.transforms import TTA_MODES
from ferlab.inference.annotate import annotate
from ferlab.inference.detect import (
    CROP_MARGIN,
    DETECTORS,
    HAAR_MAX_SIDE,
    HAAR_MIN_NEIGHBORS,
    HAAR_MIN_SIZE,
    HAAR_SCALE_FACTOR,
    make_detector,
)
from ferlab.inference.images import MAX_PIXELS, ImageError, read_image
from ferlab.inference.inputs import Input, VideoError, expand_inputs, read_video
from ferlab.inference.recognizer import PRECISIONS, EmotionRecognizer
from ferlab.inference.runtime import BACKENDS
from ferlab.priors import NAMED_PRIORS

log = logging.getLogger(__name__)
SHIPPED = (*SHIPPED_MODELS, *SHIPPED_ENSEMBLES)
# annotated copies keep these formats; any other image (a GIF, a PGM ...) is written as PNG
KEEP_FORMAT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _number(kind: type, low: float, inclusive: bool = True):
    """An argparse type: ``kind`` (int or float) at least ``low`` (above it when not
    ``inclusive``), so a bad value is refused up front with the option's name."""
    bound = f">= {low}" if inclusive else f"> {low}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not (value >= low if inclusive else value > low):  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be {bound}; got {text}")
        return value

    return parse


COUNT, POSITIVE_INT = _number(int, 0), _number(int, 1)
NON_NEGATIVE, POSITIVE = _number(float, 0), _number(float, 0, inclusive=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ferlab.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image or video files, folders (recursive) or glob patterns")
    p.add_argument("--model", action="append",
                   help="model file, ONNX file, checkpoint or run directory, or the name of a "
                        f"model shipped with ferlab ({', '.join(SHIPPED)}; default: default); "
                        "give it twice or more to average the models (an ensemble)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="the engine: auto (ONNX Runtime on a CPU, else PyTorch), torch or "
                        "onnxruntime")
    p.add_argument("--prior", choices=NAMED_PRIORS, default=None,
                   help="the class mix the probabilities assume: uniform (the default for "
                        "models that record their training mix: every emotion alike, since "
                        "photos are not FER2013's mix) or train (the mix the model trained on, "
                        "as its FER2013 figures)")
    p.add_argument("--detector", choices=list(DETECTORS), default="haar",
                   help="haar (OpenCV), blazeface (MediaPipe's, on LiteRT: several times "
                        "faster, for portraits) or mtcnn (slow; turned and small faces)")
    p.add_argument("--min-face", type=POSITIVE_INT, default=HAAR_MIN_SIZE,
                   help="smallest face side in pixels")
    p.add_argument("--scale-factor", type=_number(float, 1, inclusive=False),
                   default=HAAR_SCALE_FACTOR, help="Haar pyramid step")
    p.add_argument("--min-neighbors", type=COUNT, default=HAAR_MIN_NEIGHBORS,
                   help="Haar detection strictness")
    p.add_argument("--detect-size", type=COUNT, default=HAAR_MAX_SIDE, metavar="PIXELS",
                   help="Haar scans images shrunk to this longer side (faster on large photos; "
                        "faces under 24 px there are missed); 0 scans at full resolution")
    p.add_argument("--margin", type=NON_NEGATIVE, default=CROP_MARGIN,
                   help="context around the face box, as a fraction of its side (default "
                        f"{CROP_MARGIN:g}: FER2013's own framing, measured)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=POSITIVE_INT, help="CPU threads for the network")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: about 2x faster on CPUs with native bf16 (AVX512-BF16, AMX)")
    p.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: the "
                                                   "model's own setting)")
    p.add_argument("--top-k", type=COUNT, default=2, help="also list the k most likely emotions")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("--output", "-o", type=Path, help="write records here instead of stdout")
    p.add_argument("--overwrite", action="store_true", help="allow replacing --output")
    p.add_argument("--fps", type=POSITIVE, default=1.0, help="video frames sampled per second")
    p.add_argument("--annotate", type=Path, metavar="DIR",
                   help="write annotated copies (and annotated videos) into DIR")
    p.add_argument("--feature-maps", type=Path, metavar="DIR",
                   help="save each face's feature maps after every pooling stage into DIR")
    p.add_argument("--max-pixels", type=POSITIVE_INT, default=MAX_PIXELS,
                   help="refuse images larger than this (decompression bombs)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="show a refused model's traceback")
    return p


class RecordWriter:
    """Writes records as they come (flushed per input) in JSON lines or CSV."""

    def __init__(self, stream: TextIO, fmt: str, classes: tuple[str, ...]) -> None:
        self.stream, self.fmt, self.classes = stream, fmt, classes
        self.csv = None
        if fmt == "csv":
            self.fields = ["source", "frame", "time", "face", "status", "x", "y", "w", "h",
                           "label", "score", *[f"p_{c}" for c in classes], "top_k", "error"]
            self.csv = csv.DictWriter(stream, fieldnames=self.fields, extrasaction="ignore")
            self.csv.writeheader()

    def write(self, record: dict[str, Any]) -> None:
        if self.csv is None:
            self.stream.write(json.dumps(record) + "\n")
            return
        row = {k: record.get(k) for k in self.fields}
        if "box" in record:
            row.update(zip("xywh", record["box"]))
        for c, p in record.get("probabilities", {}).items():
            row[f"p_{c}"] = f"{p:.6f}"
        if "top_k" in record:
            row["top_k"] = ";".join(f"{t['label']}:{t['p']:.4f}" for t in record["top_k"])
        if isinstance(row.get("score"), float):
            row["score"] = f"{row['score']:.6f}"
        self.csv.writerow(row)

    def flush(self) -> None:
        self.stream.flush()


class Predictor:
    """Runs the recognizer over inputs and yields records; owns annotation and feature maps."""

    def __init__(self, recognizer: EmotionRecognizer, args: argparse.Namespace,
                 protected: set[Path]) -> None:
        self.recognizer, self.args = recognizer, args
        self.protected = protected  # inputs: never written to
        self.used_names: set[Path] = set()

    def records(self, item: Input) -> Iterator[dict[str, Any]]:
        if item.missing:
            raise ImageError(f"{item.path}: no such file, folder or matching pattern.")
        if item.error is not None:
            raise ImageError(item.error)
        if item.is_video:
            yield from self._video(item.path)
        else:
            grey = not self.args.annotate and not self.recognizer.needs_color  # colour to draw on
            image = read_image(item.path, max_pixels=self.args.max_pixels, grey=grey)
            found = self.recognizer.detect_faces(image)
            faces = self.recognizer.describe(found)
            self._annotate_image(item.path, image, faces)
            self._feature_maps(item.path, found)
            yield from self._face_records({"source": str(item.path)}, faces)

    def _video(self, path: Path) -> Iterator[dict[str, Any]]:
        frames, fps = read_video(path, self.args.fps)
        writer = None
        try:
            for frame in frames:
                faces = self.recognizer.analyze(frame.image)
                if self.args.annotate:
                    if writer is None:
                        target = self._output_name(path, ".mp4")
                        h, w = frame.image.shape[:2]
                        writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"),
                                                 min(self.args.fps, fps), (w, h))
                    writer.write(annotate(frame.image, faces))
                base = {"source": str(path), "frame": frame.index, "time": round(frame.time, 3)}
                yield from self._face_records(base, faces)
        finally:
            if writer is not None:
                writer.release()

    def _face_records(self, base: dict[str, Any], faces: list[dict]) -> Iterator[dict]:
        if not faces:
            yield {**base, "status": "no_face"}
        k = max(0, min(self.args.top_k, len(self.recognizer.classes)))
        for i, face in enumerate(faces):
            record = {**base, "face": i, "status": "ok", **face}
            if k:
                ranked = sorted(face["probabilities"].items(), key=lambda kv: -kv[1])[:k]
                record["top_k"] = [{"label": c, "p": p} for c, p in ranked]
            yield record

    def _annotate_image(self, path: Path, image, faces) -> None:
        if self.args.annotate:
            # the input's format (a JPEG stays a JPEG, at a quality that keeps the labels sharp)
            suffix = path.suffix.lower() if path.suffix.lower() in KEEP_FORMAT else ".png"
            target = self._output_name(path, suffix)
            params = [cv2.IMWRITE_JPEG_QUALITY, 92] if suffix in (".jpg", ".jpeg") else []
            if not cv2.imwrite(str(target), annotate(image, faces), params):
                raise ImageError(f"{target}: could not write the annotated image.")

    def _feature_maps(self, path: Path, found: list) -> None:
        if not self.args.feature_maps:
            return
        from ferlab.inference.feature_maps import save_feature_maps  # torchvision: ~1.5 s

        for i, (_, face) in enumerate(found):
            target = self._output_name(path, f".face{i}.png", self.args.feature_maps)
            save_feature_maps(self.recognizer.network, face, target)

    def _output_name(self, source: Path, suffix: str, folder: Path | None = None) -> Path:
        """A new file in the output folder: never an input, never an existing file."""
        folder = folder or self.args.annotate
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{source.stem}.annotated" if folder == self.args.annotate else source.stem
        n = 0
        while True:
            name = f"{stem}{suffix}" if n == 0 else f"{stem}-{n}{suffix}"
            target = folder / name
            key = target.resolve()
            if not target.exists() and key not in self.protected and key not in self.used_names:
                self.used_names.add(key)
                return target
            n += 1


def run(args: argparse.Namespace, stdout: TextIO = sys.stdout,
        stderr: TextIO = sys.stderr) -> int:
    """Process every input; the exit status is 1 if any input failed, else 0."""
    if args.threads:
        torch.set_num_threads(args.threads)
    inputs = expand_inputs(args.inputs)
    protected = {item.path.resolve() for item in inputs if not item.missing and item.error is None}
    if args.output is not None:
        if args.output.resolve() in protected:
            raise SystemExit(f"error: --output {args.output} is one of the inputs.")
        if args.output.exists() and not args.overwrite:
            raise SystemExit(f"error: {args.output} exists; pass --overwrite to replace it.")
    detector_args = {"min_size": args.min_face}
    if args.detector == "haar":
        detector_args |= {"scale_factor": args.scale_factor, "min_neighbors": args.min_neighbors,
                          "max_side": args.detect_size}
    try:
        detector = make_detector(args.detector, **detector_args)
    except ImportError as err:  # an optional detector that is not installed: how to install it
        raise SystemExit(f"error: --detector {args.detector}: {err}") from None
    try:
        model = args.model[0] if args.model and len(args.model) == 1 else args.model
        recognizer = EmotionRecognizer(model, device=args.device, tta=args.tta,
                                       detector=detector, margin=args.margin,
                                       precision=args.precision, backend=args.backend,
                                       prior=args.prior)
        if args.feature_maps:
            recognizer.network  # noqa: B018 (refuses a model without PyTorch layers, up front)
    except (FileNotFoundError, ValueError) as err:  # a bad --model: say so, no traceback
        if args.debug:
            raise
        raise SystemExit(f"error: {err}") from None
    predictor = Predictor(recognizer, args, protected)
    console = Console(file=stderr, soft_wrap=True)  # keep paths whole in logs
    files = faces = 0
    failures: list[str] = []
    with ExitStack() as stack:
        stream = stdout
        if args.output is not None:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            stream = stack.enter_context(open(args.output, "w", newline=""))
        writer = RecordWriter(stream, args.format, recognizer.classes)
        progress = stack.enter_context(Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, disable=args.no_progress, transient=True))
        task = progress.add_task("faces", total=len(inputs))
        for item in inputs:
            progress.update(task, description=item.path.name[:40])
            files += 1
            try:
                for record in predictor.records(item):
                    faces += record.get("status") == "ok"
                    writer.write(record)
            except (ImageError, VideoError, OSError, cv2.error) as err:
                failures.append(str(err))
                writer.write({"source": str(item.path), "status": "error", "error": str(err)})
                console.print(f"[red]error[/red] {err}", highlight=False)
            writer.flush()
            progress.advance(task)
    console.print(f"{files} inputs, {faces} faces, {len(failures)} failed", highlight=False)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    try:
        return run(build_parser().parse_args(argv))
    except SystemExit as stop:
        if isinstance(stop.code, str):  # a refused option or model: its message, status 2
            print(stop.code, file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
