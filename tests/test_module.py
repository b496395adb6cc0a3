from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from ferlab import artifacts
from ferlab.data import EMOTIONS
from ferlab.data.transforms import tta_views
from ferlab.inference.recognizer import predict_probabilities
from ferlab.losses import distillation_loss
from ferlab.models import VGG
from ferlab.module import EmotionModule
from ferlab.train import train
from tests.conftest import short_cfg, trained_module


class _FakeTrainer:
    estimated_stepping_batches = 123


def _module(model=None, **kwargs):
    return EmotionModule(model or VGG(stages=[[4], [8]], hidden=[8]), **kwargs)


def test_default_optimizer_is_adamw():
    optimizer = _module().configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)


def test_onecycle_gets_total_steps_from_trainer(monkeypatch):
    module = _module(optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9),
                     scheduler=partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1),
                     scheduler_interval="step")
    monkeypatch.setattr(EmotionModule, "trainer", _FakeTrainer())
    config = module.configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert scheduler.total_steps == 123
    assert config["lr_scheduler"]["interval"] == "step"


def test_onecycle_on_a_too_short_run_is_explained(monkeypatch):
    module = _module(scheduler=partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1,
                                       pct_start=0.25))
    monkeypatch.setattr(_FakeTrainer, "estimated_stepping_batches", 4)
    monkeypatch.setattr(EmotionModule, "trainer", _FakeTrainer())
    with pytest.raises(ValueError, match="too few optimiser steps"):
        module.configure_optimizers()


def test_plateau_scheduler_is_monitored():
    module = _module(scheduler=partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=2),
                     scheduler_monitor="val/loss")
    config = module.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "val/loss"
    scheduler = config["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def test_label_smoothing_applies_to_training_loss_only():
    torch.manual_seed(0)
    module = _module(label_smoothing=0.2)
    module.log = module.log_dict = lambda *a, **k: None
    batch = (torch.randn(4, 1, 48, 48), torch.tensor([0, 1, 2, 3]))
    module.eval()
    train_loss = module._step(batch, "train")
    logits = module(batch[0])
    expected = torch.nn.functional.cross_entropy(logits, batch[1], label_smoothing=0.2)
    assert train_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    val_loss = module._step(batch, "val")
    assert val_loss.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, batch[1]).item(), rel=1e-5)


def test_channels_last_gives_same_outputs():
    torch.manual_seed(0)
    net = VGG(stages=[[4], [8]], hidden=[8]).eval()
    x = torch.randn(2, 1, 48, 48)
    reference = net(x)
    module = EmotionModule(net, channels_last=True).eval()
    assert torch.allclose(module(x), reference, atol=1e-5)


