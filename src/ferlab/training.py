"""The training run: from a composed config to a fitted (and tested) model and its metrics.

``ferlab.train`` is the command line around :func:`train`; this module holds the work (the
datamodule, module, callbacks and trainer built from the config, resume and init checks, fit,
test, metrics), so that the command's ``--help`` imports none of it."""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar, Timer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, ListConfig, OmegaConf

from ferlab import artifacts, rundir, trackers
from ferlab.artifacts import CONFIG_KEY, find_checkpoint, read_torch_file
from ferlab.callbacks import OptunaPruning, find_timer
from ferlab.checkpoint import AtomicCheckpointIO, ConfigInCheckpoint, RandomStateInCheckpoint
from ferlab.config import flatten, override_key
from ferlab.data.labels import class_names
from ferlab.data.sources import DataFormatError, DataNotFoundError
from ferlab.files import remove_stale_temps, write_json
from ferlab.losses import AveragedTeacher
from ferlab.precision import slow_bf16_reason
from ferlab.sweep import job_trial

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and optionally test) the configured model; return the final metrics. The run
    directory is locked for the run's life: a second run there is refused."""
    datamodule = instantiate(cfg.data)
    datamodule.check_source()  # fail fast, with where-to-get-it, before building anything
    if cfg.get("resume") and cfg.get("init_from"):
        raise ValueError("Set resume (continue a run: weights, optimiser, schedule, epoch) or "
                         "init_from (a new run starting from trained weights), not both.")
    output_dir = Path(cfg.paths.output_dir)
    with rundir.hold(output_dir):
        if not cfg.get("resume"):
            rundir.refuse_to_overwrite(output_dir)
        remove_stale_temps(output_dir / "checkpoints")  # a writer killed mid-checkpoint
        with _quiet_library_noise():
            return _train(cfg, output_dir, datamodule)


