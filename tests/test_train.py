"""End-to-end tests of train(cfg), resume, evaluate and the command lines, on synthetic data."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning import Callback
from omegaconf import OmegaConf, open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ferlab import artifacts
from ferlab.checkpoint import RANDOM_STATE_KEY
from ferlab.config import CONFIG_DIR
from ferlab.data import EMOTIONS
from ferlab.train import train
from tests.conftest import short_cfg
from tests.models.test_models import MODEL_CONFIGS


@pytest.mark.parametrize("model", MODEL_CONFIGS)
def test_fast_dev_run_every_model(make_cfg, model):
    cfg = make_cfg([f"model={model}", "debug=fdr"])
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss_epoch"]))
    assert 0.0 <= metrics["val/acc"] <= 1.0
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert saved["params"] == metrics["params"] > 0


def test_six_class_training(make_cfg):
    cfg = make_cfg(["data=fer2013_6class", "model=baseline", "debug=fdr"])
    assert cfg.model.num_classes == 6 and cfg.module.num_classes == 6
    train(cfg)


def test_run_directory_holds_everything(make_cfg, tmp_path):
    out = tmp_path / "run"
    metrics = train(short_cfg(make_cfg, out))
    assert {"val/acc", "val/acc_best", "val/acc_top2", "val/acc_macro", "test/acc",
            "test/acc_top2", "test/acc_macro", "epochs", "fit_seconds"} <= set(metrics)
    assert metrics["epochs"] == 3
    assert metrics["val/acc_best"] >= metrics["val/acc"] - 1e-6
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and any(n.startswith("epoch") for n in ckpts)
    assert json.loads((out / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss_step", "train/loss_epoch", "train/acc", "val/loss", "val/acc",
            "val/acc_top2", "val/acc_macro", "val/acc_best", "test/acc", "train/lr",
            "val/recall/happy", "val/acc_uniform_prior", "val/acc_macro_uniform_prior",
            "test/acc_macro_uniform_prior", "val/recall_uniform_prior/disgust",
            "test/recall_uniform_prior/happy"} <= scalars
    images = set(events.Tags()["images"])
    assert {"val/confusion_matrix", "test/confusion_matrix"} <= images
    assert len(events.Images("val/confusion_matrix")) == 3  # one per validation epoch
    tensors = set(events.Tags()["tensors"])
    assert "config/text_summary" in tensors
    # HParams view: the session lists the config and the final metrics (hp/...)
    hparams = set(events.PluginTagToContent("hparams"))
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= hparams
    assert "hp/val_acc_best" in scalars and "hp/test_acc" in scalars


def test_learns_the_synthetic_task(make_cfg, tmp_path):
    # the synthetic classes are a bright bar at a class-specific height: easy to learn
    metrics = train(make_cfg(["model=baseline", "trainer.max_epochs=12", "data.batch_size=4",
                              "data.augment=null", "module/optimizer=adamw",
                              "module/scheduler=none", "module.label_smoothing=0"]))
    assert metrics["val/acc_best"] >= 0.6  # chance is 1/7


def test_same_seed_same_result_on_cpu(make_cfg, tmp_path):
    a = train(short_cfg(make_cfg, tmp_path / "a", ["trainer.max_epochs=2", "test=false"]))
    b = train(short_cfg(make_cfg, tmp_path / "b", ["trainer.max_epochs=2", "test=false"]))
    assert a["train/loss_epoch"] == b["train/loss_epoch"]
    wa = torch.load(tmp_path / "a/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("random_state", [True, False], ids=["random-state", "older-checkpoint"])
def test_resume_continues_from_last_checkpoint(make_cfg, tmp_path, caplog, random_state):
    out = tmp_path / "run"
    cfg = short_cfg(make_cfg, out, ["test=false"])
    with open_dict(cfg):
        cfg.callbacks.crash = {"_target_": "tests.conftest.CrashAfterFirstEpoch"}
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    first = torch.load(out / "checkpoints/last.ckpt", weights_only=True)
    assert first["epoch"] == 0
    if not random_state:  # as written before checkpoints held the random state
        del first[RANDOM_STATE_KEY]
    # the first sitting's training time is in the checkpoint; make it long, to see it carried
    timer_state = next(v for k, v in first["callbacks"].items() if k.startswith("Timer"))
    assert timer_state["time_elapsed"]["train"] > 0
    timer_state["time_elapsed"]["train"] = 1000.0
    torch.save(first, out / "checkpoints/last.ckpt")

    caplog.set_level(logging.INFO, logger="ferlab")
    metrics = train(short_cfg(make_cfg, out, ["test=false", f"resume={out}"]))
    last = torch.load(out / "checkpoints/last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and metrics["epochs"] == 3
    assert last["global_step"] == 3 * first["global_step"] == 3 * 7
    # the first sitting's 1000 s are carried (a fast machine may train the second sitting in
    # well under a second, so the rounded totals may read exactly 1000)
    assert 1000 <= metrics["fit_seconds_total"] <= 1000 + metrics["fit_seconds"] + 0.2
    # the last epoch's line counts both sittings (however slow the epochs on a loaded machine)
    logged = re.search(r"epoch 3/3 \d+s \(training (\d+)s in all\) train/loss_epoch=", caplog.text)
    assert logged and 1000 <= int(logged[1]) <= metrics["fit_seconds_total"] + 0.5
    # the one-cycle schedule carried on where it stopped and ran to its end
    uninterrupted = train(short_cfg(make_cfg, tmp_path / "straight", ["test=false"]))
    assert metrics["train/lr"] == pytest.approx(uninterrupted["train/lr"])
    # with the random state restored, the resumed run drew the shuffling and augmentation of the
    # run without the cut, and trained the same weights; without it, it drew them afresh
    straight = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)
    same = all(torch.equal(last["state_dict"][k], v) for k, v in straight["state_dict"].items())
    assert same is random_state
    assert ("holds no random state" in caplog.text) is not random_state
    if random_state:
        # the same run, so the same figures (timings apart), val/acc_best over both sittings
        def figures(m):
            return {k: v for k, v in m.items() if not k.startswith("fit_seconds")}
        assert figures(metrics) == pytest.approx(figures(uninterrupted))


class SlowEpochs(Callback):
    """Epochs of a known least length, for the Timer."""

    def on_train_epoch_start(self, trainer, pl_module):
        time.sleep(1.1)


def test_timer_duration_stops_at_an_epoch_end_and_resume_goes_on(make_cfg, tmp_path):
    out = tmp_path / "run"
    cfg = short_cfg(make_cfg, out, ["test=true", "callbacks.timer.duration='00:00:00:01'"])
    with open_dict(cfg):
        cfg.callbacks.slow = {"_target_": f"{__name__}.SlowEpochs"}
    first = train(cfg)
    assert first["epochs"] == 1  # stopped after the first epoch, with its checkpoint
    assert "test/acc" not in first  # an unfinished run is not tested
    assert torch.load(out / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 0
    with pytest.raises(ValueError, match=r"already past the timer's duration \(1 s\)"):
        train(short_cfg(make_cfg, out, ["test=false", f"resume={out}",
                                         "callbacks.timer.duration='00:00:00:01'"]))
    metrics = train(short_cfg(make_cfg, out, ["test=true", f"resume={out}"]))
    assert metrics["epochs"] == 3 and "test/acc" in metrics
    # both sittings, as in the last checkpoint's Timer state, although testing reloaded the best
    # checkpoint's (which already counts the first sitting's 1.1 s and more)
    last = torch.load(out / "checkpoints/last.ckpt", weights_only=True)
    in_last = next(v for k, v in last["callbacks"].items() if k.startswith("Timer"))
    assert in_last["time_elapsed"]["train"] > 1.1
    assert metrics["fit_seconds_total"] >= in_last["time_elapsed"]["train"] - 0.2
    assert metrics["fit_seconds_total"] >= metrics["fit_seconds"] + 1.1
    # an uninterrupted run: the total is its fit (the Timer alone counts less: no set-up)
    assert first["fit_seconds_total"] == first["fit_seconds"]


class RecordProgressBar(Callback):
    seen: list[str] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self.seen.append(type(trainer.progress_bar_callback).__name__)


@pytest.mark.parametrize(("setting", "terminal", "expected"), [
    ("null", False, "NoneType"), ("null", True, "TQDMProgressBar"),
    ("true", False, "TQDMProgressBar"), ("false", True, "NoneType")])
def test_progress_bar_only_where_someone_watches(make_cfg, tmp_path, monkeypatch, setting,
                                                  terminal, expected):
    """A run in the background (stdout a file) gets no bar, else the configured one."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    monkeypatch.setattr(RecordProgressBar, "seen", [])
    cfg = short_cfg(make_cfg, tmp_path / "run", ["trainer.max_epochs=1", "test=false",
                                                  f"trainer.enable_progress_bar={setting}"])
    with open_dict(cfg):
        cfg.callbacks.progress_bar = {"_target_": "lightning.pytorch.callbacks.TQDMProgressBar"}
        cfg.callbacks.probe = {"_target_": f"{__name__}.RecordProgressBar"}
    train(cfg)
    assert RecordProgressBar.seen == [expected]


