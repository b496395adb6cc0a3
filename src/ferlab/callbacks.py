"""Callbacks that ferlab adds to Lightning's own (configured in conf/callbacks/)."""

from __future__ import annotations

import logging
import time

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, Timer
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)


def find_timer(callbacks: list) -> Timer | None:
    """The run's Timer callback (its training time is carried through resume=), if it has one."""
    return next((c for c in callbacks if isinstance(c, Timer)), None)


class EpochSummary(L.Callback):
    """One log line per epoch (to train.log), readable in a background run's log file."""

    def __init__(self, keys: tuple[str, ...] = ("train/loss_epoch", "train/acc", "val/loss",
                                                 "val/acc", "val/acc_top2", "val/acc_best")):
        self.keys = tuple(keys)
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:  # under DDP, one line per epoch, not one per process
            return
        metrics = trainer.callback_metrics
        values = " ".join(f"{k}={float(metrics[k]):.4f}" for k in self.keys if k in metrics)
        timer = find_timer(trainer.callbacks)
        total = f" (training {timer.time_elapsed('train'):.0f}s in all)" if timer else ""
        log.info("epoch %d/%d %.0fs%s %s", trainer.current_epoch + 1, trainer.max_epochs,
                 time.perf_counter() - self._start, total, values)


class ValidateAtFullSize(L.Callback):
    """No validation in the epochs where ``module.progressive_resize`` trains on faces smaller
    than its last size: a network trained on 24x24 faces scores 0.25-0.35 on full-size ones, so
    those figures pick no checkpoint, yet validating took a fifth of such an epoch on 2 CPU cores.

    Training is unchanged (the same weights come out: evaluation loaders draw nothing from the
    global random stream). A run that acts on val figures every epoch keeps validation in every
    epoch: a scheduler that steps on a val metric (module/scheduler=plateau) or early stopping.
    """

    def __init__(self) -> None:
        self._limit = None  # the run's trainer.limit_val_batches, restored at full size

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        steps = getattr(pl_module, "resize_steps", None)
        if (not steps or any(c.reduce_on_plateau for c in trainer.lr_scheduler_configs)
                or any(isinstance(c, EarlyStopping) for c in trainer.callbacks)):
            return
        if self._limit is None:
            self._limit = trainer.limit_val_batches
            log.info("Validation waits for the last progressive_resize size (%d px, epoch %d)",
                     steps[-1][1], steps[-1][0] + 1)
        small = pl_module.train_size(trainer.current_epoch) < steps[-1][1]  # steps sorted by epoch
        trainer.limit_val_batches = 0 if small else self._limit


class EMA(EMAWeightAveraging):
    """Lightning's EMA of the weights, whose test after fit measures the averaged network.

    A checkpoint holds the averaged weights in ``state_dict`` (what evaluate, export and
    init_from read) and the trained ones in ``current_model_state``. Lightning's callback loads
    the trained ones whenever it holds an average, so ``trainer.test(ckpt_path=best)`` after
    fit measured the raw network of the best epoch, not the averaged one that val chose and
    that ships. Outside fitting this keeps the averaged ``state_dict`` the trainer loaded.
    """

    @property
    def state_key(self) -> str:
        """Lightning's own key, so runs checkpointed with its callback resume with this one."""
        return EMAWeightAveraging.__qualname__

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # resume: both networks go on training
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


class OptunaPruning(L.Callback):
    """Reports ``monitor`` to an Optuna trial after every validation and stops the run when the
    study's pruner says so, raising ``optuna.TrialPruned`` (the sweeper records the trial as
    pruned and the sweep goes on). ``ferlab.train`` adds it to the jobs of a pruned search."""

    def __init__(self, trial, monitor: str = "val/acc_best") -> None:
        self.trial, self.monitor = trial, monitor
        self._said = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._said:
                log.warning("Pruning reads %s, which validation does not log: this trial "
                            "cannot be pruned (prune on val/acc_best or val/loss).", self.monitor)
                self._said = True
            return
        import optuna

        epoch, value = trainer.current_epoch, float(value)
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            pruned = optuna.TrialPruned(f"pruned after epoch {epoch + 1}: {self.monitor}="
                                        f"{value:.4f}, worse than the study's pruner allows "
                                        "at that epoch")
            pruned.value, pruned.epochs = value, epoch + 1
            raise pruned