class _DropTips(logging.Filter):
    """Lightning's advertisements ("💡 Tip: ... litlogger") carry nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡")


@contextmanager
def _quiet_library_noise() -> Iterator[None]:
    """For the run only (nothing is changed for the rest of the process): Lightning's tips and a
    deprecation Lightning's own code triggers on current torch (pytree LeafSpec), which a user
    can do nothing about."""
    tips = _DropTips()
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch.utilities.rank_zero",
                                              "lightning.fabric.utilities.rank_zero")]
    for logger in loggers:
        logger.addFilter(tips)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(tips)


def _train(cfg: DictConfig, output_dir: Path, datamodule: L.LightningDataModule
           ) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))
    resume = find_checkpoint(cfg.resume) if cfg.get("resume") else None
    resumed = _read_resumed_checkpoint(resume) if resume is not None else None

    module = instantiate(cfg.module, model=_build_network(cfg),
                         teacher=_load_teacher(cfg.module.get("teacher"), cfg.data.num_classes))
    if cfg.get("init_from"):
        _init_weights(module.model, cfg.init_from, cfg.model, cfg.data.num_classes)
    progress_bar = _wants_progress_bar(cfg)
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    callbacks = [c for c in callbacks if progress_bar or not isinstance(c, ProgressBar)]
    callbacks += [ConfigInCheckpoint(cfg), RandomStateInCheckpoint()]
    trial = job_trial()  # a job of a pruned Optuna search reports to its trial every epoch
    if trial is not None:
        callbacks.append(OptunaPruning(trial, cfg.get("optimized_metric", "val/acc_best")))
    timer = find_timer(callbacks)
    loggers = trackers.build_loggers(cfg, output_dir, resumed=resume is not None)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                          enable_progress_bar=progress_bar, plugins=[AtomicCheckpointIO()],
                          **_validation_setting(cfg, callbacks))
    _check_precision(trainer, cfg)

    if resume is not None:
        _check_resume(resume, resumed, cfg, timer)
        _check_resumed_network(resume, resumed, module, cfg)
    # checked: from here on the run writes (its log, its TensorBoard events); a command refused
    # above added nothing to its run directory
    rundir.start_writing()
    if trainer.is_global_zero:  # the loggers of the other processes (DDP) are stand-ins
        trackers.start(trainer.loggers, cfg, output_dir)
    log.info("Model %s with %d parameters; output in %s", cfg.model._target_,
             module.num_parameters(), output_dir)
    # the training time of the sittings before this one (the Timer's state in the resumed
    # checkpoint, which _check_resume loaded; the Timer has not started, so this is its offset)
    carried = timer.time_elapsed() if timer is not None and resume is not None else 0.0
    start = time.perf_counter()
    with warnings.catch_warnings():
        if not trainer.limit_val_batches:  # the checkpoints' val/acc is then never logged
            warnings.filterwarnings("ignore", message=r".*could not find the monitored key")
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    fit_seconds = time.perf_counter() - start
    # over all sittings: the earlier ones' and this one's whole fit (set-up and sanity check
    # included, as fit_seconds: the Timer alone counts training steps, and a total read from it
    # came out below fit_seconds in an uninterrupted run)
    fit_seconds_total = carried + fit_seconds
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    diverged = [k for k, v in metrics.items() if k.endswith("loss") and not math.isfinite(v)]
    if diverged and not trainer.interrupted:
        # its accuracies would still read as numbers: a sweep must not rank the run among others
        if trainer.is_global_zero:
            write_json(output_dir / "metrics.json", {**metrics, "status": "diverged"})
        raise FloatingPointError(
            f"Training diverged: {', '.join(diverged)} is not finite after epoch "
            f"{trainer.current_epoch}. Lower module.optimizer.lr, or try "
            f"trainer.gradient_clip_val=1.0; the run's files are in {output_dir}.")

    paused = _time_is_up(timer) and trainer.current_epoch < trainer.max_epochs
    if paused:
        log.info("Stopped by callbacks.timer.duration after %d of %d epochs; the test waits for "
                 "the end of the run (resume=%s to go on).", trainer.current_epoch,
                 trainer.max_epochs, output_dir)
    if cfg.get("test") and not trainer.fast_dev_run and not trainer.interrupted and not paused:
        # the best checkpoint on val/acc; without validation, the last epoch's (last.ckpt)
        validated = bool(trainer.limit_val_batches)
        best = next((c.best_model_path for c in callbacks if isinstance(c, ModelCheckpoint)
                     and c.best_model_path and (c.monitor is not None) == validated), None)
        for result in trainer.test(module, datamodule=datamodule, ckpt_path=best):
            metrics.update({k: float(v) for k, v in result.items()})
        for name in getattr(datamodule, "test_sets", []):  # a mixture: each set's figures too
            datamodule.test_set = name
            for result in trainer.test(module, datamodule=datamodule, ckpt_path=best):
                metrics.update({k.replace("test/", f"test/{name}/", 1): float(v)
                                for k, v in result.items()})
            datamodule.test_set = None
        metrics["test/ckpt"] = best or "last weights"

    metrics.update({
        "epochs": trainer.current_epoch,
        "fit_seconds": round(fit_seconds, 1),
        "fit_seconds_total": round(fit_seconds_total, 1),
        "params": module.num_parameters(),
    })
    if trainer.is_global_zero:
        trackers.finish(trainer.loggers, cfg, metrics, output_dir)
    if trainer.is_global_zero:  # under DDP every process holds the same (reduced) figures
        write_json(output_dir / "metrics.json", metrics)
    return metrics


def _validation_setting(cfg: DictConfig, callbacks: list) -> dict:
    """Validation is off when val (PublicTest) is one of the training splits: its figures would
    measure faces the network trains on, a best-on-val checkpoint would be chosen on them, and at
    small training sizes it is a fifth of an epoch's time. The last epoch is then the model.
    An explicit trainer.limit_val_batches validates anyway."""
    if "val" not in cfg.data.get("train_splits", ()) or cfg.trainer.get("limit_val_batches") \
            is not None:
        return {}
    stopping = next((c for c in callbacks if isinstance(c, EarlyStopping)), None)
    if stopping is not None:
        raise ValueError(
            f"Early stopping watches {stopping.monitor}, but val (PublicTest) is in "
            "data.train_splits, so validation is off (its figures would measure training "
            "faces). Drop callbacks=early_stopping, or train on data.train_splits=[train].")
    log.info("Validation is off: val (PublicTest) is in data.train_splits, so its figures would "
             "measure training faces; the last epoch is the model and the test uses last.ckpt "
             "(trainer.limit_val_batches=1.0 validates anyway).")
    return {"limit_val_batches": 0}


def _wants_progress_bar(cfg: DictConfig) -> bool:
    """trainer.enable_progress_bar, or when it is null a bar only if stdout is a terminal: in a
    background run's log file the bar shows nothing (train.log has a line per epoch), yet its
    refresh thread took 2% of the CPU time of a real epoch on 2 cores."""
    wanted = cfg.trainer.get("enable_progress_bar")
    return sys.stdout.isatty() if wanted is None else bool(wanted)


def _check_precision(trainer: L.Trainer, cfg: DictConfig) -> None:
    """Refuse bf16 on a CPU that would run it in slow fallback code (a 30-minute recipe would take
    hours), unless allow_slow_bf16=true asks for it."""
    if (not isinstance(trainer.accelerator, CPUAccelerator)
            or not str(trainer.precision).startswith("bf16") or cfg.get("allow_slow_bf16")):
        return
    reason = slow_bf16_reason()
    if reason is not None:
        raise ValueError(
            f"trainer.precision={trainer.precision} on the CPU: {reason}. Use "
            "trainer.precision=32-true (the recipes' accuracy does not depend on it: "
            "experiments/bf16_on_cpu), or allow_slow_bf16=true to run bf16 anyway.")


def _build_network(cfg: DictConfig) -> torch.nn.Module:
    """The configured network; ``model.weights`` (a state dict a user downloaded) starts it
    from those weights. It is where the run starts, not part of the network: files written from
    the run describe the network without it."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    weights = model.pop("weights", None)
    if weights and cfg.get("init_from"):
        raise ValueError("Set model.weights (a state dict from elsewhere, e.g. ImageNet weights) "
                         "or init_from (a ferlab run or model file), not both: each gives the "
                         "run its starting weights.")
    network = instantiate(model)
    if weights and not cfg.get("resume"):  # a resumed run's weights come from its checkpoint
        from ferlab.models.weights import load_weights

        load_weights(network, weights)
    return network