def test_resume_warns_about_a_changed_config(make_cfg, tmp_path, caplog):
    out = tmp_path / "run"
    train(short_cfg(make_cfg, out, ["trainer.max_epochs=1", "test=false",
                                     "module/scheduler=none"]))
    train(short_cfg(make_cfg, out, ["trainer.max_epochs=2", "test=false", f"resume={out}",
                                     "module/scheduler=none"]))
    assert "trainer.max_epochs: 1 -> 2" in caplog.text


def test_val_in_training_turns_validation_off_and_tests_the_last_epoch(make_cfg, tmp_path,
                                                                         caplog):
    out = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="ferlab.training")
    metrics = train(short_cfg(make_cfg, out, ["data.train_splits=[train,val]"]))
    assert "Validation is off" in caplog.text
    assert not any(k.startswith("val/") for k in metrics) and "test/acc" in metrics
    assert metrics["test/ckpt"] == str(out / "checkpoints/last.ckpt")
    assert [p.name for p in (out / "checkpoints").glob("*.ckpt")] == ["last.ckpt"]
    # an explicit limit validates anyway
    metrics = train(short_cfg(make_cfg, tmp_path / "validated",
                               ["data.train_splits=[train,val]", "trainer.limit_val_batches=1.0"]))
    assert "val/acc" in metrics
    assert Path(metrics["test/ckpt"]).name.startswith("epoch")


