"""A run directory is one run's: the lock, checkpoints that survive a kill, and a resume that
fails leaving nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from ferlab.files import remove_stale_temps, temp_file
from tests.conftest import run_cli

QUICK = ["model=baseline", "callbacks.progress_bar=null", "data.batch_size=4", "test=false",
         "module/scheduler=none"]


def _start(args: list[str], tmp_path: Path, data: Path, **env) -> subprocess.Popen:
    env = {**os.environ, "FERLAB_DATA": str(data), "FERLAB_CACHE": str(tmp_path / "cache"),
           **env}
    return subprocess.Popen([sys.executable, "-m", "ferlab.train", *args], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _wait_for(condition, what: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.01)


def test_a_second_run_in_a_running_directory_is_refused(tmp_path, csv_root):
    run = tmp_path / "run"
    first = _start([*QUICK, "trainer.max_epochs=500", f"hydra.run.dir={run}"], tmp_path, csv_root)
    try:
        _wait_for((run / ".ferlab.lock.json").is_file, "lock", first)
        holder = json.loads((run / ".ferlab.lock.json").read_text())
        in_use = f"is in use by another run (pid {holder['pid']}"
        result = run_cli([f"resume={run}"], tmp_path, csv_root)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert in_use in result.stderr
        # a new run there: refused by the lock, or (once the first has written a checkpoint)
        # by the checkpoints it holds
        result = run_cli([*QUICK, "trainer.max_epochs=1", f"hydra.run.dir={run}"], tmp_path,
                         csv_root)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert in_use in result.stderr or "already holds a run" in result.stderr
        _wait_for((run / "checkpoints" / "last.ckpt").is_file, "checkpoint", first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # the killed run's lock went with its process: it resumes (for two more epochs, so that it
    # is then past max_epochs=1 below whenever it was killed)
    epoch = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["epoch"]
    result = run_cli([f"resume={run}", f"trainer.max_epochs={epoch + 3}"], tmp_path, csv_root)
    assert result.returncode == 0, result.stderr[-2000:]
    # asking for fewer epochs than it has: a message, not a traceback
    result = run_cli([f"resume={run}", "trainer.max_epochs=1"], tmp_path, csv_root)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "max_epochs=1" in result.stdout + result.stderr


def test_a_kill_during_a_checkpoint_write_leaves_a_whole_checkpoint(tmp_path, csv_root):
    """With $TMPDIR on another file system (tmpfs), a kill while last.ckpt is being written
    leaves the previous one whole; the killed writer's temporary file is removed when the run
    resumes, and nothing is left in $TMPDIR."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm (tmpfs) on this machine")
    run, shm = tmp_path / "run", Path(tempfile.mkdtemp(dir="/dev/shm"))
    process = _start(["model=vgg9", "callbacks.progress_bar=null", "data.batch_size=4",
                      "test=false", "module/scheduler=none", "trainer.max_epochs=500",
                      f"hydra.run.dir={run}"], tmp_path, csv_root, TMPDIR=str(shm))
    checkpoints = run / "checkpoints"
    try:
        _wait_for((checkpoints / "last.ckpt").is_file, "first checkpoint", process)
        # kill while a checkpoint is being written, if one can be caught within 20 writes
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(checkpoints.glob(".last.ckpt.*.tmp")):
            time.sleep(0.001)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    left = list(checkpoints.glob(".*.tmp"))
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)  # whole, not cut
    assert last["epoch"] >= 0 and _written_in(shm) == []
    result = run_cli([f"resume={run}", f"trainer.max_epochs={last['epoch'] + 2}"], tmp_path,
                     csv_root, env={"TMPDIR": str(shm)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == last["epoch"] + 1
    assert not any(p.exists() for p in left) and not list(checkpoints.glob(".*.tmp"))
    assert _written_in(shm) == []
    shutil.rmtree(shm)


def _written_in(tmpdir: Path) -> list[Path]:
    """Files in $TMPDIR, apart from torch's compiler cache (torchinductor_<user>/)."""
    return [p for p in tmpdir.rglob("*") if p.is_file()
            and not p.relative_to(tmpdir).parts[0].startswith("torchinductor")]


def test_only_temporary_files_of_dead_writers_are_removed(tmp_path):
    fd, live = temp_file(tmp_path / "cache.npz")  # this process: alive
    os.close(fd)
    dead = Path(live.replace(f"~{os.getpid()}~", "~999999999~"))
    Path(live).rename(dead)
    fd, live = temp_file(tmp_path / "cache.npz")
    os.close(fd)
    assert remove_stale_temps(tmp_path) == [dead]
    assert Path(live).exists() and not dead.exists()


def test_a_failed_resume_records_nothing_and_names_the_override(tmp_path, csv_root):
    run = tmp_path / "run"
    result = run_cli([*QUICK, "trainer.max_epochs=1", f"hydra.run.dir={run}"], tmp_path,
                     csv_root)
    assert result.returncode == 0, result.stderr[-2000:]
    records = sorted(p.name for p in run.glob(".hydra*"))
    result = run_cli([f"resume={run}", "model=vgg8_gap_tiny"], tmp_path, csv_root)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output[-2000:]
    assert "another network than this command builds" in output
    assert "Drop model=vgg8_gap_tiny" in output
    assert sorted(p.name for p in run.glob(".hydra*")) == records  # nothing recorded
    result = run_cli([f"resume={run}", "trainer.max_epochs=2"], tmp_path, csv_root)
    assert result.returncode == 0, result.stderr[-2000:]  # the plain resume is not poisoned
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


def test_the_lock_refuses_a_second_process_even_before_any_checkpoint(tmp_path):
    """Two runs started together both pass the no-checkpoint check: the lock tells them apart."""
    from ferlab import rundir

    code = ("import sys, time; from ferlab import rundir\n"
            "with rundir.hold(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(rundir.RunDirectoryInUse, match=f"pid {holder.pid} on "):
            with rundir.hold(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with rundir.hold(tmp_path), rundir.hold(tmp_path):  # free again; re-entrant in a process
        assert json.loads((tmp_path / ".ferlab.lock.json").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".ferlab.lock.json").exists()


def test_a_killed_and_resumed_run_reports_what_the_uninterrupted_one_does(tmp_path, csv_root):
    """kill -9 mid-run, resume=: metrics.json equals the uninterrupted run's (timings apart),
    val/acc_best included, which counts every sitting's epochs."""
    args = [*QUICK, "trainer.max_epochs=12", "data.batch_size=8"]
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    result = run_cli([*args, f"hydra.run.dir={straight}"], tmp_path, csv_root)
    assert result.returncode == 0, result.stderr[-2000:]
    process = _start([*args, f"hydra.run.dir={cut}"], tmp_path, csv_root)
    log = cut / "train.log"
    try:
        _wait_for(lambda: log.is_file() and "epoch 4/12" in log.read_text(), "epoch 4", process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (cut / "metrics.json").exists()  # it really was cut off
    result = run_cli([f"resume={cut}"], tmp_path, csv_root)
    assert result.returncode == 0, result.stderr[-2000:]

    def figures(run: Path) -> dict:
        metrics = json.loads((run / "metrics.json").read_text())
        return {k: v for k, v in metrics.items() if not k.startswith("fit_seconds")}

    assert figures(cut) == figures(straight)


def test_a_resumed_sittings_record_keeps_one_name():
    """Hydra resolves hydra.output_subdir whenever it is read: the name must not move with the
    clock, or a failed resume would remove another folder than the one it wrote."""
    from ferlab.config import config_subdir

    first = config_subdir("runs/x")
    time.sleep(1.1)
    assert config_subdir("runs/x") == first and first.startswith(".hydra-resumed-")
    assert config_subdir(None) == ".hydra"


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, capsys, monkeypatch):
    """A parent that is a file, or one the user may not write in (the default runs/ under a
    read-only folder used to end in three chained PermissionError tracebacks)."""
    import os

    from ferlab.rundir import check_output_folder

    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    for args in (["paths.runs=afile/runs"], ["hydra.run.dir=afile/run"],
                 ["-m", "hydra.sweep.dir=afile/sweep"]):
        with pytest.raises(SystemExit) as exited:
            check_output_folder(args)
        assert exited.value.code == 2
        assert f"{tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and Path(p) != tmp_path)
    with pytest.raises(SystemExit):
        check_output_folder([])  # runs/ in a folder this user may not write in
    assert f"this user may not write in {tmp_path}" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    check_output_folder(["hydra.run.dir=new/run"])  # a folder that can be made: no word
    assert capsys.readouterr().err == ""
