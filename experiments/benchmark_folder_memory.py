"""How much memory does training on a large folder set take?

    python experiments/benchmark_folder_memory.py [--faces 300000] [--work DIR] [--batches 200]

Writes a generated folder set of ``--faces`` 48x48 grey PNG faces (seven class folders) under
``--work``, then runs ``python -m ferlab.train data=folder`` on it as a user would (vgg8_gap_tiny,
one epoch of ``--batches`` batches of 128 faces drawn at random from the whole set, validation
on the set's val split), sampling the process's memory from /proc every 0.2 s. The first run
decodes the set into ferlab's uint8 cache (a .npy file the runs read memory-mapped); a second
run reads the cache only. Printed: the faces' size as an array, and per run the peak resident
memory split into anonymous memory (the process's own: what a set held in memory would add
to) and file-backed pages (the mapped cache's pages the kernel keeps while there is room and
drops when memory is short), with the wall time. ``--limit-mb`` instead runs the training once
inside a cgroup (v1 memory controller; root) whose limit counts the process's memory and its page
cache together, set below what the faces held in memory would need; the page cache is dropped
first, so that the cgroup is charged for every page of the cache (and of the libraries) it reads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def write_set(root: Path, faces: int, seed: int = 0) -> None:
    """``faces`` noisy 48x48 PNGs with a class-coded bar, spread over the seven class folders."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(faces):
        label = i % len(CLASSES)
        face = rng.integers(40, 120, size=(48, 48), dtype=np.uint8)
        face[4 + label * 6:9 + label * 6, 6:42] = 230
        cv2.imwrite(str(root / CLASSES[label] / f"{i:07d}.png"), face)


def memory(pid: int) -> dict[str, int]:
    """RssAnon, RssFile and VmRSS of a process, in kB."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmRSS"):
                fields[key] = int(value.split()[0])
    return fields


CGROUPS = Path("/sys/fs/cgroup/memory")


def run(command: list[str], cwd: Path, env: dict, cgroup: Path | None = None
        ) -> dict[str, float]:
    """Run ``command`` (in ``cgroup``), sampling its memory; peak MB of each field and the wall
    time."""
    start = time.perf_counter()

    def enter() -> None:
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, preexec_fn=enter)
    peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    while process.poll() is None:
        try:
            for key, value in memory(process.pid).items():
                peak[key] = max(peak[key], value)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.2)
    _, err = process.communicate()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{err[-3000:]}")
    return {**{k: v / 1024 for k, v in peak.items()}, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=300_000)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--limit-mb", type=int, default=0,
                        help="train once in a cgroup limited to this many MB instead (0: not)")
    parser.add_argument("--work", type=Path, default=None,
                        help="where the set, its cache and the runs go (default: a temp folder, "
                             "removed afterwards)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ferlab-folder-memory-"))
    try:
        root = work / "faces"
        if not root.is_dir():
            start = time.perf_counter()
            write_set(root, args.faces)
            print(f"wrote {args.faces:,} PNG faces in {time.perf_counter() - start:.0f} s")
        print(f"faces as a uint8 array: {args.faces * 48 * 48 / 2**20:.0f} MB")
        env = {**os.environ, "FERLAB_CACHE": str(work / "cache")}
        command = [sys.executable, "-m", "ferlab.train", "data=folder", f"data.root={root}",
                   "model=vgg8_gap_tiny", "trainer.max_epochs=1", "test=false",
                   f"trainer.limit_train_batches={args.batches}", "trainer.limit_val_batches=20",
                   f"paths.runs={work / 'runs'}"]
        labels = ("first run (decodes into the cache)", "second run (the cache only)")
        for label in labels if not args.limit_mb else ():
            peak = run(command, work, env)
            print(f"{label}: peak RSS {peak['VmRSS']:.0f} MB = anonymous {peak['RssAnon']:.0f} "
                  f"MB + file-backed {peak['RssFile']:.0f} MB; {peak['seconds']:.0f} s")
        if args.limit_mb:
            cgroup = CGROUPS / f"ferlab-benchmark-{os.getpid()}"
            cgroup.mkdir()
            try:
                (cgroup / "memory.limit_in_bytes").write_text(str(args.limit_mb * 2**20))
                os.sync()
                Path("/proc/sys/vm/drop_caches").write_text("1")
                peak = run(command, work, env, cgroup)
                used = int((cgroup / "memory.max_usage_in_bytes").read_text()) / 2**20
                print(f"in a cgroup limited to {args.limit_mb} MB (memory and page cache): "
                      f"trained; the cgroup's peak {used:.0f} MB, the process's peak RSS "
                      f"{peak['VmRSS']:.0f} MB = anonymous {peak['RssAnon']:.0f} MB + "
                      f"file-backed {peak['RssFile']:.0f} MB; {peak['seconds']:.0f} s")
            finally:
                cgroup.rmdir()
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
