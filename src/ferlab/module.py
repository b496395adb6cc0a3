"""The LightningModule: loss, optimiser and scheduler wiring, metrics and their logging."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric

from ferlab import priors, trackers
from ferlab.data.labels import EMOTIONS, FACE_SIZE, class_names
from ferlab.losses import BatchMixing, ClassificationLoss, Distillation
from ferlab.metrics import (
    classification_metrics,
    confusion_figure,
    confusion_matrix,
    per_class_recall,
    uniform_prior_metrics,
)

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
EVAL_STAGES = ("val", "test")


class EmotionModule(L.LightningModule):
    """Trains any classifier network on faces; logs ``stage/metric`` scalars and figures.

    ``optimizer`` and ``scheduler`` are factories (Hydra ``_partial_: true``): the optimizer is
    called with the parameters, the scheduler with the optimizer (and ``total_steps`` when it
    takes one and none is given, as OneCycleLR does).

    ``mixup_alpha`` / ``cutmix_alpha`` (0 = off) mix each training batch with a shuffled copy of
    itself (torchvision's batch ``MixUp`` / ``CutMix``; one of the two, at random, when both are
    on) in a ``mix_prob`` fraction of the batches; the loss then takes the mixed (soft) labels and
    the training accuracy counts the dominant label.

    ``teacher`` (a trained network; None = off) turns on knowledge distillation: on every
    training batch the frozen teacher sees the same (augmented, mixed) faces and the loss becomes
    ``(1 - w) * CE + w * T^2 * KL(teacher_T || student_T)`` with ``w = distill_weight`` and
    temperature ``T = distill_temperature``. The teacher is not part of the module's state, so
    checkpoints, EMA and the optimiser never see it. (The config names it by file:
    ``module.teacher=<model file, .ckpt or ensemble>``, which ``ferlab.train`` reads.)

    ``progressive_resize`` (None = off) is a list of ``[epoch, size]`` steps: from each epoch on,
    training faces (after augmentation) are resized to ``size`` x ``size``, e.g.
    ``[[0, 32], [20, 48]]`` trains the first 20 epochs on 32-pixel faces (less than half the
    compute of 48) and the rest at full size. Validation and test always see the faces as they
    are. The network must take every size (a global-pooling head does; a flatten head does not).
    Mixup / cutmix mix the faces at their own size, before the resize; a teacher sees them at
    that size too, as it learnt them.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int = len(EMOTIONS),
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        teacher: nn.Module | None = None,
        distill_weight: float = 0.5,
        distill_temperature: float = 4.0,
        progressive_resize: Sequence[Sequence[int]] | None = None,
        logit_adjust_tau: float = 0.0,
    ) -> None:
        super().__init__()
        # the losses: each a small module (ferlab.losses)
        self.criterion = ClassificationLoss(num_classes, label_smoothing, logit_adjust_tau)
        self.mixing = BatchMixing(num_classes, mixup_alpha, cutmix_alpha, mix_prob)
        Distillation.check(distill_weight, distill_temperature)
        self.distillation = (Distillation(teacher, num_classes, distill_weight,
                                          distill_temperature) if teacher is not None else None)
        # (C,) the log class prior the outputs carry (for the uniform-prior figures); set from
        # the data at setup
        self.register_buffer("log_output_prior", torch.zeros(num_classes), persistent=False)
        self.prior_record: dict | None = None
        self.resize_steps = _resize_steps(progressive_resize)
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step'; got "
                             f"{scheduler_interval!r}.")
        self.class_names = class_names(num_classes)
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.optimizer = optimizer or partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-4)
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self.channels_last = channels_last
        # a batch of one face as the data module gives it (uint8, preprocessed on the device):
        # the model summary shows each layer's FLOPs and sizes from it
        self.example_input_array = torch.zeros(1, FACE_SIZE, FACE_SIZE, dtype=torch.uint8)

        # ModuleDict keys may not shadow nn.Module attributes such as "train"
        self.metrics = nn.ModuleDict(
            {f"{s}_": classification_metrics(num_classes, s) for s in ("train", "val", "test")}
        )
        self.confusion = nn.ModuleDict(
            {f"{s}_": confusion_matrix(num_classes) for s in EVAL_STAGES}
        )
        self.recall = nn.ModuleDict({f"{s}_": per_class_recall(num_classes) for s in EVAL_STAGES})
        self.uniform = nn.ModuleDict(
            {f"{s}_": uniform_prior_metrics(num_classes, s) for s in EVAL_STAGES})
        self.recall_uniform = nn.ModuleDict(
            {f"{s}_": per_class_recall(num_classes) for s in EVAL_STAGES})
        # in the checkpoints, so that a resumed run's best counts every sitting, not the last
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, C) logits
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # --- steps -------------------------------------------------------------------------------
    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        target = y
        training = stage == "train"
        if training:
            x, target = self.mixing(x, y)
        faces = x  # at their own size: a teacher sees them as it learnt them
        if training and self.resize_steps:
            x = self._resize(x, self.train_size(self.current_epoch))
        if target.ndim == 2:  # soft targets (B, C): accuracy counts the dominant class
            y = target.argmax(dim=1)
        logits = self(x)
        loss = self.criterion(logits, target, training)
        if training and self.distillation is not None:
            soft = self.distillation.soft_loss(logits, faces)
            self.log("train/distill_loss", soft, on_step=False, on_epoch=True, batch_size=len(y),
                     sync_dist=True)
            loss = self.distillation.combine(loss, soft)
        metrics = self.metrics[f"{stage}_"]
        metrics.update(logits.detach(), y)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True,
                 prog_bar=stage != "test", batch_size=len(y), sync_dist=True)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val",
                      batch_size=len(y))
        if stage in EVAL_STAGES:
            preds = logits.argmax(dim=1)
            self.confusion[f"{stage}_"].update(preds, y)
            self.recall[f"{stage}_"].update(preds, y)
            moved = logits.detach().float() - self.log_output_prior  # uniform-prior scores
            uniform = self.uniform[f"{stage}_"]
            uniform.update(moved, y)
            self.log_dict(uniform, on_step=False, on_epoch=True, batch_size=len(y))
            self.recall_uniform[f"{stage}_"].update(moved.argmax(dim=1), y)
        return loss

    def train_size(self, epoch: int) -> int | None:
        """The side training faces are resized to in ``epoch`` (None: as they come)."""
        size = None
        for start, side in self.resize_steps:
            if epoch >= start:
                size = side
        return size

    @staticmethod
    def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
        if size is None or x.shape[-2:] == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=size < x.shape[-1])

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    # --- class priors --------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """The class prior of the training faces, from the data module: what the logit-adjusted
        loss adds, what the uniform-prior figures remove, and what checkpoints record."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if datamodule is None or not hasattr(datamodule, "class_counts"):
            return
        counts = datamodule.class_counts("fit")
        self.criterion.label_set = getattr(datamodule, "label_set", False)
        if self.criterion.label_set and self.mixing.active:
            raise ValueError("data.labels=multilabel trains on sets of accepted labels, which "
                             "mixup / cutmix would blur into distributions; set "
                             "module.mixup_alpha=0 module.cutmix_alpha=0, or use "
                             "data.labels=crossentropy (distributions mix).")
        train = priors.frequencies(counts, self.class_names)
        output = priors.output_prior(train, self.criterion.logit_adjust_tau,
                                     getattr(datamodule, "balanced_sampling", False))
        self.prior_record = {"train": train, "output": output, "faces": int(counts.sum()),
                             "splits": list(datamodule.train_splits)}
        self.criterion.log_prior.copy_(
            torch.tensor(list(train.values())).clamp_min(1e-12).log())
        self.log_output_prior.copy_(torch.tensor(list(output.values())).clamp_min(1e-12).log())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.prior_record is not None:
            checkpoint[priors.PRIOR_KEY] = self.prior_record

    # --- epoch ends ----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.distillation is not None:
            self.distillation.teacher[0].to(self.device)
        self._check_resize_sizes()

    def _check_resize_sizes(self) -> None:
        """Fail before the first step when the network cannot take a scheduled size."""
        if not self.resize_steps:
            return
        was_training = self.model.training
        self.model.eval()
        try:
            for size in sorted({side for _, side in self.resize_steps}):
                probe = torch.zeros(2, 1, size, size, device=self.device)
                try:
                    with torch.no_grad():
                        self(probe)
                except RuntimeError as err:
                    raise ValueError(
                        f"module.progressive_resize trains on {size}x{size} faces, but this "
                        f"network cannot take that size ({str(err).splitlines()[0]}). Use a "
                        "model with a global-pooling head (e.g. model=vgg8_gap_slim) or sizes "
                        "it accepts, or set module.progressive_resize=null."
                    ) from err
        finally:
            self.model.train(was_training)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("state_dict", {})
        missing = {f"val_acc_best.{k}": v for k, v in self.val_acc_best.state_dict().items()
                   if f"val_acc_best.{k}" not in state}
        if missing and self._trainer is not None and self._trainer.training:
            log.warning("The checkpoint holds no best validation accuracy (written before ferlab "
                        "stored it): val/acc_best counts this sitting's epochs only.")
        state.update(missing)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.confusion["val_"].reset()
            self.recall["val_"].reset()
            self.recall_uniform["val_"].reset()
            return
        self.val_acc_best(self.metrics["val_"]["val/acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)
        self._log_epoch_figures("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_figures("test")

    def _log_epoch_figures(self, stage: str) -> None:
        counts = self.confusion[f"{stage}_"].compute()
        recall = self.recall[f"{stage}_"].compute()
        self.confusion[f"{stage}_"].reset()
        self.recall[f"{stage}_"].reset()
        self.log_dict({f"{stage}/recall/{name}": r for name, r in zip(self.class_names, recall)},
                      sync_dist=True)
        uniform = self.recall_uniform[f"{stage}_"].compute()
        self.recall_uniform[f"{stage}_"].reset()
        self.log_dict({f"{stage}/recall_uniform_prior/{name}": r
                       for name, r in zip(self.class_names, uniform)}, sync_dist=True)
        if trackers.shows_figures(self.loggers):
            fig = confusion_figure(counts, self.class_names,
                                   title=f"{stage} epoch {self.current_epoch}")
            trackers.log_figure(self.loggers, f"{stage}/confusion_matrix", fig, self.global_step)

    # --- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer(params=self.parameters())
        if self.scheduler is None:
            return optimizer
        kwargs = {}
        func = getattr(self.scheduler, "func", self.scheduler)
        given = getattr(self.scheduler, "keywords", {})
        if "total_steps" in inspect.signature(func).parameters and "total_steps" not in given:
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        try:
            scheduler = self.scheduler(optimizer, **kwargs)
        except ZeroDivisionError as err:  # OneCycleLR's warm-up phase rounds to zero steps
            raise ValueError(
                f"The LR scheduler cannot be built for this run's length ({kwargs or given}): "
                "too few optimiser steps for its phases. Train for more steps or choose "
                "module/scheduler=none (or cosine)."
            ) from err
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "name": "train/lr",
                             "interval": self.scheduler_interval,
                             "monitor": self.scheduler_monitor},
        }


def _resize_steps(steps: Sequence[Sequence[int]] | None) -> list[tuple[int, int]]:
    """Validated ``[[epoch, size], ...]`` steps of progressive resizing, sorted by epoch."""
    if not steps:
        return []
    out = []
    for step in steps:
        pair = list(step) if isinstance(step, Iterable) and not isinstance(step, str) else []
        if (len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                      for v in pair) or pair[0] < 0 or pair[1] < 8):
            raise ValueError(
                f"progressive_resize takes [epoch, size] pairs of integers (epoch >= 0, size "
                f">= 8), e.g. [[0, 32], [20, 48]]; got {step!r} in {steps!r}.")
        out.append((pair[0], pair[1]))
    epochs = [epoch for epoch, _ in out]
    if len(set(epochs)) != len(epochs):
        raise ValueError(f"progressive_resize names an epoch twice: {epochs}.")
    return sorted(out)
