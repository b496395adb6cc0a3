"""Callbacks that ferlab adds to Lightning's own (configured in conf/callbacks/)."""

from __future__ import annotations

import logging
import time

import lightning as L
from lightning.pytorch.callbacks import Timer

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
        metrics = trainer.callback_metrics
        values = " ".join(f"{k}={float(metrics[k]):.4f}" for k in self.keys if k in metrics)
        timer = find_timer(trainer.callbacks)
        total = f" (training {timer.time_elapsed('train'):.0f}s in all)" if timer else ""
        log.info("epoch %d/%d %.0fs%s %s", trainer.current_epoch + 1, trainer.max_epochs,
                 time.perf_counter() - self._start, total, values)
