"""A run directory belongs to one run at a time: an OS file lock held for the run's life.

The lock is ``fcntl``/``flock`` based (filelock): the OS releases it when its process ends,
however it ends, so a killed run never blocks the next one. Under DDP only the first process
locks; the others are started by it into the same directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ferlab.config import override_value

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


def refuse_to_overwrite(output_dir: Path) -> None:
    """A new run never writes over the checkpoints of an earlier one in the same directory."""
    held = sorted((output_dir / "checkpoints").glob("*.ckpt"))
    if held:
        raise FileExistsError(
            f"{output_dir} already holds a run ({len(held)} checkpoint(s), e.g. {held[-1].name}); "
            f"continue it with resume={output_dir}, train into another directory "
            "(hydra.run.dir=...), or delete it first.")


def _holder(run_dir: Path) -> str:
    try:
        holder = json.loads((run_dir / HOLDER_NAME).read_text())
        return (f"pid {holder['pid']} on {holder['host']}, since {holder['started']}: "
                f"{holder['command']}")
    except (OSError, ValueError, KeyError):
        return "a process that has not said who it is yet"


# --- what a refused command leaves: nothing ---------------------------------------------------
class RunLog(logging.FileHandler):
    """A command's log file in its run directory (Hydra's job log, ``train.log``), written only
    once the command is under way (:func:`start_writing`): records before that wait in memory,
    so that a command refused at its checks adds nothing to a run directory."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None) -> None:
        super().__init__(filename, mode, encoding, delay=True)
        self.pending: list[logging.LogRecord] | None = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.pending is not None:
            self.pending.append(record)
        else:
            super().emit(record)

    def commit(self) -> None:
        pending, self.pending = self.pending, None
        for record in pending or ():
            super().emit(record)


def start_writing() -> None:
    """The command passed its checks: its log goes to its file from now on (earlier lines
    first)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, RunLog):
            handler.commit()


def started() -> bool:
    """Whether :func:`start_writing` has run (no run log at all counts as started)."""
    logs = [h for h in logging.getLogger().handlers if isinstance(h, RunLog)]
    return not logs or any(h.pending is None for h in logs)


def forget_refused(run_dir: str | os.PathLike, record: str | None,
                   keep: str | os.PathLike | None = None) -> None:
    """Remove what a refused new command wrote in ``run_dir``: Hydra's ``record`` folder, the
    lock files, and then every folder left empty from ``run_dir`` up to, not including,
    ``keep``. Nothing else is touched (a folder holding anything else stays)."""
    run_dir = Path(run_dir)
    if record and (run_dir / record).is_dir():
        shutil.rmtree(run_dir / record)
    for name in (HOLDER_NAME, LOCK_NAME):
        (run_dir / name).unlink(missing_ok=True)
    keep = Path(keep).resolve() if keep is not None else None
    folder = run_dir.resolve()
    while folder != keep and folder.parent != folder:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            break
        folder = folder.parent


# whether the runs folder existed when the command started (a refused command that made it
# removes it again)
_RUNS_EXISTED: dict[str, bool] = {}


def check_output_folder(args: list[str]) -> None:
    """Before Hydra makes any folder: note whether the runs folder exists (a refused command
    that made it removes it again), and refuse, in one line, a run folder that cannot be made
    (a parent that is a file, or one this user may not write in)."""
    runs = override_value(args, "paths.runs") or "runs"
    _RUNS_EXISTED[str(Path(runs))] = Path(runs).exists()
    sweep = "-m" in args or "--multirun" in args
    target = Path(override_value(args, "hydra.sweep.dir" if sweep else "hydra.run.dir") or runs)
    target = target.expanduser().absolute()
    existing = next(p for p in (target, *target.parents) if p.exists() or p == p.parent)
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"this user may not write in {existing}"
    if problem:
        print(f"error: cannot make the output folder {target}: {problem}. Choose another with "
              "paths.runs=<folder> (or hydra.run.dir=<folder>).", file=sys.stderr)
        sys.exit(2)


def forget_refused_command(runs: str | os.PathLike) -> None:
    """A single command (not a sweep job) refused at its checks leaves nothing: the folders
    Hydra made for it go (its record, then each folder left empty up to the runs folder, that
    one too if the command made it); a folder named by hydra.run.dir goes only if empty."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    run = Path(HydraConfig.get().runtime.output_dir)
    runs = Path(runs)
    named = not run.resolve().is_relative_to(runs.resolve())  # hydra.run.dir=<elsewhere>
    if named:
        keep = run.parent
    else:
        keep = runs if _RUNS_EXISTED.get(str(runs), True) else runs.parent
    forget_refused(run, HydraConfig.get().output_subdir, keep=keep)
