"""Faces/s one face at a time, no TTA, for candidate models (a quick speed probe).

    python experiments/benchmark_batch1.py MODEL [MODEL ...] [--faces 1000] [--repeat 3]

Each MODEL is a shipped model's name, a model file (.pt / .onnx), a checkpoint or a run
directory. On the first ``--faces`` PrivateTest faces (``$FERLAB_DATA``), each model classifies
the faces one call per face (``predict_faces`` on one face, as a pipeline on a stream of photos
does), ``tta="none"``; printed: the median faces/s of ``--repeat`` passes, the models in turn
in every pass so that drift hits all alike. Accuracy is not the point here (an untrained
network's speed is its trained copy's): ``benchmark_inference.py`` measures both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from ferlab.data import load_faces
from ferlab.inference.recognizer import EmotionRecognizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--faces", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    faces = load_faces(os.environ.get("FERLAB_DATA", "data/fer2013")).select("test").faces
    faces = faces[: args.faces]
    recognizers = {m: EmotionRecognizer(m, tta="none") for m in args.models}
    rates: dict[str, list[float]] = {m: [] for m in args.models}
    for recognizer in recognizers.values():
        recognizer.predict_faces(faces[:10])  # warm-up
    for _ in range(max(1, args.repeat)):
        for model, recognizer in recognizers.items():
            start = time.perf_counter()
            for face in faces:
                recognizer.predict_faces(face[None])
            rates[model].append(len(faces) / (time.perf_counter() - start))
    for model in args.models:
        print(f"{model}: {statistics.median(rates[model]):.0f} faces/s one at a time "
              f"({recognizers[model].backend}, tta=none)")


if __name__ == "__main__":
    main()
