"""Experiment trackers: logger=csv|mlflow|wandb, several at once, sweeps grouped, resume into the
same tracker run; the training guide's tracker commands as written (MLflow's UI on loopback)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import open_dict

from ferlab.train import train
from tests.conftest import doc_commands, run_cli, short_cfg

pytest.importorskip("mlflow")


def _mlflow(runs: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")


def test_several_trackers_at_once_log_the_run(make_cfg, tmp_path):
    runs = tmp_path / "runs"
    out = tmp_path / "run"
    metrics = train(short_cfg(make_cfg, out, ["logger=[tensorboard,csv,mlflow]",
                                              f"paths.runs={runs}"]))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    table = pd.read_csv(out / "csv/metrics.csv")
    assert table["val/acc"].notna().sum() == 3 and table["test/acc"].notna().sum() == 1
    client = _mlflow(runs)
    [run] = client.search_runs([client.get_experiment_by_name("baseline").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["model.stages"] == "[[32], [64], [128]]"
    assert run.data.params["trainer.max_epochs"] == "3"
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert len(history) == 3 and history[-1].value == pytest.approx(metrics["val/acc"])
    assert run.data.metrics["hp/test_acc"] == pytest.approx(metrics["test/acc"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "checkpoints", "val", "test"} <= artifacts
    saved = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert saved == {p.name for p in (out / "checkpoints").glob("*.ckpt")} and "last.ckpt" in saved
    figures = client.list_artifacts(run.info.run_id, "val/confusion_matrix")
    assert len(figures) == 3 and all(f.path.endswith(".png") for f in figures)
    assert json.loads((out / "trackers.json").read_text()) == {"mlflow": run.info.run_id}


def test_a_resumed_run_logs_into_the_same_mlflow_run(make_cfg, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "run"
    cfg = short_cfg(make_cfg, out, ["logger=mlflow", f"paths.runs={runs}", "test=false"])
    with open_dict(cfg):
        cfg.callbacks.crash = {"_target_": "tests.conftest.CrashAfterFirstEpoch"}
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg)
    first = json.loads((out / "trackers.json").read_text())["mlflow"]
    train(short_cfg(make_cfg, out, ["logger=mlflow", f"paths.runs={runs}", "test=false",
                                    f"resume={out}"]))
    client = _mlflow(runs)
    [run] = client.search_runs([client.get_experiment_by_name("baseline").experiment_id])
    assert run.info.run_id == first and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(first, "val/acc")] == [0, 1, 2] or len(
        client.get_metric_history(first, "val/acc")) == 3
    # a run folder's record is data: a crafted one is refused before anything is logged
    (out / "trackers.json").write_text(json.dumps({"mlflow": "../../etc"}))
    with pytest.raises(ValueError, match=r"trackers.json is not a record ferlab wrote"):
        train(short_cfg(make_cfg, out, ["logger=mlflow", f"paths.runs={runs}", "test=false",
                                        "trainer.max_epochs=4", f"resume={out}"]))


def test_wandb_runs_offline_into_the_run_folder(make_cfg, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    train(short_cfg(make_cfg, out, ["logger=wandb", "trainer.max_epochs=1", "test=false"]))
    [offline] = (out / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb"))
    record = json.loads((out / "trackers.json").read_text())
    assert offline.name.endswith(record["wandb"])


def test_a_sweep_logs_each_job_as_a_run_of_one_experiment(tmp_path, csv_root):
    result = run_cli(["-m", "model=baseline", "model.dropout=0.3,0.5", "logger=mlflow",
                      "trainer.max_epochs=1", "data.batch_size=8", "test=false",
                      "callbacks.progress_bar=null"], tmp_path, csv_root)
    assert result.returncode == 0, result.stderr[-3000:]
    [sweep] = (tmp_path / "runs/multirun").iterdir()
    client = _mlflow(tmp_path / "runs")
    experiment = client.get_experiment_by_name(f"sweep {sweep.name}")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(p.name for p in sweep.iterdir()
                                                           if p.is_dir())
    assert {r.data.params["model.dropout"] for r in runs} == {"0.3", "0.5"}


def test_the_guides_tracker_commands_as_written(tmp_path, csv_root):
    """Train with TensorBoard and MLflow at once, then `mlflow ui` on the store: its REST API
    (what the page shows) lists the finished run with its metrics."""
    train_command, ui_command = doc_commands("docs/training.md", "Experiment trackers")
    result = run_cli(shlex.split(train_command)[3:], tmp_path, csv_root)
    assert result.returncode == 0, result.stderr[-3000:]
    [run_dir] = (tmp_path / "runs/baseline").iterdir()
    assert list((run_dir / "tensorboard").glob("events.*"))
    ui = subprocess.Popen(shlex.split(ui_command), cwd=tmp_path, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True,
                          # the environment's scripts on the PATH, as an activated venv has them
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}"
                                                     f"{os.pathsep}{os.environ['PATH']}"})
    try:
        deadline, body = time.monotonic() + 90, None
        while time.monotonic() < deadline and body is None:
            try:
                request = urllib.request.Request(
                    "http://127.0.0.1:5000/api/2.0/mlflow/runs/search", method="POST",
                    data=json.dumps({"experiment_ids": ["1"]}).encode(),
                    headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    body = json.loads(response.read())
            except OSError:
                assert ui.poll() is None, "mlflow ui exited"
                time.sleep(0.5)
        assert body is not None, "mlflow ui did not answer within 90 s"
        [run] = body["runs"]
        assert run["info"]["run_name"] == run_dir.name and run["info"]["status"] == "FINISHED"
        assert {m["key"] for m in run["data"]["metrics"]} >= {"val/acc", "hp/test_acc"}
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
