"""The README's commands and example, exactly as written (on the tiny synthetic data)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import doc_commands, run_cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_readme_shows_only_commands_that_tests_run():
    """Each README command has its test here (make test is what CI itself runs)."""
    assert doc_commands() == [
        "export FERLAB_DATA=/path/to/fer2013", "make train", "make test",
        "python -m ferlab.train trainer.max_epochs=1 trainer.limit_train_batches=20",
        "python -m ferlab.train -m model=baseline,vgg9 model.dropout=0.3,0.5",  # tests/test_cli.py
    ]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.skipif(not (ROOT / ".venv/.ferlab-installed").is_file(),
                    reason="make train runs in .venv, which make install creates")
def test_make_train_as_written(tmp_path, csv_root):
    """`make train` trains vgg9 for 30 epochs and prints each epoch's line on stdout (not only
    in train.log), however stdout is read."""
    env = {**os.environ, "FERLAB_DATA": str(csv_root), "FERLAB_CACHE": str(tmp_path / "cache"),
           "RUNS": str(tmp_path / "runs")}
    result = subprocess.run(["make", "train"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [run] = (tmp_path / "runs/vgg9").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 30 and "test/acc" in metrics
    lines = re.findall(r"epoch (\d+)/30 .*val/acc=", result.stdout)
    assert lines == [str(n) for n in range(1, 31)]


def test_quick_try_as_written(tmp_path, csv_root):
    command = doc_commands()[3]
    result = run_cli(command.split()[3:], tmp_path, data=csv_root)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = (tmp_path / "runs/vgg9").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and "test/acc" in metrics
    assert "epoch 1/1" in result.stdout + result.stderr


def test_the_one_line_example_as_written(tmp_path, portrait, monkeypatch):
    code = README.split("```python\n", 1)[1].split("```", 1)[0]
    Image.fromarray(portrait).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    [face] = scope["faces"]
    assert set(face) >= {"box", "label", "score", "probabilities"}
    assert face["label"] in face["probabilities"]
