"""The command lines as a user types them: python -m ferlab.train / evaluate in subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ferlab.train import train
from tests.conftest import run_cli as _cli


def test_cli_without_data_says_where_to_get_it(tmp_path):
    result = _cli([], tmp_path, data=tmp_path / "missing")
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "No FER2013 data" in output and "FERLAB_DATA" in output and "Traceback" not in output
    assert not (tmp_path / "runs").exists()  # refused: nothing written, not even the folders


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


def _snapshot(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every file's size and time, every folder by name (its time moves when a lock's holder
    note comes and goes)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            if p.is_file() else None for p in sorted(folder.rglob("*"))}


def test_refused_commands_write_nothing(make_cfg, tmp_path, csv_root):
    """A failed resume adds no log lines, events or records to its run; a resume= of a .ckpt
    outside a run's checkpoints/ writes nowhere (it used to take the file's grandparent as the
    run); a refused evaluate leaves no folder."""
    run = tmp_path / "runs/job"
    train(make_cfg(["model=baseline", "trainer.max_epochs=1", "test=false"], output_dir=run))
    before = _snapshot(tmp_path)
    result = _cli([f"resume={run}", "model=vgg9", "trainer.max_epochs=2"], tmp_path,
                  data=csv_root)
    assert result.returncode == 2 and "another network" in result.stderr + result.stdout
    assert _snapshot(tmp_path) == before
    downloads = tmp_path / "home/Downloads"
    downloads.mkdir(parents=True)
    (downloads / "model.ckpt").write_bytes((run / "checkpoints/last.ckpt").read_bytes())
    before = _snapshot(tmp_path)
    result = _cli([f"resume={downloads / 'model.ckpt'}"], tmp_path, data=csv_root)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "outside a run's checkpoints/ folder" in result.stderr and "init_from=" in result.stderr
    assert _snapshot(tmp_path) == before
    result = _cli(["ckpt_path=missing.pt"], tmp_path, data=csv_root, module="ferlab.evaluate")
    assert result.returncode == 2 and "No model file" in result.stdout + result.stderr
    assert _snapshot(tmp_path) == before


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



def test_help_imports_no_training_stack():
    """`train --help` took 10 s and `predict --help` 7 s: torch and Lightning (and torchvision)
    were imported before the arguments were read. The command modules import them only to run."""
    import subprocess
    import sys

    code = ("import sys, ferlab.train\n"
            "heavy = sorted(m for m in ('torch', 'lightning', 'ferlab.training') "
            "if m in sys.modules)\n"
            "import ferlab.predict\n"
            "assert 'torchvision' not in sys.modules\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
