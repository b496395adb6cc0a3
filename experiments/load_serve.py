"""Load test of `python -m ferlab.serve` on loopback: N concurrent clients for T seconds each,
posting the same photos that ferlab's own pipeline (what `ferlab.predict` runs per photo) is
timed on in the same run. Starts its own server, stops it, talks to 127.0.0.1 only.

    python experiments/load_serve.py [--clients 1 2 4 8] [--seconds 15] [--model default]

Photos: FER2013 PrivateTest faces staged as 288 px JPEG photos (benchmark_inference.py's
staging; needs $FERLAB_DATA), else matplotlib's Grace Hopper portrait at 288-600 px. Prints,
per number of clients, requests/s, p50 / p99 latency and the errors by status, and photos/s
through the API against photos/s of `EmotionRecognizer.analyze` on the files in-process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import requests

from ferlab import EmotionRecognizer
from ferlab.data import load_faces
from ferlab.serve import Limits, launch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_inference import make_photos, stage_faces  # noqa: E402


def photos(folder: Path, count: int) -> list[Path]:
    try:
        test = load_faces(Path(os.environ.get("FERLAB_DATA", "data/fer2013"))).select("test")
    except FileNotFoundError:
        print("no FER2013 ($FERLAB_DATA): the portrait at four sizes instead")
        return make_photos(folder, count)
    pick = np.random.default_rng(0).permutation(len(test.labels))[:count]
    return stage_faces(folder, test.faces[pick])


def in_process(model: str, paths: list[Path], rounds: int = 3) -> float:
    """Photos/s of the recognizer on the files, as ferlab.predict runs it (median of rounds)."""
    recognizer = EmotionRecognizer(model)
    recognizer.analyze(paths[0])
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for path in paths:
            recognizer.analyze(path)
        rates.append(len(paths) / (time.perf_counter() - start))
    return float(np.median(rates))


def load(url: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """``clients`` threads posting the photos round robin for ``seconds``."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    lock, gate = threading.Lock(), threading.Barrier(clients)
    stop_at = [0.0]

    def client(offset: int) -> None:
        session, i = requests.Session(), offset
        gate.wait()
        while time.perf_counter() < stop_at[0]:
            start = time.perf_counter()
            try:
                status = session.post(f"{url}/v1/analyze", data=bodies[i % len(bodies)],
                                      timeout=60).status_code
            except requests.RequestException as err:
                status = type(err).__name__
            with lock:
                latencies.append(time.perf_counter() - start)
                statuses[status] += 1
            i += clients

    stop_at[0] = time.perf_counter() + seconds
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    ok = statuses.get(200, 0)
    return {"clients": clients, "requests_s": sum(statuses.values()) / elapsed,
            "photos_s": ok / elapsed, "p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "p99_ms": 1000 * float(np.percentile(latencies, 99)),
            "errors": {str(k): v for k, v in statuses.items() if k != 200}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--model", default="default")
    parser.add_argument("--workers", type=int, default=Limits.workers)
    parser.add_argument("--queue", type=int, default=Limits.queue)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    paths = photos(folder, args.photos)
    bodies = [p.read_bytes() for p in paths]
    alone = in_process(args.model, paths)
    print(f"{len(paths)} photos; EmotionRecognizer({args.model!r}).analyze in-process "
          f"(ferlab.predict's work per photo): {alone:.1f} photos/s")
    server, url = launch(["--model", args.model, "--workers", str(args.workers),
                          "--queue", str(args.queue)])
    limit = args.workers + args.queue
    try:
        print(f"ferlab.serve at {url}: {args.workers} workers, queue {args.queue} (503 beyond "
              f"{limit} requests at once)")
        for clients in args.clients:
            r = load(url, bodies, clients, args.seconds)
            print(f"  {clients:2d} clients: {r['requests_s']:6.1f} requests/s, "
                  f"{r['photos_s']:6.1f} photos/s ({r['photos_s'] / alone:.2f}x in-process), "
                  f"p50 {r['p50_ms']:6.1f} ms, p99 {r['p99_ms']:6.1f} ms, errors "
                  f"{r['errors'] or 0}{'' if clients <= limit else ' (above the limit)'}",
                  flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
