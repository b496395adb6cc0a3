"""The training losses the LightningModule holds, each a small module: the classification loss
(hard or soft targets, label smoothing, logit adjustment), batch mixing (mixup / cutmix, which
turns labels into soft targets) and knowledge distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2


class ClassificationLoss(nn.Module):
    """Cross-entropy against class indices (B,) or distributions (B, C), with label smoothing
    and Menon et al.'s logit adjustment (``tau * log prior`` added to the logits) in training;
    evaluation measures the plain cross-entropy. With ``label_set`` on, a training target (B, C)
    marks the accepted classes (> 0) and the loss is Barsoum et al.'s multi-label one:
    ``-log max_k p_k`` over the accepted classes k (the network is right when it names any),
    smoothed as cross-entropy is: ``(1 - e) * that + e * mean_j(-log p_j)``."""

    def __init__(self, num_classes: int, label_smoothing: float = 0.0,
                 logit_adjust_tau: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing}.")
        if not 0.0 <= logit_adjust_tau <= 2.0:
            raise ValueError(f"logit_adjust_tau must be in [0, 2] (1 is Menon et al.'s "
                             f"logit-adjusted loss, 0 plain cross-entropy); got "
                             f"{logit_adjust_tau}.")
        self.label_smoothing, self.logit_adjust_tau = label_smoothing, logit_adjust_tau
        self.label_set = False  # set from the data at setup (FER+'s multi-label learning)
        # (C,) the training faces' log class prior, set from the data at setup
        self.register_buffer("log_prior", torch.zeros(num_classes), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                training: bool = True) -> torch.Tensor:
        fitted = logits.float()
        if not training:
            return F.cross_entropy(fitted, target)
        if self.logit_adjust_tau:
            fitted = fitted + self.logit_adjust_tau * self.log_prior
        if self.label_set and target.ndim == 2:
            log_p = F.log_softmax(fitted, dim=1)
            best = log_p.masked_fill(target <= 0, float("-inf")).amax(dim=1)
            e = self.label_smoothing
            return -((1 - e) * best + e * log_p.mean(dim=1)).mean()
        return F.cross_entropy(fitted, target, label_smoothing=self.label_smoothing)


class BatchMixing(nn.Module):
    """Mixes a ``mix_prob`` fraction of training batches with a shuffled copy of themselves
    (torchvision's batch ``MixUp`` / ``CutMix``, one of the two at random when both are on);
    a mixed batch's targets are distributions (B, C)."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 mix_prob: float = 1.0) -> None:
        super().__init__()
        for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if alpha < 0:
                raise ValueError(f"{name} must be >= 0 (0 turns it off); got {alpha}.")
        if not 0.0 <= mix_prob <= 1.0:
            raise ValueError(f"mix_prob must be in [0, 1]; got {mix_prob}.")
        mixes = [v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha else []
        if cutmix_alpha:
            mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.mix = (mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)) if mixes else None
        self.mix_prob = mix_prob

    @property
    def active(self) -> bool:
        return self.mix is not None and self.mix_prob > 0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(faces, targets): mixed with soft targets, or as they came."""
        if self.active and torch.rand(()) < self.mix_prob:
            return self.mix(x, y)
        return x, y


class Distillation(nn.Module):
    """Hinton et al.'s knowledge distillation from a frozen teacher:
    ``(1 - w) * hard + w * T^2 * KL(teacher_T || student_T)``. The teacher is held in a tuple,
    outside the module's state, parameters and optimiser (checkpoints never carry it)."""

    def __init__(self, teacher: nn.Module, num_classes: int, weight: float = 0.5,
                 temperature: float = 4.0) -> None:
        super().__init__()
        self.check(weight, temperature)
        if getattr(teacher, "num_classes", num_classes) != num_classes:
            raise ValueError(f"The teacher predicts {teacher.num_classes} classes, this run "
                             f"{num_classes}; distil from a teacher of the same class view.")
        self.teacher: tuple[nn.Module, ...] = (
            teacher.eval().requires_grad_(False).to(memory_format=torch.channels_last),)
        self.weight, self.temperature = weight, temperature

    @staticmethod
    def check(weight: float, temperature: float) -> None:
        """Refuse settings no distillation can use (also when no teacher is set yet)."""
        if not 0.0 <= weight <= 1.0 or temperature <= 0:
            raise ValueError(f"distill_weight must be in [0, 1] and distill_temperature > 0; got "
                             f"{weight}, {temperature}.")

    def soft_loss(self, student_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The teacher's soft-target loss on the faces the student saw."""
        with torch.no_grad():
            teacher_logits = self.teacher[0](x.contiguous(memory_format=torch.channels_last))
        return distillation_loss(student_logits, teacher_logits, self.temperature)

    def combine(self, hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        return (1 - self.weight) * hard + self.weight * soft


class AveragedTeacher(nn.Module):
    """Several trained networks as one teacher, combined as an ensemble combines them: the log
    of their averaged probabilities, which the distillation loss takes as logits."""

    def __init__(self, networks: list[nn.Module]) -> None:
        super().__init__()
        classes = {getattr(n, "num_classes", None) for n in networks}
        if len(classes) != 1:
            raise ValueError(f"An ensemble teacher's networks must predict the same classes; "
                             f"got {sorted(map(str, classes))}.")
        self.networks = nn.ModuleList(networks)
        self.num_classes = classes.pop()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([F.softmax(n(x).float(), dim=1) for n in self.networks]).mean(0)
        return probs.clamp_min(1e-12).log()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: T^2 * KL(softmax(teacher / T) || softmax(student / T)),
    averaged over the batch (the T^2 keeps its gradients on the scale of the hard loss)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits.float() / t, dim=1),
                    F.log_softmax(teacher_logits.float() / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t