@pytest.mark.parametrize("tta", ["flip", "tencrop"])
@pytest.mark.parametrize("n", [3, 600])  # views in one batch, and (600 x views) in a loop
def test_tta_averages_the_views_however_they_are_batched(tta, n):
    torch.manual_seed(0)
    net = VGG(stages=[[4], [8]], hidden=[8]).eval()
    x = torch.randn(n, 1, 48, 48)
    with torch.no_grad():
        views = tta_views(x, tta)
        expected = torch.stack([torch.softmax(net(v), 1) for v in views]).mean(0)
        assert torch.allclose(predict_probabilities(net, x, tta), expected, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"scheduler_interval": "batch"}, "scheduler_interval"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"num_classes": 4}, "num_classes=4"),
    ({"mixup_alpha": -0.2}, "mixup_alpha must be >= 0"),
    ({"cutmix_alpha": -1}, "cutmix_alpha must be >= 0"),
    ({"mix_prob": 1.5}, "mix_prob must be in"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _module(**kwargs)


def test_is_a_lightning_module():
    assert isinstance(_module(), L.LightningModule)


class _Recorder:
    """Stands in for the network: remembers what it was fed."""

    def __init__(self, module):
        self.inputs, self.forward = [], module.forward
        module.forward = self

    def __call__(self, x):
        self.inputs.append(x.clone())
        return self.forward(x)


@pytest.mark.parametrize("kwargs", [{"mixup_alpha": 0.4}, {"cutmix_alpha": 1.0},
                                    {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}])
def test_mixing_trains_on_mixed_faces_with_soft_labels(kwargs):
    torch.manual_seed(0)
    module = _module(**kwargs)
    module.log = module.log_dict = lambda *a, **k: None
    recorder = _Recorder(module)
    x, y = torch.rand(8, 1, 48, 48), torch.arange(8) % 7
    loss = module.training_step((x, y), 0)
    mixed = recorder.inputs[0]
    assert mixed.shape == x.shape and not torch.equal(mixed, x)
    # the loss is the soft-label loss of what the network saw, not the hard-label one
    logits = module.model(mixed)
    hard = torch.nn.functional.cross_entropy(logits, y)
    assert not torch.isclose(loss, hard)
    # evaluation never mixes
    module.validation_step((x, y), 0)
    assert torch.equal(recorder.inputs[1], x)


def test_mix_prob_zero_or_no_alpha_leaves_batches_alone():
    for kwargs in ({"mixup_alpha": 0.4, "mix_prob": 0.0}, {}):
        module = _module(**kwargs)
        module.log = module.log_dict = lambda *a, **k: None
        recorder = _Recorder(module)
        x, y = torch.rand(4, 1, 48, 48), torch.tensor([0, 1, 2, 3])
        module.training_step((x, y), 0)
        assert not module.mixing.active and torch.equal(recorder.inputs[0], x)


def test_distillation_loss_known_answers():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    assert distillation_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.tensor([[0.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0, 2.0 * 3.0]])  # softmax(t / 2) = softmax([0, 0, 3])
    p = torch.softmax(torch.tensor([0.0, 0.0, 3.0]), 0)
    expected = 4.0 * float((p * (p.log() - torch.log(torch.tensor(1 / 3)))).sum())
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kwargs", [{"distill_weight": 1.5}, {"distill_temperature": 0.0}])
def test_bad_distillation_arguments(kwargs):
    with pytest.raises(ValueError, match="distill_weight must be in"):
        _module(**kwargs)


def test_teacher_is_frozen_and_outside_the_module_state():
    teacher = VGG(stages=[[4]], hidden=[8])
    module = _module(teacher=teacher)
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in module.parameters()}
    # the network, and the best validation accuracy so far (carried through resume=)
    assert set(module.state_dict()) == {f"model.{k}" for k in module.model.state_dict()} | {
        "val_acc_best.max_value"}
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    with pytest.raises(ValueError, match="teacher predicts 6 classes, this run 7"):
        _module(teacher=VGG(num_classes=6, stages=[[4]], hidden=[8]))


def test_progressive_resize_follows_its_schedule_in_training_only():
    module = _module(model=VGG(stages=[[4], [8]], hidden=[], head="gap"),
                     progressive_resize=[[3, 48], [0, 24], [1, 32]])
    assert module.resize_steps == [(0, 24), (1, 32), (3, 48)]
    assert [module.train_size(e) for e in range(5)] == [24, 32, 32, 48, 48]
    module.log = module.log_dict = lambda *a, **k: None
    recorder = _Recorder(module)
    x, y = torch.rand(4, 1, 48, 48), torch.tensor([0, 1, 2, 3])
    module.training_step((x, y), 0)  # current_epoch is 0 outside a trainer
    assert recorder.inputs[0].shape == (4, 1, 24, 24)
    # a uniform face stays uniform: the resize keeps the picture, not just the shape
    flat = torch.full((1, 1, 48, 48), 0.3)
    assert torch.allclose(module._resize(flat, 24), torch.full((1, 1, 24, 24), 0.3))
    module.validation_step((x, y), 0)
    assert recorder.inputs[1].shape == (4, 1, 48, 48)


def test_without_progressive_resize_faces_keep_their_size():
    module = _module()
    assert module.resize_steps == [] and module.train_size(10) is None


@pytest.mark.parametrize("steps", [[[0]], [[0, 4]], [[-1, 32]], [[0, 32.5]], [[0, 32], [0, 48]],
                                   [32]])
def test_bad_progressive_resize_is_explained(steps):
    with pytest.raises(ValueError, match="progressive_resize"):
        _module(progressive_resize=steps)


def test_progressive_resize_on_a_flatten_head_fails_before_training():
    module = _module(model=VGG(stages=[[4]], hidden=[8], head="flatten"),
                     progressive_resize=[[0, 32], [2, 48]])
    with pytest.raises(ValueError, match="cannot take that size .*global-pooling head"):
        module._check_resize_sizes()
    gap = _module(model=VGG(stages=[[4]], hidden=[8], head="gap"),
                  progressive_resize=[[0, 32], [2, 48]])
    gap._check_resize_sizes()
    assert gap.model.training


def test_mixup_and_cutmix_train(make_cfg, tmp_path):
    metrics = train(short_cfg(make_cfg, tmp_path / "run", [
        "trainer.max_epochs=1", "test=false", "module.mixup_alpha=0.2",
        "module.cutmix_alpha=1.0", "module.mix_prob=0.5"]))
    assert torch.isfinite(torch.tensor(metrics["train/loss_epoch"]))


