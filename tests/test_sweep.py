"""Sweeps on Hydra's engines: the dropout grid, Optuna searches (resumed, failing), the summary,
DDP on two CPU processes and submitit's local launcher. All on the tiny synthetic data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ferlab.summarize import main as summarize_main
from ferlab.sweep import check_search, job_dirs
from tests.conftest import run_cli

SHORT = ["trainer.max_epochs=1", "data.batch_size=8", "callbacks.progress_bar=null"]
GUIDE = (Path(__file__).parents[1] / "docs/search-and-scale.md").read_text()


def _as_written(command: str) -> list[str]:
    """The arguments of a ``python -m ferlab.train`` command that the guide shows."""
    assert command in GUIDE, command
    return command.split()[3:]


def _sweep_dir(tmp_path: Path) -> Path:
    sweeps = sorted((tmp_path / "runs/multirun").iterdir())
    assert len(sweeps) == 1, sweeps
    return sweeps[0]


def _hparams_metric(job: Path, tag: str) -> float:
    events = EventAccumulator(str(job / "tensorboard"))
    events.Reload()
    return events.Scalars(tag)[-1].value


def test_dropout_grid_as_the_readme_writes_it(tmp_path, csv_root):
    result = run_cli(_as_written(
        "python -m ferlab.train hparams_search=dropout_grid trainer.max_epochs=5"), tmp_path,
        csv_root)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 10 and set(summary["status"]) == {"completed"}
    assert sorted(zip(summary["model"], summary["model.dropout"])) == sorted(
        (m, d) for m in ("baseline", "vgg9") for d in (0.2, 0.3, 0.4, 0.5, 0.6))
    scores = summary["val/acc_best"].to_numpy()
    assert (np.diff(scores) <= 0).all()  # best first
    # the summary agrees with TensorBoard's HParams view of every job
    for _, row in summary.iterrows():
        job = sweep / row["job"]
        assert f"model={row['model']}" in row["job"]  # the folder says what the job varied
        assert _hparams_metric(job, "hp/val_acc_best") == pytest.approx(row["val/acc_best"],
                                                                        abs=1e-6)
        assert json.loads((job / "job.json").read_text())["status"] == "completed"
    text = (sweep / "summary.md").read_text()
    best = summary.iloc[0]
    assert f"model={best['model']}" in text.split("Rerun the best job:")[1]
    assert (sweep / "summary.png").stat().st_size > 1000


OPTUNA = _as_written("python -m ferlab.train -m hparams_search=optuna hydra.sweeper.n_trials=3 "
                     "model=baseline ++trainer.max_epochs=1 ++trainer.limit_train_batches=5 "
                     "++trainer.limit_val_batches=2 test=false")


def test_optuna_search_of_three_trials_as_the_readme_writes_it(tmp_path, csv_root):
    """Three TPE trials, each returning val/acc_best."""
    result = run_cli(OPTUNA, tmp_path, csv_root)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    assert len(job_dirs(sweep)) == 3
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    summary = pd.read_csv(sweep / "summary.csv")
    assert results["best_value"] == pytest.approx(summary["val/acc_best"].max())
    assert {"module.optimizer.lr", "model.dropout", "module.label_smoothing",
            "module.mixup_alpha", "module.optimizer.weight_decay"} <= set(summary.columns)
    for name in ("summary.png", "optuna_history.png"):
        assert (sweep / name).stat().st_size > 1000, name
    assert "python -m ferlab.train module.optimizer.lr=" in (sweep / "summary.md").read_text()


def test_a_killed_optuna_study_continues_from_its_storage(tmp_path, csv_root):
    import optuna

    storage = f"sqlite:///{tmp_path / 'studies/optuna.db'}"
    # val/loss (lower is better) differs between the trials on tiny data, where accuracy does
    # not; five epochs make a trial last long enough to be caught running
    args = [*OPTUNA, "hydra.sweeper.n_trials=4", f"storage={storage}", "++trainer.max_epochs=5",
            "optimized_metric=val/loss", "hydra.sweeper.direction=minimize"]
    env = {**os.environ, "FERLAB_DATA": str(csv_root), "FERLAB_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen([sys.executable, "-m", "ferlab.train", *args], cwd=tmp_path,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    # kill it while the third trial runs (its folder exists, its record does not)
    while time.monotonic() < deadline and process.poll() is None:
        third = list((tmp_path / "runs/multirun").glob("*/2/.hydra"))
        if third and not (third[0].parent / "job.json").exists():
            break
        time.sleep(0.02)
    assert process.poll() is None, "the search ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    study = optuna.load_study(study_name="ferlab", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "RUNNING"]

    result = run_cli(args, tmp_path, csv_root)  # the same command again
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="ferlab", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert "2 of n_trials=4 to go" in result.stdout + result.stderr
    # the second sitting's summary covers its own two trials; the plots read the whole study
    sweep = sorted((tmp_path / "runs/multirun").iterdir())[-1]
    summary = pd.read_csv(sweep / "summary.csv")
    assert (np.diff(summary["val/loss"]) >= 0).all()  # minimised: lowest first
    for name in ("optuna_history.png", "optuna_importances.png"):
        assert (sweep / name).stat().st_size > 1000, name
    rerun = (sweep / "summary.md").read_text().split("```bash\n")[1].split("\n")[0]
    assert "storage=" not in rerun and "hparams_search=" not in rerun and "model=baseline" in rerun


def test_failing_trials_are_recorded_and_the_search_goes_on(tmp_path, csv_root):
    """Trials that raise (an impossible label smoothing) or diverge (a NaN loss at lr=1e30) are
    failed in the study, their folders say why, and the search runs all its trials. (The
    sampler is seeded: the same six draws each time, covering every case.)"""
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = run_cli([*OPTUNA, "hydra.sweeper.n_trials=6", f"storage={storage}",
                      "hydra.sweeper.params={module.optimizer.lr: 'choice(0.01, 1e30)', "
                      "module.label_smoothing: 'choice(0.0, 1.5)'}"], tmp_path, csv_root)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="ferlab", storage=storage)
    summary = pd.read_csv(_sweep_dir(tmp_path) / "summary.csv")
    assert len(study.trials) == len(summary) == 6
    for trial, (_, row) in zip(study.trials, summary.sort_values("job").iterrows()):
        smoothing, lr = trial.params["module.label_smoothing"], trial.params["module.optimizer.lr"]
        assert (row["module.label_smoothing"], row["module.optimizer.lr"]) == (smoothing, lr)
        if smoothing > 1:
            expected = "label_smoothing must be in [0, 1)"
        elif lr > 1:
            expected = "Training diverged: "
        else:
            expected = None
        assert trial.state.name == ("FAIL" if expected else "COMPLETE"), trial.params
        assert row["status"] == ("failed" if expected else "completed")
        assert expected is None or expected in row["error"]
    assert {"label_smoothing" if t.params["module.label_smoothing"] > 1 else
            "lr" if t.params["module.optimizer.lr"] > 1 else "ok" for t in study.trials} == {
        "label_smoothing", "lr", "ok"}
    assert summary.iloc[0]["status"] == "completed"


@pytest.mark.parametrize("cfg, message", [
    ({"optimized_metric": "val/accuracy", "hydra": {"sweeper": {"params": {}}}},
     "optimized_metric=val/accuracy is not a figure"),
    ({"optimized_metric": "val/acc_best", "model": {"dropout": 0.5},
      "hydra": {"sweeper": {"params": {"model.droput": "0.1,0.2"}}}},
     "names model.droput, which is not a key"),
    ({"optimized_metric": "val/acc_best",
      "hydra": {"sweeper": {"params": {"model": "vgg9,vgg10"}}}},
     "over 'vgg10', which is not an option of model"),
])
def test_a_search_on_nothing_is_refused_before_the_first_trial(cfg, message):
    from omegaconf import OmegaConf

    with pytest.raises(ValueError, match=message):
        check_search(OmegaConf.create(cfg))


def test_a_mistyped_search_stops_before_any_job(tmp_path, csv_root):
    result = run_cli([*OPTUNA, "hydra.sweeper.n_trials=3", "optimized_metric=val/accuracy"],
                     tmp_path, csv_root)
    assert result.returncode != 0 and "optimized_metric=val/accuracy" in result.stderr
    assert not list(tmp_path.glob("runs/multirun/*/0*"))


def test_summarize_rebuilds_a_cut_off_sweep(tmp_path, csv_root):
    result = run_cli(["-m", "model=baseline", "model.dropout=0.3,0.5", *SHORT, "test=false"],
                     tmp_path, csv_root)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    # as if the sweep had been cut off during its second job
    second = job_dirs(sweep)[1]
    for name in ("metrics.json", "job.json", "summary.csv"):
        (second / name).unlink(missing_ok=True)
    (sweep / "summary.csv").unlink()
    assert summarize_main([str(sweep)]) == 0
    summary = pd.read_csv(sweep / "summary.csv")
    assert list(summary["status"]) == ["completed", "unfinished"]
    assert summarize_main([str(tmp_path / "nothing")]) == 2
    # a job's record that is not plain YAML (a tag) is one line, not a yaml traceback
    (second / ".hydra/overrides.yaml").write_text("- !!python/object/apply:os.system [x]\n")
    assert summarize_main([str(sweep)]) == 2


def test_ddp_on_two_cpu_processes(tmp_path, csv_root):
    """trainer=ddp with two gloo processes: one run directory, figures reduced over both."""
    from ferlab.data import load_faces
    from ferlab.inference.recognizer import EmotionRecognizer

    run = tmp_path / "ddp"
    result = run_cli(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                      "model=baseline", "trainer.max_epochs=1", "data.batch_size=4",
                      "module/scheduler=none",  # resumed below for a second epoch
                      "callbacks.progress_bar=null", "test=false", f"hydra.run.dir={run}"],
                     tmp_path, csv_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sync_dist" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["ddp"]
    metrics = json.loads((run / "metrics.json").read_text())
    val = load_faces(csv_root).select("val")
    probs = EmotionRecognizer(run, tta="none").predict_faces(val.faces)
    assert metrics["val/acc"] == pytest.approx(float(np.mean(probs.argmax(1) == val.labels)))
    log = (run / "train.log").read_text()
    assert log.count("epoch 1/1") == 1
    # resume= continues it, still in two processes and in the same directory
    result = run_cli([f"resume={run}", "trainer.max_epochs=2"], tmp_path, csv_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    assert "trainer.devices=2" in result.stdout + result.stderr + (run / "train.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["ddp"]


def test_submitit_local_multirun(tmp_path, csv_root):
    """submitit's local executor: each job a process of its own, as on a SLURM cluster."""
    result = run_cli(["-m", "hydra/launcher=submitit_local", "model=baseline",
                      "model.dropout=0.3,0.5", *SHORT, "test=false"], tmp_path, csv_root)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    assert (sweep / ".submitit").is_dir()
    summary = pd.read_csv(sweep / "summary.csv")
    assert sorted(summary["model.dropout"]) == [0.3, 0.5]
    assert set(summary["status"]) == {"completed"}