def _init_weights(network: torch.nn.Module, source: str, model_cfg: DictConfig,
                  num_classes: int) -> None:
    """Start from another run's trained weights (a warm restart or fine-tune); the optimiser,
    schedule and epoch count start afresh. From a model of another class view (FER2013's seven
    to FER+'s eight, say) the features are kept and the classifier head starts afresh."""
    weights, source_model, _ = artifacts.read_network_weights(source)
    theirs = source_model.get("num_classes", num_classes)
    ours = network.state_dict()

    def refuse(reason: str) -> ValueError:
        return ValueError(
            f"init_from={source} holds weights for a different network than model="
            f"{model_cfg.get('_target_')} with this config; use the same model config as that "
            f"run.\n  its model: {source_model}\n  this run: "
            f"{OmegaConf.to_container(model_cfg, resolve=True)}\n  ({reason})")

    head = [k for k in ours if k in weights and weights[k].shape != ours[k].shape
            and theirs != num_classes and weights[k].shape[:1] == (theirs,)
            and ours[k].shape[:1] == (num_classes,) and weights[k].shape[1:] == ours[k].shape[1:]]
    kept = {k: v for k, v in weights.items() if k not in head}
    try:
        network.load_state_dict(kept, strict=not head)
    except RuntimeError as err:
        raise refuse(str(err)) from None
    if head:
        missing = sorted(set(ours) - set(kept) - set(head))
        unexpected = sorted(set(kept) - set(ours))
        if missing or unexpected:
            raise refuse(f"missing {missing}, unexpected {unexpected}")
        log.info("Network weights initialised from %s except the classifier head (%s), which "
                 "starts afresh: that model predicts %d classes (%s), this run %d (%s)", source,
                 ", ".join(head), theirs, ", ".join(class_names(theirs)), num_classes,
                 ", ".join(class_names(num_classes)))
        return
    log.info("Network weights initialised from %s", source)


def _load_teacher(source, num_classes: int) -> torch.nn.Module | None:
    """The trained network that module.teacher names, for knowledge distillation: one model, or
    an ensemble (a shipped ensemble's name or a list of models) averaged as one teacher."""
    if not source:
        return None
    if isinstance(source, ListConfig):
        source = list(source)
    members = artifacts.ensemble_members(source)
    networks = [_teacher_network(member, num_classes) for member in members]
    log.info("Distilling from %s", source)
    return networks[0] if len(networks) == 1 else AveragedTeacher(networks)


def _teacher_network(source, num_classes: int) -> torch.nn.Module:
    try:
        teacher = artifacts.load(source).network
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"module.teacher={source} cannot be read as a teacher network: "
                        f"{err}") from err
    if not isinstance(teacher, torch.nn.Module):
        raise ValueError(f"module.teacher={source} is an ONNX file, which ferlab runs for "
                         "inference only; distil from the .pt, .ckpt or run directory (or the "
                         "shipped model's name) it was exported from.")
    if getattr(teacher, "num_classes", num_classes) != num_classes:
        raise ValueError(f"module.teacher={source} predicts {teacher.num_classes} classes, this "
                         f"run {num_classes}; distil from a teacher of the same class view.")
    return teacher