def test_distillation_trains_without_keeping_the_teacher(make_cfg, tmp_path, tiny_model_file):
    import shutil

    teacher = shutil.copy(tiny_model_file, tmp_path / "teacher.pt")
    out = tmp_path / "run"
    metrics = train(short_cfg(make_cfg, out, [
        "trainer.max_epochs=1", "test=false", f"module.teacher={teacher}",
        "module.distill_weight=0.7", "module.distill_temperature=2"]))
    assert metrics["train/distill_loss"] > 0 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    saved = torch.load(out / "checkpoints/last.ckpt", weights_only=True)
    assert all(k.startswith(("model.", "val_acc_best.")) for k in saved["state_dict"]) and \
        not any("teacher" in k for k in saved["state_dict"])
    Path(teacher).unlink()  # the trained network restores without its teacher
    module, cfg = trained_module(out / "checkpoints/last.ckpt")
    assert cfg.module.teacher == str(teacher) and module.distillation is None
    assert artifacts.load(out).classes == EMOTIONS


def test_an_ensemble_teaches_with_its_averaged_probabilities(make_cfg, tmp_path, tiny_model_file):
    """module.teacher=[a, b] (or a shipped ensemble's name): one teacher whose logits are the
    log of the members' averaged probabilities, as the ensemble itself averages them."""
    import shutil

    from ferlab.losses import AveragedTeacher
    from ferlab.training import _load_teacher

    a, b = VGG(stages=[[4]], hidden=[8]).eval(), VGG(stages=[[4]], hidden=[8]).eval()
    x = torch.randn(3, 1, 48, 48)
    expected = (torch.softmax(a(x), 1) + torch.softmax(b(x), 1)) / 2
    assert torch.allclose(AveragedTeacher([a, b])(x).exp(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="same classes"):
        AveragedTeacher([a, VGG(num_classes=6, stages=[[4]], hidden=[8])])
    shipped = _load_teacher("ensemble", 7)
    assert isinstance(shipped, AveragedTeacher) and len(shipped.networks) == 2
    teachers = [shutil.copy(tiny_model_file, tmp_path / f"t{i}.pt") for i in range(2)]
    metrics = train(short_cfg(make_cfg, tmp_path / "run", [
        "trainer.max_epochs=1", "test=false", f"module.teacher=[{teachers[0]},{teachers[1]}]"]))
    assert metrics["train/distill_loss"] > 0


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a step without a Trainer
def test_with_progressive_resizing_the_teacher_sees_the_faces_at_their_own_size():
    """The student trains on 24 px faces; the teacher, which learnt 48 px faces, sees those."""
    seen = []

    class Teacher(VGG):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return super().forward(x)

    module = _module(VGG(stages=[[4], [8]], hidden=[8], head="gap"),
                     teacher=Teacher(stages=[[4]], hidden=[8]), progressive_resize=[[0, 24]],
                     mixup_alpha=0.2, mix_prob=1.0)
    x, y = torch.rand(4, 1, 48, 48), torch.tensor([0, 1, 2, 3])
    loss = module._step((x, y), "train")
    assert torch.isfinite(loss) and seen == [(48, 48)]


def test_distillation_from_a_bad_teacher_is_explained(make_cfg, tmp_path, tiny_model_file):
    with pytest.raises(FileNotFoundError, match="module.teacher=.*nope.pt"):
        train(short_cfg(make_cfg, tmp_path / "a", [
            "trainer.max_epochs=1", "test=false", f"module.teacher={tmp_path / 'nope.pt'}"]))
    with pytest.raises(ValueError, match="predicts 7 classes, this run 6"):
        train(short_cfg(make_cfg, tmp_path / "b", [
            "trainer.max_epochs=1", "test=false", "data=fer2013_6class",
            f"module.teacher={tiny_model_file}"]))


def test_progressive_resize_trains_and_refuses_a_flatten_head(make_cfg, tmp_path):
    metrics = train(short_cfg(make_cfg, tmp_path / "run", [
        "model=vgg9_gap", "trainer.max_epochs=2", "test=false",
        "module.progressive_resize=[[0,24],[1,48]]"]))
    assert metrics["epochs"] == 2 and torch.isfinite(torch.tensor(metrics["train/loss_epoch"]))
    with pytest.raises(ValueError, match="cannot take that size"):
        train(short_cfg(make_cfg, tmp_path / "b", [
            "model=vgg9", "trainer.max_epochs=1", "test=false",
            "module.progressive_resize=[[0,32]]"]))