PRUNED = _as_written("python -m ferlab.train -m hparams_search=optuna_pruned "
                     "hydra.sweeper.n_trials=6 model=baseline ++trainer.max_epochs=3 "
                     "++trainer.limit_train_batches=5 ++trainer.limit_val_batches=2 test=false")


@pytest.mark.parametrize("storage", [None, "sqlite"])
def test_a_pruned_search_stops_poor_trials_and_says_so(tmp_path, csv_root, storage):
    """Median pruning each epoch: trials that cannot learn (lr 1e-9: their val/loss stays at the
    initial network's, every trial starting from the same seed) are stopped once trials that
    learn have finished; the study, job.json and the summary say pruned."""
    import optuna

    args = [*PRUNED, "hydra.sweeper.params={module.optimizer.lr: 'choice(0.01, 1e-9)', "
            "model.dropout: 0.0, module.label_smoothing: 0.0, module.mixup_alpha: 0.0, "
            "module.optimizer.weight_decay: 0.0}", "optimized_metric=val/loss",
            "hydra.sweeper.direction=minimize", "hydra.sweeper.pruner.n_startup_trials=1",
            "hydra.sweeper.pruner.n_warmup_steps=0", "data.batch_size=8"]
    if storage:
        db = f"sqlite:///{tmp_path / 'optuna.db'}"
        args.append(f"storage={db}")
    result = run_cli(args, tmp_path, csv_root)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    summary = pd.read_csv(sweep / "summary.csv")
    records = {job.name: json.loads((job / "job.json").read_text()) for job in job_dirs(sweep)}
    pruned = [name for name, r in records.items() if r["status"] == "pruned"]
    assert pruned, records
    for name in pruned:
        assert records[name]["epochs"] < 3 and "pruned after epoch" in records[name]["error"]
        assert not (sweep / name / "metrics.json").exists()
        assert float(summary.set_index("job").loc[int(name), "module.optimizer.lr"]) == 1e-9
    assert (summary[summary["status"] == "completed"]["module.optimizer.lr"] == 0.01).any()
    assert set(summary["status"]) <= {"completed", "pruned"}
    assert summary.iloc[0]["status"] == "completed"  # finished trials rank first
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["trials"]["pruned"] == len(pruned)
    assert results["trials"]["complete"] + len(pruned) == 6
    if storage:
        study = optuna.load_study(study_name="ferlab", storage=db)
        states = [t.state.name for t in study.trials]
        assert states.count("PRUNED") == len(pruned) and states.count("COMPLETE") == 6 - len(
            pruned)
