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
import yaml
from hydra.utils import instantiate
from lightning import Callback
from omegaconf import OmegaConf, open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ferlab import artifacts
from ferlab.checkpoint import RANDOM_STATE_KEY
from ferlab.config import with_run_overrides
from ferlab.data import EMOTIONS
from ferlab.evaluate import evaluate
from ferlab.train import train
from tests.conftest import run_cli as _cli
from tests.conftest import trained_module
from tests.models.test_models import MODEL_CONFIGS

ROOT = Path(__file__).resolve().parents[1]


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


def _short_cfg(make_cfg, out: Path, extra=()):
    return make_cfg(["model=baseline", "trainer.max_epochs=3", "data.batch_size=4",
                     "trainer.log_every_n_steps=1", *extra], output_dir=out)


def test_run_directory_holds_everything(make_cfg, tmp_path):
    out = tmp_path / "run"
    metrics = train(_short_cfg(make_cfg, out))
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
            "val/recall/happy"} <= scalars
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
    a = train(_short_cfg(make_cfg, tmp_path / "a", ["trainer.max_epochs=2", "test=false"]))
    b = train(_short_cfg(make_cfg, tmp_path / "b", ["trainer.max_epochs=2", "test=false"]))
    assert a["train/loss_epoch"] == b["train/loss_epoch"]
    wa = torch.load(tmp_path / "a/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


class CrashAfterFirstEpoch(Callback):
    """Stands in for a run killed after its first checkpoint."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("random_state", [True, False], ids=["random-state", "older-checkpoint"])
def test_resume_continues_from_last_checkpoint(make_cfg, tmp_path, caplog, random_state):
    out = tmp_path / "run"
    cfg = _short_cfg(make_cfg, out, ["test=false"])
    with open_dict(cfg):
        cfg.callbacks.crash = {"_target_": f"{__name__}.CrashAfterFirstEpoch"}
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
    metrics = train(_short_cfg(make_cfg, out, ["test=false", f"resume={out}"]))
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
    uninterrupted = train(_short_cfg(make_cfg, tmp_path / "straight", ["test=false"]))
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
    cfg = _short_cfg(make_cfg, out, ["test=true", "callbacks.timer.duration='00:00:00:01'"])
    with open_dict(cfg):
        cfg.callbacks.slow = {"_target_": f"{__name__}.SlowEpochs"}
    first = train(cfg)
    assert first["epochs"] == 1  # stopped after the first epoch, with its checkpoint
    assert "test/acc" not in first  # an unfinished run is not tested
    assert torch.load(out / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 0
    with pytest.raises(ValueError, match=r"already past the timer's duration \(1 s\)"):
        train(_short_cfg(make_cfg, out, ["test=false", f"resume={out}",
                                         "callbacks.timer.duration='00:00:00:01'"]))
    metrics = train(_short_cfg(make_cfg, out, ["test=true", f"resume={out}"]))
    assert metrics["epochs"] == 3 and "test/acc" in metrics
    # both sittings, as in the last checkpoint's Timer state, although testing reloaded the best
    # checkpoint's (which already counts the first sitting's 1.1 s and more)
    last = torch.load(out / "checkpoints/last.ckpt", weights_only=True)
    in_last = next(v for k, v in last["callbacks"].items() if k.startswith("Timer"))
    assert in_last["time_elapsed"]["train"] > 1.1
    assert metrics["fit_seconds_total"] == pytest.approx(in_last["time_elapsed"]["train"], abs=0.2)


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
    cfg = _short_cfg(make_cfg, tmp_path / "run", ["trainer.max_epochs=1", "test=false",
                                                  f"trainer.enable_progress_bar={setting}"])
    with open_dict(cfg):
        cfg.callbacks.progress_bar = {"_target_": "lightning.pytorch.callbacks.TQDMProgressBar"}
        cfg.callbacks.probe = {"_target_": f"{__name__}.RecordProgressBar"}
    train(cfg)
    assert RecordProgressBar.seen == [expected]


def test_resume_warns_about_a_changed_config(make_cfg, tmp_path, caplog):
    out = tmp_path / "run"
    train(_short_cfg(make_cfg, out, ["trainer.max_epochs=1", "test=false",
                                     "module/scheduler=none"]))
    train(_short_cfg(make_cfg, out, ["trainer.max_epochs=2", "test=false", f"resume={out}",
                                     "module/scheduler=none"]))
    assert "trainer.max_epochs: 1 -> 2" in caplog.text


def test_val_in_training_turns_validation_off_and_tests_the_last_epoch(make_cfg, tmp_path,
                                                                         caplog):
    out = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="ferlab.train")
    metrics = train(_short_cfg(make_cfg, out, ["data.train_splits=[train,val]"]))
    assert "Validation is off" in caplog.text
    assert not any(k.startswith("val/") for k in metrics) and "test/acc" in metrics
    assert metrics["test/ckpt"] == str(out / "checkpoints/last.ckpt")
    assert [p.name for p in (out / "checkpoints").glob("*.ckpt")] == ["last.ckpt"]
    # an explicit limit validates anyway
    metrics = train(_short_cfg(make_cfg, tmp_path / "validated",
                               ["data.train_splits=[train,val]", "trainer.limit_val_batches=1.0"]))
    assert "val/acc" in metrics
    assert Path(metrics["test/ckpt"]).name.startswith("epoch")


def test_a_resumed_run_without_validation_tests_its_last_epoch_not_an_old_best(make_cfg,
                                                                                tmp_path):
    out = tmp_path / "run"
    trainval = ["data.train_splits=[train,val]", "module/scheduler=none", "test=false"]
    train(_short_cfg(make_cfg, out, [*trainval, "trainer.limit_val_batches=1.0",
                                     "trainer.max_epochs=1"]))
    old_best = next((out / "checkpoints").glob("epoch*.ckpt"))
    metrics = train(_short_cfg(make_cfg, out, [*trainval, "trainer.max_epochs=2", "test=true",
                                               f"resume={out}"]))
    assert metrics["epochs"] == 2 and old_best.is_file()  # kept, never deleted
    assert metrics["test/ckpt"] == str(out / "checkpoints/last.ckpt")


def test_early_stopping_with_val_in_training_is_refused(make_cfg, tmp_path):
    with pytest.raises(ValueError, match="Early stopping watches val/loss.*train_splits"):
        train(_short_cfg(make_cfg, tmp_path / "run", ["data.train_splits=[train,val]",
                                                      "callbacks=early_stopping"]))


def test_resume_from_missing_checkpoint_is_explained(make_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        train(_short_cfg(make_cfg, tmp_path / "run", [f"resume={tmp_path}"]))


class RecordStartWeights(Callback):
    """Keeps the network weights a run starts training from."""

    weights: dict = {}

    def on_train_start(self, trainer, pl_module):
        RecordStartWeights.weights = {k: v.clone() for k, v in pl_module.model.state_dict().items()}


@pytest.mark.parametrize("source", ["run_dir", "model_file"])
def test_init_from_starts_a_new_run_from_trained_weights(make_cfg, tmp_path, source):
    from ferlab.inference.model_file import export_model

    first = tmp_path / "first"
    train(_short_cfg(make_cfg, first, ["trainer.max_epochs=1", "test=false"]))
    trained = torch.load(first / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    init = first if source == "run_dir" else export_model(first, tmp_path / "m.pt")
    second = tmp_path / "second"
    cfg = _short_cfg(make_cfg, second, ["trainer.max_epochs=1", "test=false",
                                        f"init_from={init}"])
    with open_dict(cfg):
        cfg.callbacks.record = {"_target_": f"{__name__}.RecordStartWeights"}
    metrics = train(cfg)
    start = RecordStartWeights.weights
    assert all(torch.equal(start[k], trained[f"model.{k}"]) for k in start)
    # a new run: its own directory, epoch count and schedule
    assert metrics["epochs"] == 1 and (second / "checkpoints/last.ckpt").is_file()
    assert torch.load(second / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 0


def test_init_from_another_network_is_explained(make_cfg, tmp_path):
    first = tmp_path / "first"
    train(_short_cfg(make_cfg, first, ["trainer.max_epochs=1", "test=false"]))
    cfg = make_cfg(["model=vgg9", "debug=fdr", f"init_from={first}"])
    with pytest.raises(ValueError, match="different network"):
        train(cfg)


def test_init_from_and_resume_together_are_refused(make_cfg, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        train(_short_cfg(make_cfg, tmp_path / "run", [f"resume={tmp_path}",
                                                      f"init_from={tmp_path}"]))


def test_bf16_on_a_cpu_without_bf16_kernels_is_refused_with_the_fix(make_cfg, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr("ferlab.train.slow_bf16_reason", lambda: "no bf16 kernels here")
    cfg = _short_cfg(make_cfg, tmp_path / "run", ["trainer.precision=bf16-mixed"])
    with pytest.raises(ValueError, match="no bf16 kernels here.*trainer.precision=32-true"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training
    # asked for explicitly, or on a CPU with the kernels, it trains
    allowed = _short_cfg(make_cfg, tmp_path / "allowed", ["trainer.precision=bf16-mixed",
                                                          "trainer.max_epochs=1",
                                                          "allow_slow_bf16=true", "test=false"])
    assert train(allowed)["epochs"] == 1
    monkeypatch.setattr("ferlab.train.slow_bf16_reason", lambda: None)
    native = _short_cfg(make_cfg, tmp_path / "native", ["trainer.precision=bf16-mixed",
                                                        "trainer.max_epochs=1", "test=false"])
    assert train(native)["epochs"] == 1


def test_init_from_a_file_that_is_not_a_model(make_cfg, tmp_path):
    (tmp_path / "notes.ckpt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable PyTorch file"):
        train(_short_cfg(make_cfg, tmp_path / "run", [f"init_from={tmp_path / 'notes.ckpt'}"]))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither a ferlab checkpoint nor a ferlab model file"):
        train(_short_cfg(make_cfg, tmp_path / "run", [f"init_from={tmp_path / 'other.pt'}"]))


def test_checkpoint_restores_model_and_config(make_cfg, tmp_path):
    out = tmp_path / "run"
    train(_short_cfg(make_cfg, out, ["trainer.max_epochs=1", "test=false"]))
    loaded = artifacts.load(out)
    assert loaded.meta["model"]["_target_"] == "ferlab.models.VGG" and not loaded.network.training
    assert loaded.file == out / "checkpoints/last.ckpt" and loaded.classes == EMOTIONS
    state = torch.load(out / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    network = loaded.network.state_dict()
    assert all(torch.equal(v, network[k.removeprefix("model.")]) for k, v in state.items()
               if k.startswith("model."))


def test_evaluate_writes_report(make_cfg, tmp_path, csv_root):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ferlab.config import CONFIG_DIR

    out = tmp_path / "run"
    train(_short_cfg(make_cfg, out, ["trainer.max_epochs=1", "test=false"]))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={out / 'checkpoints/last.ckpt'}",
                                         f"data_root={csv_root}", "device=cpu", "tta=flip",
                                         f"output_dir={tmp_path / 'eval'}"])
    report = evaluate(cfg)
    saved = json.loads((tmp_path / "eval/metrics.json").read_text())
    test = saved["datasets"]["test"]
    assert test["n"] == 14 and saved["datasets"]["val"]["n"] == 14
    assert test["acc"] == pytest.approx(report["datasets"]["test"]["acc"])
    assert sum(map(sum, test["confusion_matrix"])) == 14
    assert {"acc", "acc_macro", "acc_top2", "acc_top3", "nll", "ece", "per_class",
            "wrong_answer_rank", "six_class", "no_tta", "clean"} <= set(test)
    assert test["clean"]["removed"] == 0  # the synthetic faces are all different
    assert set(test["per_class"]["happy"]) == {"precision", "recall", "f1", "support"}
    for figure in ("confusion_counts", "confusion_normalised", "per_class", "reliability",
                   "wrong_answer_rank", "mistakes"):
        assert (tmp_path / f"eval/test_{figure}.png").stat().st_size > 1000
    text = (tmp_path / "eval/report.md").read_text()
    assert "| test | 14 |" in text and "![mistakes](test_mistakes.png)" in text


def test_evaluate_takes_a_shipped_model_by_name_and_asks_for_a_missing_one(tmp_path, csv_root):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ferlab.artifacts import shipped_model_path
    from ferlab.config import CONFIG_DIR

    def cfg(*overrides):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("eval", overrides=[f"data_root={csv_root}", "device=cpu",
                                              "splits=[test]", f"output_dir={tmp_path / 'ev'}",
                                              *overrides])

    with pytest.raises(ValueError, match="Say what to evaluate: ckpt_path=.*cpu-trained"):
        evaluate(cfg())
    report = evaluate(cfg("ckpt_path=cpu-trained"))
    assert report["model"]["source"] == "cpu-trained"
    assert report["model"]["file"] == str(shipped_model_path("cpu-trained"))
    assert report["datasets"]["test"]["n"] == 14


# --- the command lines, as a user types them ---------------------------------------------------

def test_cli_without_data_says_where_to_get_it(tmp_path):
    result = _cli([], tmp_path, data=tmp_path / "missing")
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "No FER2013 data" in output and "FERLAB_DATA" in output and "Traceback" not in output


def test_cli_multirun_sweep_as_the_readme_writes_it(tmp_path, csv_root):
    """The README's sweep, exactly as written (on the tiny synthetic data): the sweep directory
    is made before any job has chosen its model, and each job's folder says what it varied."""
    command = "python -m ferlab.train -m model=baseline,vgg9 model.dropout=0.3,0.5"
    assert command in (Path(__file__).parents[1] / "README.md").read_text()
    result = _cli(command.split()[3:], tmp_path, data=csv_root)
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "runs/multirun").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p.parent.name for p in sweeps[0].glob("*/metrics.json"))
    assert jobs == ["0_model.dropout=0.3,model=baseline", "1_model.dropout=0.5,model=baseline",
                    "2_model.dropout=0.3,model=vgg9", "3_model.dropout=0.5,model=vgg9"]
    for job in jobs:
        metrics = json.loads((sweeps[0] / job / "metrics.json").read_text())
        assert metrics["epochs"] == 30 and "test/acc" in metrics