def _time_is_up(timer: Timer | None) -> bool:
    """Whether the run's callbacks.timer.duration (counted over all sittings) is spent."""
    remaining = timer.time_remaining() if timer is not None else None
    return remaining is not None and remaining <= 0


def _read_resumed_checkpoint(ckpt_path: Path) -> dict:
    """The checkpoint a resume continues, read before anything is built: Lightning reloads
    only its state; its stored config must be plain data (no interpolation, bounded)."""
    checkpoint = read_torch_file(ckpt_path, "PyTorch checkpoint")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{ckpt_path} is not a training checkpoint (no state_dict); resume= "
                         "continues runs written by ferlab.train.")
    # its config is only compared with this run's (the run, network included, is built from the
    # command and the run's recorded overrides), but it is read as plain data all the same
    artifacts.check_plain(checkpoint.get(CONFIG_KEY), ckpt_path, CONFIG_KEY)
    return checkpoint


def _check_resume(ckpt_path: Path, checkpoint: dict, cfg: DictConfig,
                  timer: Timer | None) -> None:
    """Refuse a resume whose training-time budget is already spent (it would stop at once), and
    say which settings differ from the checkpoint's."""
    saved = checkpoint.get(CONFIG_KEY)
    timer_state = next((state for key, state in checkpoint.get("callbacks", {}).items()
                        if key.startswith("Timer")), None)
    if timer is not None and timer_state is not None:
        timer.load_state_dict(timer_state)
        if _time_is_up(timer):
            elapsed = timer.time_elapsed()
            raise ValueError(
                f"{ckpt_path} has trained {elapsed:.0f} s over its sittings, already past the "
                f"timer's duration ({elapsed + timer.time_remaining():.0f} s), so the resumed run "
                "would stop at once. Give a later callbacks.timer.duration (it counts all "
                "sittings, DD:HH:MM:SS) or callbacks.timer.duration=null.")
    _warn_config_changes(saved if isinstance(saved, dict) else None, cfg, ckpt_path)


def _check_resumed_network(ckpt_path: Path, checkpoint: dict, module: torch.nn.Module,
                           cfg: DictConfig) -> None:
    """Refuse a resume whose config builds another network than the checkpoint's, naming the
    settings that differ and the overrides of this command that changed them."""
    stored = checkpoint["state_dict"]
    built = module.state_dict()
    differ = sorted(k for k in set(stored) | set(built) if k.startswith("model.") and (
        k not in stored or k not in built or stored[k].shape != built[k].shape))
    if not differ:
        return
    saved = checkpoint.get(CONFIG_KEY)
    before = flatten(saved) if isinstance(saved, dict) else {}
    now = flatten(OmegaConf.to_container(cfg, resolve=True))
    settings = [k for k in sorted(set(before) | set(now)) if k.split(".")[0] in ("model", "data")
                and before.get(k) != now.get(k)]
    given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    culprits = [o for o in given if override_key(o) not in ("resume",) and any(
        s == override_key(o) or s.startswith(override_key(o).split("/")[0] + ".")
        for s in settings)]
    raise ValueError(
        f"resume={ckpt_path}: the checkpoint holds another network than this command builds "
        f"({len(differ)} weight(s) differ, e.g. {differ[0]}). The settings that differ: "
        + ("; ".join(f"{k}: {before.get(k)} -> {now.get(k)}" for k in settings) or "none recorded")
        + (f". Drop {' '.join(culprits)}: a resumed run keeps its own network."
           if culprits else "."))


def _warn_config_changes(saved: dict | None, cfg: DictConfig, ckpt_path: Path) -> None:
    """A resumed run should use the original config; say which settings differ."""
    if saved is None:
        return
    before, now = flatten(saved), flatten(OmegaConf.to_container(cfg, resolve=True))
    # where a run reads or writes, and init_from (a resume must drop it), are not the recipe
    changed = [f"{k}: {before.get(k)} -> {now.get(k)}" for k in sorted(set(before) | set(now))
               if before.get(k) != now.get(k)
               and k.split(".")[0] not in ("resume", "paths", "init_from")]
    if changed:
        log.warning("Resuming %s with a config that differs from the checkpoint's (schedules such "
                    "as one-cycle cannot be stretched):\n  %s", ckpt_path, "\n  ".join(changed))


# what a user's command or files can cause: a message and exit status 2, no traceback
# (HYDRA_FULL_ERROR=1 shows it)
USER_ERRORS = (ValueError, OSError, FloatingPointError, DataFormatError, DataNotFoundError,
               rundir.RunDirectoryInUse, MisconfigurationException)
