"""Train a model: ``python -m ferlab.train model=vgg9 trainer.devices=1`` (see conf/train.yaml).

The command line: a run's recorded overrides for ``resume=``, the run directory's checks and
lock before Hydra writes there, and one line and exit status 2 for a user's error. The work is
:func:`ferlab.training.train`, imported when a run starts (``--help`` needs none of it)."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ferlab import rundir
from ferlab.config import (
    CONFIG_DIR,
    override_value,
    register_resolvers,
    resume_argument,
    run_dir,
    with_run_overrides,
)

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and optionally test) the configured model; return the final metrics
    (:func:`ferlab.training.train`)."""
    from ferlab.training import train as run_training

    return run_training(cfg)


def _run(cfg: DictConfig) -> float | None:
    if cfg.get("resume") and HydraConfig.initialized():
        log.info("Resuming %s with the overrides %s (the run's own, then this command's)",
                 cfg.resume, " ".join(HydraConfig.get().overrides.task))
    sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if sweep:  # a sweep job's log is kept whatever happens (job.json says why a job failed)
        rundir.start_writing()
    try:
        metrics = train(cfg)
    except BaseException as err:
        if cfg.get("resume"):
            _forget_this_sitting()
        from ferlab.training import USER_ERRORS

        user_error = isinstance(err, USER_ERRORS) and os.environ.get("HYDRA_FULL_ERROR") != "1"
        if not user_error:
            rundir.start_writing()  # an unexpected failure: keep its log for the diagnosis
        elif not sweep and not rundir.started() and not cfg.get("resume"):
            _HELD.close()  # the lock on the folder goes first
            rundir.forget_refused_command(cfg.paths.runs)
        if sweep or not user_error:
            raise  # a sweep: Hydra records the job as failed (job.json says why) and goes on
        log.error("%s", err)
        sys.exit(2)
    return metrics.get(cfg.get("optimized_metric", "val/acc_best"))


def _forget_this_sitting() -> None:
    """A resume that fails leaves no record: its .hydra-resumed-* folder would be replayed by
    every later resume= of the run."""
    if not HydraConfig.initialized() or not HydraConfig.get().output_subdir:
        return
    record = Path(HydraConfig.get().runtime.output_dir) / HydraConfig.get().output_subdir
    if record.name.startswith(".hydra-resumed-") and record.is_dir():
        shutil.rmtree(record)


_HELD = ExitStack()  # the run directory's lock, taken before Hydra writes there, till exit
atexit.register(_HELD.close)


def _check_run_directory(args: list[str]) -> None:
    """Before Hydra writes its record into the run directory: resume= must name a run (a
    mistyped path must not get a directory), a new run's hydra.run.dir must not hold one, and
    no other process may be running there (its lock is taken now and held to the end)."""
    if "-m" in args or "--multirun" in args:
        return  # sweep jobs are checked by train() itself
    resume = resume_argument(args)
    try:
        if resume is not None:
            from ferlab.artifacts import find_checkpoint

            run = Path(run_dir(resume, ""))
            locked = (run / rundir.LOCK_NAME).exists()  # a run: one still running is said first
            if locked:
                _HELD.enter_context(rundir.hold(run))
            find_checkpoint(resume)  # before a lock file goes into a folder that is not a run
            if not locked:
                _HELD.enter_context(rundir.hold(run))
        elif (run := override_value(args, "hydra.run.dir")) is not None:
            rundir.refuse_to_overwrite(Path(run))
            _HELD.enter_context(rundir.hold(Path(run)))
    except (FileNotFoundError, FileExistsError, ValueError, rundir.RunDirectoryInUse) as err:
        print(f"error: resume={resume}: {err}" if resume and not isinstance(err, ValueError)
              else f"error: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    register_resolvers()
    rundir.check_output_folder(sys.argv[1:])
    try:  # resume=<run dir> brings its recipe back (checked before anything is written)
        args = with_run_overrides(sys.argv[1:])
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    _check_run_directory(sys.argv[1:])
    sys.argv[1:] = args
    hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")(_run)()


if __name__ == "__main__":
    main()