def test_cli_run_dir_and_evaluate(tmp_path, csv_root):
    run = tmp_path / "myrun"
    result = _cli(["model=baseline", "trainer.max_epochs=1", "callbacks.progress_bar=null",
                   "trainer.accelerator=cpu", f"hydra.run.dir={run}", "data.batch_size=8"],
                  tmp_path, data=csv_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "metrics.json").is_file() and (run / ".hydra/config.yaml").is_file()
    assert (run / "checkpoints/last.ckpt").is_file()
    result = _cli([f"ckpt_path={run}", f"hydra.run.dir={tmp_path / 'ev'}"], tmp_path,
                  data=csv_root, module="ferlab.evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test: acc=" in result.stdout
    assert (tmp_path / "ev/metrics.json").is_file() and (tmp_path / "ev/report.md").is_file()


def test_cli_resume_keeps_original_record(tmp_path, csv_root):
    run = tmp_path / "runs/job"
    args = ["model=baseline", "callbacks.progress_bar=null", "data.batch_size=8", "test=false",
            "module/scheduler=none"]  # a one-cycle schedule cannot be stretched to 2 epochs
    assert _cli([*args, "trainer.max_epochs=1", f"hydra.run.dir={run}"], tmp_path,
                data=csv_root).returncode == 0
    original = (run / ".hydra/overrides.yaml").read_text()
    result = _cli([*args, "trainer.max_epochs=2", f"resume={run}"], tmp_path, data=csv_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / ".hydra/overrides.yaml").read_text() == original
    assert list(run.glob(".hydra-resumed-*/overrides.yaml"))
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2



def test_cli_resume_alone_continues_with_the_runs_own_overrides(tmp_path, csv_root):
    """resume=<run dir> is the one override a continuation needs: the run's recipe comes back
    from its records, and what this command gives wins."""
    run = tmp_path / "runs/job"
    args = ["model=baseline", "callbacks.progress_bar=null", "data.batch_size=8", "test=false",
            "module/scheduler=none", "trainer.max_epochs=1"]
    assert _cli([*args, f"hydra.run.dir={run}"], tmp_path, data=csv_root).returncode == 0
    result = _cli([f"resume={run}", "trainer.max_epochs=2"], tmp_path, data=csv_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    resumed = next(run.glob(".hydra-resumed-*/config.yaml"))
    assert OmegaConf.load(resumed).model == OmegaConf.load(run / ".hydra/config.yaml").model
    log = (run / "train.log").read_text()
    changed = log.split("differs from the checkpoint's", 1)[1].split("\n[")[0]
    assert "trainer.max_epochs: 1 -> 2" in changed
    assert "model." not in changed and "batch_size" not in changed


def test_cli_resume_of_a_path_without_a_run_writes_nothing(tmp_path):
    """A mistyped resume= must fail before Hydra makes a run directory there, and a folder that
    is not a run must not get one written into it."""
    typo, folder = tmp_path / "runs/jbo", tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    for path in (typo, folder):
        result = _cli([f"resume={path}"], tmp_path, data=tmp_path / "missing")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"error: resume={path}" in result.stderr and "run directory" in result.stderr
    assert not typo.exists() and [p.name for p in folder.iterdir()] == ["a.jpg"]


def test_a_new_run_never_writes_over_an_earlier_one(make_cfg, tmp_path, csv_root):
    run = tmp_path / "runs/job"
    args = ["model=baseline", "callbacks.progress_bar=null", "data.batch_size=8", "test=false",
            "trainer.max_epochs=1", f"hydra.run.dir={run}"]
    assert _cli(args, tmp_path, data=csv_root).returncode == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = _cli([*args, "seed=3"], tmp_path, data=csv_root)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "already holds a run" in result.stderr and f"resume={run}" in result.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # the Python API and sweep jobs (whose directories Hydra makes) are guarded too
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(make_cfg(["model=baseline"], output_dir=run))


def test_resume_brings_back_the_latest_record_of_each_override(tmp_path):
    run = tmp_path / "run"
    first, later = run / ".hydra", run / ".hydra-resumed-2026-01-02_00-00-00"
    for folder, overrides in ((first, ["experiment=budget30_slim", "seed=7", "init_from=a.pt",
                                       "callbacks.timer.duration='00:01:00:00'"]),
                              (later, [f"resume={run}", "callbacks.timer.duration='00:02:00:00'",
                                       "+extra=1"])):
        folder.mkdir(parents=True)
        (folder / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    restored = ["experiment=budget30_slim", "callbacks.timer.duration='00:02:00:00'", "+extra=1"]
    assert with_run_overrides([f"resume={run}", "seed=8"]) == [*restored, f"resume={run}",
                                                                "seed=8"]
    ckpt = run / "checkpoints/last.ckpt"
    assert with_run_overrides(["seed=8", f"resume={ckpt}"]) == ["seed=8", *restored,
                                                                 f"resume={ckpt}"]
    for unchanged in (["seed=8"], ["-m", f"resume={run}"], [f"resume={tmp_path / 'elsewhere'}"],
                      ["resume=null"]):
        assert with_run_overrides(unchanged) == unchanged


EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf/experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_config_trains_and_restores(make_cfg, tmp_path, experiment):
    out = tmp_path / "run"
    cfg = make_cfg([f"experiment={experiment}", "trainer.max_epochs=2", "data.batch_size=4",
                    "trainer.precision=32-true"], output_dir=out)
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


def test_loading_a_checkpoint_rejects_other_files(tmp_path):
    (tmp_path / "x.ckpt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        artifacts.load(tmp_path / "x.ckpt")
    torch.save({"state_dict": {}, "where": Path("elsewhere")}, tmp_path / "pickled.ckpt")
    with pytest.raises(ValueError, match="never unpickles") as refused:
        artifacts.load(tmp_path / "pickled.ckpt")
    assert "weights_only=False" not in str(refused.value)  # torch's advice, unsafe here
    torch.save({"state_dict": {}}, tmp_path / "y.ckpt")
    with pytest.raises(ValueError, match="not written by ferlab.train"):
        artifacts.load(tmp_path / "y.ckpt")
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        artifacts.load(tmp_path)


def test_evaluate_on_a_labelled_folder(make_cfg, tmp_path, faces):
    """Cross-dataset: <root>/<class>/<image> with other class names, an unknown class and
    crops of other sizes, through the same report."""
    import cv2
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ferlab.config import CONFIG_DIR
    from ferlab.data import EMOTIONS

    out = tmp_path / "run"
    train(_short_cfg(make_cfg, out, ["trainer.max_epochs=1", "test=false"]))
    pixels, labels, _ = faces
    names = {"angry": "anger", "happy": "happiness", "surprise": "surprised", "sad": "sadness"}
    root = tmp_path / "ck"
    for i, (face, label) in enumerate(zip(pixels, labels)):
        emotion = EMOTIONS[label]
        if emotion in names:
            folder = root / names[emotion]
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{i}.png"), cv2.resize(face, (96, 96)))
    (root / "contempt").mkdir()
    cv2.imwrite(str(root / "contempt" / "0.png"), pixels[0])
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={out}", f"folder={root}", "device=cpu",
                                         f"output_dir={tmp_path / 'eval'}"])
    report = evaluate(cfg)
    ck = report["datasets"]["ck"]
    assert ck["n"] == 4 * 8 and ck["excluded_classes"] == {"contempt": 1}
    assert {c for c, v in ck["per_class"].items() if v["support"]} == set(names)
    assert "Excluded class folders" in (tmp_path / "eval/report.md").read_text()
    assert (tmp_path / "eval/ck_confusion_normalised.png").is_file()


def test_ema_checkpoints_hold_the_averaged_weights_and_resume(make_cfg, tmp_path):
    out = tmp_path / "run"
    cfg = _short_cfg(make_cfg, out, ["callbacks=ema", "callbacks.ema.decay=0.9", "test=false"])
    with open_dict(cfg):
        cfg.callbacks.progress_bar = None
        cfg.callbacks.crash = {"_target_": f"{__name__}.CrashAfterFirstEpoch"}
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    first = torch.load(out / "checkpoints/last.ckpt", weights_only=True)
    averaged, trained = first["state_dict"], first["current_model_state"]
    assert averaged.keys() == trained.keys()
    assert not all(torch.equal(averaged[k], trained[k]) for k in averaged)
    # evaluate / export / init_from read the averaged network
    network = artifacts.load(out / "checkpoints/last.ckpt").network.state_dict()
    assert all(torch.equal(v, network[k.removeprefix("model.")]) for k, v in averaged.items()
               if k.startswith("model."))

    cfg = _short_cfg(make_cfg, out, ["callbacks=ema", "callbacks.ema.decay=0.9", "test=false",
                                     f"resume={out}"])
    with open_dict(cfg):
        cfg.callbacks.progress_bar = None
    metrics = train(cfg)
    last = torch.load(out / "checkpoints/last.ckpt", weights_only=True)
    assert metrics["epochs"] == 3 and last["global_step"] == 3 * first["global_step"]
    assert last["averaging_state"]["n_averaged"] == last["global_step"]


def test_ema_run_is_tested_on_the_averaged_weights(make_cfg, tmp_path):
    """The test after fit measures the best checkpoint's averaged network (what val chose,
    what evaluate and export read), not the trained weights stored beside it."""
    import lightning as L

    out = tmp_path / "run"
    metrics = train(_short_cfg(make_cfg, out, ["callbacks=ema", "callbacks.ema.decay=0.5"]))
    best = Path(metrics["test/ckpt"])
    module, cfg = trained_module(best)

    def test_loss(state_dict) -> float:
        module.load_state_dict(state_dict)
        tester = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                           enable_model_summary=False)
        return tester.test(module, datamodule=instantiate(cfg.data), verbose=False)[0]["test/loss"]

    saved = torch.load(best, weights_only=True)
    averaged, trained = test_loss(saved["state_dict"]), test_loss(saved["current_model_state"])
    assert averaged != pytest.approx(trained, rel=1e-4)  # the two networks are told apart
    assert metrics["test/loss"] == pytest.approx(averaged, rel=1e-4)


def test_ema_resumes_runs_checkpointed_with_lightnings_own_callback():
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from ferlab.callbacks import EMA

    assert EMA(decay=0.9).state_key == EMAWeightAveraging(decay=0.9).state_key


def test_mixup_and_cutmix_train(make_cfg, tmp_path):
    metrics = train(_short_cfg(make_cfg, tmp_path / "run", [
        "trainer.max_epochs=1", "test=false", "module.mixup_alpha=0.2",
        "module.cutmix_alpha=1.0", "module.mix_prob=0.5"]))
    assert torch.isfinite(torch.tensor(metrics["train/loss_epoch"]))


def test_distillation_trains_without_keeping_the_teacher(make_cfg, tmp_path, tiny_model_file):
    import shutil

    teacher = shutil.copy(tiny_model_file, tmp_path / "teacher.pt")
    out = tmp_path / "run"
    metrics = train(_short_cfg(make_cfg, out, [
        "trainer.max_epochs=1", "test=false", f"module.teacher={teacher}",
        "module.distill_weight=0.7", "module.distill_temperature=2"]))
    assert metrics["train/distill_loss"] > 0 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    saved = torch.load(out / "checkpoints/last.ckpt", weights_only=True)
    assert all(k.startswith(("model.", "val_acc_best.")) for k in saved["state_dict"]) and \
        not any("teacher" in k for k in saved["state_dict"])
    Path(teacher).unlink()  # the trained network restores without its teacher
    module, cfg = trained_module(out / "checkpoints/last.ckpt")
    assert cfg.module.teacher == str(teacher) and not module._teacher
    assert artifacts.load(out).classes == EMOTIONS


def test_distillation_from_a_bad_teacher_is_explained(make_cfg, tmp_path, tiny_model_file):
    with pytest.raises(FileNotFoundError, match="module.teacher=.*nope.pt"):
        train(_short_cfg(make_cfg, tmp_path / "a", [
            "trainer.max_epochs=1", "test=false", f"module.teacher={tmp_path / 'nope.pt'}"]))
    with pytest.raises(ValueError, match="predicts 7 classes, this run 6"):
        train(_short_cfg(make_cfg, tmp_path / "b", [
            "trainer.max_epochs=1", "test=false", "data=fer2013_6class",
            f"module.teacher={tiny_model_file}"]))


def test_no_validation_while_training_on_small_faces(make_cfg, tmp_path, caplog):
    """Progressive resizing validates only at its last size; the run trains the same weights."""
    caplog.set_level(logging.INFO, logger="ferlab.callbacks")
    resize = ["model=vgg9_gap", "test=false", "module.progressive_resize=[[0,24],[2,48]]"]
    train(_short_cfg(make_cfg, tmp_path / "run", resize))
    epochs = [line for line in caplog.messages if line.startswith("epoch ")]
    assert ["val/acc=" in line for line in epochs] == [False, False, True]
    names = sorted(p.name for p in (tmp_path / "run/checkpoints").glob("*.ckpt"))
    assert names[0].startswith("epoch002-") and names[1:] == ["last.ckpt"]
    train(_short_cfg(make_cfg, tmp_path / "always", [*resize,
                                                     "callbacks.validate_at_full_size=null"]))
    skipped, validated = (torch.load(tmp_path / run / "checkpoints/last.ckpt",
                                     weights_only=True)["state_dict"] for run in ("run", "always"))
    assert all(torch.equal(skipped[k], validated[k]) for k in skipped)
    # early stopping acts on every epoch's val figures, so it keeps them
    caplog.clear()
    train(_short_cfg(make_cfg, tmp_path / "stopping", [*resize, "callbacks=early_stopping"]))
    epochs = [line for line in caplog.messages if line.startswith("epoch ")]
    assert ["val/acc=" in line for line in epochs] == [True, True, True]


def test_progressive_resize_trains_and_refuses_a_flatten_head(make_cfg, tmp_path):
    metrics = train(_short_cfg(make_cfg, tmp_path / "run", [
        "model=vgg9_gap", "trainer.max_epochs=2", "test=false",
        "module.progressive_resize=[[0,24],[1,48]]"]))
    assert metrics["epochs"] == 2 and torch.isfinite(torch.tensor(metrics["train/loss_epoch"]))
    with pytest.raises(ValueError, match="cannot take that size"):
        train(_short_cfg(make_cfg, tmp_path / "b", [
            "model=vgg9", "trainer.max_epochs=1", "test=false",
            "module.progressive_resize=[[0,32]]"]))
