"""A run directory belongs to one run at a time: an OS file lock held for the run's life.

The lock is ``fcntl``/``flock`` based (filelock): the OS releases it when its process ends,
however it ends, so a killed run never blocks the next one. Under DDP only the first process
locks; the others are started by it into the same directory.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

LOCK_NAME = ".ferlab.lock"
HOLDER_NAME = ".ferlab.lock.json"  # who holds the lock (the lock file itself is not for reading)


class RunDirectoryInUse(RuntimeError):
    """Another live process holds the run directory."""


def _is_other_rank() -> bool:
    """A process that a DDP launcher (Lightning, SLURM, torchrun) started beside the first."""
    return any(os.environ.get(k, "0") not in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK",
                                                                "RANK", "SLURM_PROCID"))


@contextmanager
def hold(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (re-entrant within a process); refuse, naming the
    holder, when another process holds it."""
    run_dir = Path(run_dir)
    if _is_other_rank():
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK_NAME, is_singleton=True, thread_local=False)
    first = not lock.is_locked
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunDirectoryInUse(
            f"{run_dir} is in use by another run ({_holder(run_dir)}); wait for it to end, or "
            "train into another directory. A run that was killed holds nothing: the lock goes "
            "with its process.") from None
    try:
        if first:
            (run_dir / HOLDER_NAME).write_text(json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)}) + "\n")
        yield
    finally:
        lock.release()
        if first and not lock.is_locked:
            (run_dir / HOLDER_NAME).unlink(missing_ok=True)


def _holder(run_dir: Path) -> str:
    try:
        holder = json.loads((run_dir / HOLDER_NAME).read_text())
        return (f"pid {holder['pid']} on {holder['host']}, since {holder['started']}: "
                f"{holder['command']}")
    except (OSError, ValueError, KeyError):
        return "a process that has not said who it is yet"