def test_a_resumed_run_without_validation_tests_its_last_epoch_not_an_old_best(make_cfg,
                                                                                tmp_path):
    out = tmp_path / "run"
    trainval = ["data.train_splits=[train,val]", "module/scheduler=none", "test=false"]
    train(short_cfg(make_cfg, out, [*trainval, "trainer.limit_val_batches=1.0",
                                     "trainer.max_epochs=1"]))
    old_best = next((out / "checkpoints").glob("epoch*.ckpt"))
    metrics = train(short_cfg(make_cfg, out, [*trainval, "trainer.max_epochs=2", "test=true",
                                               f"resume={out}"]))
    assert metrics["epochs"] == 2 and old_best.is_file()  # kept, never deleted
    assert metrics["test/ckpt"] == str(out / "checkpoints/last.ckpt")


def test_early_stopping_with_val_in_training_is_refused(make_cfg, tmp_path):
    with pytest.raises(ValueError, match="Early stopping watches val/loss.*train_splits"):
        train(short_cfg(make_cfg, tmp_path / "run", ["data.train_splits=[train,val]",
                                                      "callbacks=early_stopping"]))


def test_resume_from_missing_checkpoint_is_explained(make_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        train(short_cfg(make_cfg, tmp_path / "run", [f"resume={tmp_path}"]))


class RecordStartWeights(Callback):
    """Keeps the network weights a run starts training from."""

    weights: dict = {}

    def on_train_start(self, trainer, pl_module):
        RecordStartWeights.weights = {k: v.clone() for k, v in pl_module.model.state_dict().items()}


@pytest.mark.parametrize("source", ["run_dir", "model_file"])
def test_init_from_starts_a_new_run_from_trained_weights(make_cfg, tmp_path, source):
    from ferlab.inference.model_file import export_model

    first = tmp_path / "first"
    train(short_cfg(make_cfg, first, ["trainer.max_epochs=1", "test=false"]))
    trained = torch.load(first / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    init = first if source == "run_dir" else export_model(first, tmp_path / "m.pt")
    second = tmp_path / "second"
    cfg = short_cfg(make_cfg, second, ["trainer.max_epochs=1", "test=false",
                                        f"init_from={init}"])
    with open_dict(cfg):
        cfg.callbacks.record = {"_target_": f"{__name__}.RecordStartWeights"}
    metrics = train(cfg)
    start = RecordStartWeights.weights
    assert all(torch.equal(start[k], trained[f"model.{k}"]) for k in start)
    # a new run: its own directory, epoch count and schedule
    assert metrics["epochs"] == 1 and (second / "checkpoints/last.ckpt").is_file()
    assert torch.load(second / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 0


def test_init_from_another_class_view_keeps_the_features(make_cfg, tmp_path, caplog):
    """FER2013's seven classes -> six: the features carry over, the head starts afresh."""
    first = tmp_path / "first"
    train(short_cfg(make_cfg, first, ["trainer.max_epochs=1", "test=false"]))
    trained = torch.load(first / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    cfg = short_cfg(make_cfg, tmp_path / "second", ["trainer.max_epochs=1", "test=false",
                                                    "data=fer2013_6class", f"init_from={first}"])
    with open_dict(cfg):
        cfg.callbacks.record = {"_target_": f"{__name__}.RecordStartWeights"}
    with caplog.at_level(logging.INFO, logger="ferlab.training"):
        train(cfg)
    start = RecordStartWeights.weights
    head = {k for k in start if start[k].shape != trained[f"model.{k}"].shape}
    assert head and all(start[k].shape[0] == 6 for k in head)
    assert all(torch.equal(start[k], trained[f"model.{k}"]) for k in set(start) - head)
    assert "except the classifier head" in caplog.text and "this run 6" in caplog.text


def test_init_from_another_network_is_explained(make_cfg, tmp_path):
    first = tmp_path / "first"
    train(short_cfg(make_cfg, first, ["trainer.max_epochs=1", "test=false"]))
    cfg = make_cfg(["model=vgg9", "debug=fdr", f"init_from={first}"])
    with pytest.raises(ValueError, match="different network"):
        train(cfg)


def test_init_from_and_resume_together_are_refused(make_cfg, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        train(short_cfg(make_cfg, tmp_path / "run", [f"resume={tmp_path}",
                                                      f"init_from={tmp_path}"]))


def test_bf16_on_a_cpu_without_bf16_kernels_is_refused_with_the_fix(make_cfg, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr("ferlab.training.slow_bf16_reason", lambda: "no bf16 kernels here")
    cfg = short_cfg(make_cfg, tmp_path / "run", ["trainer.precision=bf16-mixed"])
    with pytest.raises(ValueError, match="no bf16 kernels here.*trainer.precision=32-true"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training
    # asked for explicitly, or on a CPU with the kernels, it trains
    allowed = short_cfg(make_cfg, tmp_path / "allowed", ["trainer.precision=bf16-mixed",
                                                          "trainer.max_epochs=1",
                                                          "allow_slow_bf16=true", "test=false"])
    assert train(allowed)["epochs"] == 1
    monkeypatch.setattr("ferlab.training.slow_bf16_reason", lambda: None)
    native = short_cfg(make_cfg, tmp_path / "native", ["trainer.precision=bf16-mixed",
                                                        "trainer.max_epochs=1", "test=false"])
    assert train(native)["epochs"] == 1


def test_init_from_a_file_that_is_not_a_model(make_cfg, tmp_path):
    (tmp_path / "notes.ckpt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable PyTorch file"):
        train(short_cfg(make_cfg, tmp_path / "run", [f"init_from={tmp_path / 'notes.ckpt'}"]))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither a ferlab checkpoint nor a ferlab model file"):
        train(short_cfg(make_cfg, tmp_path / "run", [f"init_from={tmp_path / 'other.pt'}"]))


EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_config_trains_and_restores(make_cfg, tmp_path, experiment):
    out = tmp_path / "run"
    cfg = make_cfg([f"experiment={experiment}", "trainer.max_epochs=2", "data.batch_size=4",
                    "trainer.precision=32-true", "trainer.limit_train_batches=3",
                    "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"], output_dir=out)
    # a second-stage recipe starts from a model; a distillation recipe learns from one
    for key in ("init_from", "module.teacher"):
        if OmegaConf.is_missing(cfg, key):
            from ferlab.inference.model_file import save_model

            path = save_model(instantiate(cfg.model), OmegaConf.to_container(
                cfg.model, resolve=True), EMOTIONS, tmp_path / f"{key}.pt")
            OmegaConf.update(cfg, key, str(path), force_add=True)
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    best = metrics["test/ckpt"]
    loaded = artifacts.load(best)
    assert loaded.meta["recipe"]["name"] == cfg.name
    # the restored weights are the ones that were tested (EMA weights where EMA is on)
    ckpt = torch.load(best, weights_only=True)
    network = loaded.network.state_dict()
    assert all(torch.equal(v, network[k.removeprefix("model.")])
               for k, v in ckpt["state_dict"].items() if k.startswith("model."))
    # the run directory's last.ckpt
    recipe = {**loaded.meta["recipe"], "checkpoint": "last.ckpt"}
    assert artifacts.load(out).meta["recipe"] == recipe

